"""A station that cannot finish a board never starts one (issue 10, findings 2 and 5): a UART that
does not open, a cloud that refuses the TLS handshake, an unknown job or a job without quota left
blocks the station (state ``blocked`` with the reason, on the status API, /metrics and the log)
before step 1; the board stays untouched; a corrected stations.yaml lets it go on."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from cloudserver.pki import init_pki
from tests.conftest import venv_tool
from tests.orchestrator.harness import SimulatedLine, simulated_line
from tests.orchestrator.test_crash import finished


def _station(config: Path) -> dict[str, Any]:
    result = subprocess.run(
        [venv_tool("orchestrator"), "status", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    (station,) = json.loads(result.stdout)["stations"]
    return dict(station)


def _blocked(line: SimulatedLine, daemon: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The station's status once it shows ``blocked``."""
    line.serving(daemon)
    found: dict[str, Any] = {}

    def blocked() -> bool:
        found.update(_station(line.config))
        return bool(found["state"] == "blocked")

    line.until(blocked, "a blocked station", daemon)
    return found


def _metrics(line: SimulatedLine) -> str:
    url = json.loads((line.journal.parent / "api.json").read_text())["url"]
    return httpx.get(f"{url}/metrics", timeout=30).text


def _untouched(workdir: Path, uid: str | None = None) -> bool:
    for state_file in (workdir / "boards").glob("53494D*/state.json"):
        state = json.loads(state_file.read_text())
        if uid in (None, state["uid"]) and (any(state["otp_program_counts"]) or state["debug_locked"]):
            return False
    return True


def test_a_missing_uart_blocks_the_station_before_step_1(tmp_path: Path) -> None:
    workdir = tmp_path / "line"
    with simulated_line(workdir, stations=1, boards=1, baud=460_800, app_size=4000, quantity=1) as line:
        config = yaml.safe_load(line.config.read_text())
        good = config["stations"][0]["uart"]
        config["stations"][0]["uart"] = str(tmp_path / "no-such-uart")
        line.config.write_text(yaml.safe_dump(config, sort_keys=False))
        daemon = line.daemon()
        line.serving(daemon)
        deadline = time.monotonic() + 120
        while True:
            station = _station(line.config)
            if station["state"] == "blocked":
                break
            assert time.monotonic() < deadline, station
            time.sleep(0.2)
        assert "no-such-uart" in station["last_error"]
        assert '"station.blocked"' in line.log.read_text()
        with sqlite3.connect(line.journal) as db:
            assert db.execute("SELECT COUNT(*) FROM boards").fetchone()[0] == 0
            assert db.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == 0
        (state_file,) = (workdir / "boards").glob("53494D*/state.json")
        state = json.loads(state_file.read_text())
        assert not any(state["otp_program_counts"])
        assert state["debug_locked"] is False
        config["stations"][0]["uart"] = good  # corrected: the station goes on
        line.config.write_text(yaml.safe_dump(config, sort_keys=False))
        line.until(lambda: finished(line.journal) == 1, "outcome", daemon)
        line.stop(daemon)
    with sqlite3.connect(line.journal) as db:
        assert [row[0] for row in db.execute("SELECT outcome FROM boards")] == ["PASS"]


def test_an_unknown_job_and_a_wrong_ca_block_the_station_before_step_1(tmp_path: Path) -> None:
    workdir = tmp_path / "line"
    init_pki(tmp_path / "other", 1)  # another CA, made the same way
    other_ca = tmp_path / "other" / "ca.crt"
    with simulated_line(workdir, stations=1, boards=1, baud=460_800, app_size=4000, quantity=1) as line:
        good = yaml.safe_load(line.config.read_text())
        for edit, expected in (
            ({"job_id": "job-000000000000"}, "job job-000000000000 does not exist"),
            ({"cloud": {**good["cloud"], "ca": str(other_ca)}}, "CERTIFICATE_VERIFY_FAILED"),
        ):
            line.config.write_text(yaml.safe_dump({**good, **edit}, sort_keys=False))
            daemon = line.daemon()
            station = _blocked(line, daemon)
            assert expected in station["last_error"], station
            assert 'nuprov_station_state{state="blocked",station="station-01"} 1.0' in _metrics(line)
            line.stop(daemon)
        assert '"station.blocked"' in line.log.read_text()
        with sqlite3.connect(line.journal) as db:
            assert db.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == 0
        assert _untouched(workdir)


def test_a_job_without_quota_left_starts_no_board(tmp_path: Path) -> None:
    """Quota 1, two boards: the second board is never started (no step, no cloud refusal)."""
    workdir = tmp_path / "line"
    with simulated_line(workdir, stations=1, boards=2, baud=460_800, app_size=4000, quantity=1) as line:
        daemon = line.daemon()
        line.until(lambda: finished(line.journal) == 1, "the first board's outcome", daemon)
        station = _blocked(line, daemon)
        assert "no quota left (1 of 1 boards)" in station["last_error"], station
        line.stop(daemon)
    with sqlite3.connect(line.journal) as db:
        assert [row[0] for row in db.execute("SELECT outcome FROM boards")] == ["PASS"]
        (passed,) = db.execute("SELECT uid FROM boards").fetchone()
        assert db.execute("SELECT COUNT(DISTINCT uid) FROM steps").fetchone()[0] == 1
    others = [
        p.parent.name for p in (workdir / "boards").glob("53494D*/state.json") if p.parent.name != passed
    ]
    assert all(_untouched(workdir, uid) for uid in others)
    audit = subprocess.run([venv_tool("cloudserver"), "audit", "--data", str(workdir / "cloud"), "--json"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert '"refuse"' not in audit.stdout
