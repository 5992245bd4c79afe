"""SIGHUP reloads stations.yaml while boards run: added stations start, removed ones stop at a safe
point, untouched ones go on; an invalid edit is refused with file, line and field."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import httpx
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


def _settled(log: Path, station: str) -> bool:
    """The station's board reached its safe point: parked (journal open), or finished."""
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return any(e.get("station") == station and e["event"] in ("board.parked", "board.done") for e in events)


def test_a_station_removed_mid_board_stays_in_view_until_it_has_parked(tmp_path: Path) -> None:
    """Issue 10, finding 6: a reload that removes a station busy with a board lets the board reach
    a safe point first, and the status shows that station (``stopping``) until it has."""
    workdir = tmp_path / "line"
    config = workdir / "stations.yaml"
    with simulated_line(
        workdir, stations=2, boards=1, baud=115_200, app_size=20_000, quantity=2
    ) as simulated:
        full = yaml.safe_load(simulated.stations_yaml)
        daemon = simulated.daemon()
        simulated.serving(daemon)
        url = json.loads((workdir / "api.json").read_text())["url"]

        def downloading() -> bool:  # inside the SecureISP group, whose end is the next safe point
            stations = httpx.get(f"{url}/api/v1/status", timeout=30).json()["stations"]
            return any(s["name"] == "station-02" and s["step"] == 12 for s in stations)

        simulated.until(downloading, "station-02 in its download", daemon)
        config.write_text(yaml.safe_dump({**full, "stations": full["stations"][:1]}, sort_keys=False))
        daemon.send_signal(signal.SIGHUP)
        simulated.until(lambda: "config.reloaded" in simulated.log.read_text(), "the reload", daemon)
        seen_stopping = False
        while True:
            stations = httpx.get(f"{url}/api/v1/status", timeout=30).json()["stations"]
            shown = {s["name"]: s for s in stations}
            if "station-02" not in shown:  # gone from the view: its log already says where the board is
                settled = _settled(simulated.log, "station-02")
                break
            seen_stopping |= shown["station-02"]["stopping"]
            time.sleep(0.05)
        assert settled, "station-02 left the view before its board reached a safe point"
        assert seen_stopping
        assert "station-01" in shown
        simulated.stop(daemon)


def test_a_reload_that_changes_the_job_is_refused_and_shown(tmp_path: Path) -> None:
    """Issue 14: the job, the cloud, the keys and the API need a restart; a reload that changes
    one is refused with a log line naming it and a notice in the status (and the dashboard),
    and the line goes on as it was."""
    workdir = tmp_path / "line"
    config = workdir / "stations.yaml"
    with simulated_line(workdir, stations=1, boards=2, baud=921_600, app_size=4000, quantity=2) as simulated:
        full = yaml.safe_load(simulated.stations_yaml)
        daemon = simulated.daemon()
        simulated.serving(daemon)
        url = json.loads((workdir / "api.json").read_text())["url"]
        config.write_text(yaml.safe_dump({**full, "job_id": "job-000000000000"}, sort_keys=False))
        daemon.send_signal(signal.SIGHUP)
        simulated.until(lambda: "config.refused" in simulated.log.read_text(), "the refusal", daemon)
        status = httpx.get(f"{url}/api/v1/status", timeout=30).json()
        assert status["job_id"] == full["job_id"]
        assert "job_id changed" in status["notice"]
        assert "restart" in status["notice"]
        simulated.until(lambda: passed(simulated.journal, "station-01") == 2, "both boards", daemon)
        config.write_text(simulated.stations_yaml)  # put back: the next reload applies and clears it
        daemon.send_signal(signal.SIGHUP)
        cleared = lambda: httpx.get(f"{url}/api/v1/status", timeout=30).json()["notice"] == ""  # noqa: E731
        simulated.until(cleared, "the notice cleared by the reload", daemon)
        simulated.stop(daemon)
    refused = [
        json.loads(line) for line in simulated.log.read_text().splitlines() if "config.refused" in line
    ]
    assert refused[0]["changed"] == ["job_id"]
