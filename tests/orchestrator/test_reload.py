"""SIGHUP reloads stations.yaml while boards run: added stations start, removed ones stop at a safe
point, untouched ones go on; an invalid edit is refused with file, line and field."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import anyio
import yaml

from orchestrator.demo import _create_job, _prepare, _start, _stations_yaml
from tests.conftest import venv_tool


def passed(journal: Path, station: str) -> int:
    if not journal.exists():
        return 0
    with sqlite3.connect(journal) as db:
        query = "SELECT COUNT(*) FROM boards WHERE outcome = 'PASS' AND station = ?"
        return int(db.execute(query, (station,)).fetchone()[0])


def wait(condition: object, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_sighup_adds_and_removes_stations_and_refuses_a_bad_file(tmp_path: Path) -> None:
    workdir = tmp_path / "line"
    bodies = _prepare(workdir, 4000)
    os.environ["BOARDSIM_PROBES"] = str((workdir / "probes").resolve())
    processes = _start(workdir, 3, 4, 921_600, None)
    journal, log = workdir / "journal.db", workdir / "logs" / "orchestrator.jsonl"
    config = workdir / "stations.yaml"
    try:
        url, job_id = anyio.run(_create_job, workdir / "cloud", bodies, 12)
        simulated = json.loads((workdir / "boards" / "serve.json").read_text())
        full = yaml.safe_load(_stations_yaml(workdir, url, job_id, simulated, uart_timeout=0.5))
        by_name = {s["name"]: s for s in full["stations"]}

        def write(names: list[str]) -> None:
            config.write_text(
                yaml.safe_dump({**full, "stations": [by_name[n] for n in names]}, sort_keys=False)
            )

        write(["station-01", "station-02"])
        command = [venv_tool("orchestrator"), "run", "--config", str(config), "--journal", str(journal)]
        daemon = subprocess.Popen(
            [*command, "--log-file", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait(lambda: passed(journal, "station-01") >= 1 and passed(journal, "station-02") >= 1)
        write(["station-01", "station-03"])
        daemon.send_signal(signal.SIGHUP)
        reloaded = time.time()
        wait(lambda: passed(journal, "station-03") >= 1)
        good = config.read_text()
        config.write_text(good.replace(by_name["station-03"]["uart"], by_name["station-01"]["uart"]))
        daemon.send_signal(signal.SIGHUP)
        before = passed(journal, "station-01")
        wait(lambda: passed(journal, "station-01") > before)  # still running on the old configuration
        config.write_text(good)  # back to valid: the file watch reloads it, nothing changes
        readded = time.time()
        write(["station-01", "station-02", "station-03"])  # no signal: the change itself reloads
        wait(lambda: passed(journal, "station-02") >= 2)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    starts = [e["station"] for e in events if e["event"] == "station.start"]
    stops = [e["station"] for e in events if e["event"] == "station.stop"]
    assert starts == ["station-01", "station-02", "station-03", "station-02"]  # station-01 never restarted
    assert "station-02" in stops
    assert "station-01" not in stops[: stops.index("station-02") + 1]
    invalid = [e for e in events if e["event"] == "config.invalid"]
    assert invalid  # by the signal, and again by the file watch
    assert str(config) in invalid[0]["error"]
    assert "stations.1.uart" in invalid[0]["error"]
    with sqlite3.connect(journal) as db:
        late = db.execute(
            "SELECT COUNT(*) FROM boards WHERE station = 'station-02' AND started > ? AND started < ?",
            (reloaded + 1, readded),
        )
        assert late.fetchone()[0] == 0  # the removed station took no new board
