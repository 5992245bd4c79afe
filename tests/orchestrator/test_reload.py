"""SIGHUP reloads stations.yaml while boards run: added stations start, removed ones stop at a safe
point, untouched ones go on; an invalid edit is refused with file, line and field."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import yaml

from tests.orchestrator.harness import count_boards, simulated_line


def passed(journal: Path, station: str) -> int:
    return count_boards(journal, "outcome = 'PASS' AND station = ?", station)


def wait(condition: object, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_sighup_adds_and_removes_stations_and_refuses_a_bad_file(tmp_path: Path) -> None:
    workdir = tmp_path / "line"
    journal, log = workdir / "journal.db", workdir / "logs" / "orchestrator.jsonl"
    config = workdir / "stations.yaml"
    with simulated_line(workdir, stations=3, boards=4, baud=921_600, app_size=4000, quantity=12) as simulated:
        full = yaml.safe_load(simulated.stations_yaml)
        by_name = {s["name"]: s for s in full["stations"]}

        def write(names: list[str]) -> None:
            config.write_text(
                yaml.safe_dump({**full, "stations": [by_name[n] for n in names]}, sort_keys=False)
            )

        write(["station-01", "station-02"])
        daemon = simulated.daemon()
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
