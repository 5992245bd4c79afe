"""A station that cannot finish a board never starts one (issue 10, finding 2): a UART that does not
open blocks the station (state ``blocked`` with the reason) before step 1; the board stays untouched;
a corrected stations.yaml lets it go on."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import venv_tool
from tests.orchestrator.harness import simulated_line
from tests.orchestrator.test_crash import finished


def _station(config: Path) -> dict[str, Any]:
    result = subprocess.run(
        [venv_tool("orchestrator"), "status", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    (station,) = json.loads(result.stdout)["stations"]
    return dict(station)


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
