"""Whole-line runs: 16 stations at once, and a line with faults that must still pass every board."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from tests.conftest import venv_tool


def demo(workdir: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    result = subprocess.run(
        [venv_tool("orchestrator"), "demo", "--workdir", str(workdir), "--api-port", "0", *args],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    report = json.loads((workdir / "report.json").read_text()) if (workdir / "report.json").exists() else {}
    return result, report


def test_sixteen_stations_provision_thirty_two_boards(tmp_path: Path) -> None:
    result, report = demo(tmp_path / "run", "--stations", "16", "--boards", "2", "--app-size", "4000")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    totals = report["totals"]
    assert isinstance(totals, dict)
    assert totals["pass"] == 32


def test_uart_corruption_and_a_brownout_mid_download_still_pass(tmp_path: Path) -> None:
    faults = tmp_path / "faults.yaml"
    faults.write_text(
        "station-01: {uart_corrupt_rate: 0.0001, uart_loss_rate: 0.0001}\n"
        "station-02: {brownout_at_command: 0x8301}\n"  # the first MASS_WRITE of the download
        "station-03: {swd_fault_rate: 0.00002}\n"
    )
    result, report = demo(
        tmp_path / "run", "--stations", "3", "--boards", "1", "--app-size", "20000", "--faults", str(faults)
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    boards = report["boards"]
    assert isinstance(boards, list)
    by_station = {b["station"]: b for b in boards}
    assert all(b["outcome"] == "PASS" for b in boards)
    # The brown-out cost station-02 a second try of the UART group.
    assert by_station["station-02"]["steps"]["10"]["attempts"] >= 2
    states = [json.loads(p.read_text()) for p in (tmp_path / "run" / "boards").glob("*/state.json")]
    assert all(s["otp_program_counts"][:24] == [1] * 24 for s in states)
    assert any(e.get("cause") == "brown-out" for s in states for e in s["events"])


def test_a_taken_dashboard_port_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [venv_tool("orchestrator"), "demo", "--workdir", str(tmp_path / "run"), "--stations", "1",
             "--boards", "1", "--api-port", str(port)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"api.listen 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
