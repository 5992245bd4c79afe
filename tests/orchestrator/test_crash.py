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


def latest(journal: Path) -> tuple[int, str] | None:
    if not journal.exists():
        return None
    try:
        with sqlite3.connect(journal) as db:
            row = db.execute("SELECT step, phase FROM steps ORDER BY id DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else (int(row[0]), str(row[1]))


def test_sigkill_inside_every_step_then_resume(tmp_path: Path) -> None:
    """Kill the daemon as soon as the journal shows each step's intent (inside the step), and right
    after each OTP intent (between the intent and the write's result); resume every time."""
    workdir = tmp_path / "line"
    bodies = _prepare(workdir, 20_000)
    os.environ["BOARDSIM_PROBES"] = str((workdir / "probes").resolve())
    processes = _start(workdir, 1, 1, 115_200, None)
    journal = workdir / "journal.db"
    # Up to step 12: a kill inside step 13 after the board booted, once the operator has taken the
    # board away, leaves an intent nothing can settle by reading the board (see docs/orchestrator.md).
    targets = [(n, "intent") for n in range(1, 13)]
    targets[3:3] = [(3, "otp-intent")]
    targets[9:9] = [(8, "otp-intent")]
    hit: list[tuple[int, str]] = []
    try:
        url, job_id = anyio.run(_create_job, workdir / "cloud", bodies, 1)
        simulated = json.loads((workdir / "boards" / "serve.json").read_text())
        (workdir / "stations.yaml").write_text(
            _stations_yaml(workdir, url, job_id, simulated, uart_timeout=0.5)
        )
        log = workdir / "logs" / "orchestrator.jsonl"
        command = [
            venv_tool("orchestrator"),
            "run",
            "--config",
            str(workdir / "stations.yaml"),
            "--journal",
            str(journal),
        ]
        deadline = time.monotonic() + 400
        for target in targets:
            daemon = subprocess.Popen(
                [*command, "--log-file", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            while latest(journal) != target and finished(journal) < 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            daemon.send_signal(signal.SIGKILL)
            daemon.wait()
            if latest(journal) == target:
                hit.append(target)
            if finished(journal):
                break
        daemon = subprocess.Popen(
            [*command, "--log-file", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while finished(journal) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    assert len(hit) >= 9, hit  # the kill landed right after most intents (fast cloud steps may finish first)
    assert (3, "otp-intent") in hit
    assert (8, "otp-intent") in hit
    with sqlite3.connect(journal) as db:
        assert [row[0] for row in db.execute("SELECT outcome FROM boards")] == ["PASS"]
    (state_file,) = (workdir / "boards").glob("53494D*/state.json")
    state = json.loads(state_file.read_text())
    assert state["booted"] == "application"
    assert state["otp_program_counts"][:24] == [1] * 24
    assert not any(state["otp_program_counts"][24:])
