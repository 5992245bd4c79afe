"""Crash and resume: SIGKILL the daemon again and again while boards are in flight, restart it on
the same journal; every board still ends PASS, no OTP word is programmed twice, and the cloud made
each key once."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import anyio

from orchestrator.demo import _create_job, _prepare, _start, _stations_yaml
from tests.conftest import venv_tool

STATIONS, BOARDS = 2, 2


def finished(journal: Path) -> int:
    if not journal.exists():
        return 0
    with sqlite3.connect(journal) as db:
        return int(
            db.execute(
                "SELECT COUNT(*) FROM boards WHERE outcome IN ('PASS','FAIL','QUARANTINE')"
            ).fetchone()[0]
        )


def test_sigkill_at_many_points_then_resume(tmp_path: Path) -> None:
    workdir = tmp_path / "line"
    bodies = _prepare(workdir, 12_000)
    os.environ["BOARDSIM_PROBES"] = str((workdir / "probes").resolve())
    processes = _start(workdir, STATIONS, BOARDS, 460_800, None)
    journal = workdir / "journal.db"
    rng = random.Random(7)
    kills = 0
    try:
        url, job_id = anyio.run(_create_job, workdir / "cloud", bodies, STATIONS * BOARDS)
        simulated = json.loads((workdir / "boards" / "serve.json").read_text())
        (workdir / "stations.yaml").write_text(
            _stations_yaml(workdir, url, job_id, simulated, uart_timeout=0.5)
        )
        log = workdir / "logs" / "orchestrator.jsonl"
        config = workdir / "stations.yaml"
        command = [
            venv_tool("orchestrator"),
            "run",
            "--config",
            str(config),
            "--journal",
            str(journal),
            "--log-file",
            str(log),
        ]
        deadline = time.monotonic() + 300
        while finished(journal) < STATIONS * BOARDS:
            assert time.monotonic() < deadline, "the line did not finish after restarts"
            daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if kills < 12:
                time.sleep(rng.uniform(1.0, 3.5))  # lands inside steps and between them
                daemon.send_signal(signal.SIGKILL)
                daemon.wait()
                kills += 1
                continue
            while finished(journal) < STATIONS * BOARDS and time.monotonic() < deadline:
                time.sleep(0.5)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    assert kills >= 1
    with sqlite3.connect(journal) as db:
        outcomes = [row[0] for row in db.execute("SELECT outcome FROM boards")]
        intents = db.execute("SELECT COUNT(*) FROM steps WHERE phase = 'intent'").fetchone()[0]
        results = db.execute("SELECT COUNT(*) FROM steps WHERE phase = 'result'").fetchone()[0]
    assert outcomes == ["PASS"] * (STATIONS * BOARDS)
    assert intents > results  # some kills landed inside a step, between its intent and its result
    for state_file in (workdir / "boards").glob("53494D*/state.json"):
        state = json.loads(state_file.read_text())
        assert state["booted"] == "application"
        assert state["otp_program_counts"][:24] == [1] * 24, state["uid"]
        assert not any(state["otp_program_counts"][24:])
    audit = subprocess.run([venv_tool("cloudserver"), "audit", "--data", str(workdir / "cloud"), "--json"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    made = [json.loads(line) for line in audit.stdout.splitlines() if '"key_create"' in line]
    assert len(made) == 2 * STATIONS * BOARDS  # one bootloader and one application key per board, never more
