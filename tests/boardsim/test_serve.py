"""`boardsim serve` as a process: pyOCD's command line against it, 16 stations at once, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import pytest
import yaml

from tests.boardsim.station_driver import provision
from tests.conftest import venv_tool


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    state: Path
    env: dict[str, str]

    def description(self) -> dict[str, object]:
        loaded: dict[str, object] = json.loads((self.state / "serve.json").read_text())
        return loaded

    def board_states(self) -> list[dict[str, object]]:
        return [json.loads(path.read_text()) for path in sorted(self.state.glob("*/state.json"))]


def start(tmp_path: Path, *args: str) -> Served:
    env = dict(os.environ, BOARDSIM_PROBES=str(tmp_path / "probes"))
    state = tmp_path / "state"
    process = subprocess.Popen(
        [venv_tool("boardsim"), "serve", "--state-dir", str(state), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not (state / "serve.json").exists():
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        assert time.monotonic() < deadline, "boardsim serve did not start in 60 s"
        time.sleep(0.1)
    return Served(process, state, env)


def stop(served: Served) -> int:
    served.process.send_signal(signal.SIGTERM)
    return served.process.wait(timeout=30)


@pytest.fixture
def two_stations(tmp_path: Path) -> Iterator[Served]:
    served = start(tmp_path, "--stations", "2", "--write-stations", str(tmp_path / "stations.yaml"))
    yield served
    if served.process.poll() is None:
        stop(served)


def pyocd(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_tool("pyocd"), *args], env=served.env, capture_output=True, text=True, timeout=120, check=False
    )


def test_pyocd_command_line_works_against_serve(two_stations: Served, tmp_path: Path) -> None:
    listed = pyocd(two_stations, "list")
    assert "NULINK3-SIM-01" in listed.stdout
    assert "NULINK3-SIM-02" in listed.stdout
    read = pyocd(
        two_stations,
        "commander",
        "-u",
        "boardsim:NULINK3-SIM-01",
        "-t",
        "m2354kjfae",
        "-c",
        "read32 0x40000000",
    )
    assert "a1735440" in read.stdout, read.stdout + read.stderr
    firmware = tmp_path / "fw.bin"
    firmware.write_bytes(os.urandom(3000))
    loaded = pyocd(
        two_stations, "load", "-u", "boardsim:NULINK3-SIM-02", "-t", "m2354kjfae",
        str(firmware), "--base-address", "0x20000", "--format", "bin",
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    station_two = next(s for s in two_stations.board_states() if str(s["uid"]).startswith("53494D02"))
    aprom = (two_stations.state / str(station_two["uid"]) / "aprom.bin").read_bytes()
    assert aprom[0x20000 : 0x20000 + 3000] == firmware.read_bytes()
    written = yaml.safe_load((tmp_path / "stations.yaml").read_text())
    assert written["stations"][0]["probe"] == "boardsim:NULINK3-SIM-01"
    assert len(written["secureisp"]["rom_public_key"]) == 128
    assert stop(two_stations) == 0
    assert not list((tmp_path / "probes").glob("*.sock"))


def test_sixteen_stations_provision_concurrently_with_the_time_model(tmp_path: Path) -> None:
    served = start(tmp_path, "--stations", "16", "--baud", "460800")
    try:
        description = served.description()
        keys = description["secureisp"]
        assert isinstance(keys, dict)
        stations = description["stations"]
        assert isinstance(stations, list)
        os.environ["BOARDSIM_PROBES"] = served.env["BOARDSIM_PROBES"]
        with ProcessPoolExecutor(max_workers=16, mp_context=get_context("spawn")) as pool:
            jobs = [
                pool.submit(
                    provision,
                    s["probe"],
                    s["uart"],
                    baud=s["baud"],
                    isp_keys=keys,
                    workdir=str(tmp_path / s["name"]),
                    app_size=2048,
                )
                for s in stations
            ]
            results = [job.result(timeout=600) for job in jobs]
        assert [r["outcome"] for r in results] == ["application"] * 16
        time.sleep(0.3)
        states = {str(s["uid"]): s for s in served.board_states()}
        for result in results:
            state = states[result["uid"]]
            assert state["booted"] == "application"
            assert state["debug_locked"] is True
            counts = state["otp_program_counts"]
            assert isinstance(counts, list)
            assert counts[:24] == [1] * 24  # every key word programmed exactly once
    finally:
        os.environ.pop("BOARDSIM_PROBES", None)
        assert stop(served) == 0


def test_serve_rejects_a_bad_faults_file(tmp_path: Path) -> None:
    faults = tmp_path / "faults.yaml"
    faults.write_text("- not a mapping\n")
    result = subprocess.run(
        [venv_tool("boardsim"), "serve", "--stations", "1", "--state-dir", str(tmp_path),
         "--faults", str(faults)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "faults.yaml" in result.stderr
    assert sys.executable


def test_ctl_changes_faults_of_a_running_serve(two_stations: Served) -> None:
    def ctl(request: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [venv_tool("boardsim"), "ctl", "--state-dir", str(two_stations.state), request],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    assert ctl('{"op": "faults", "station": "station-01", "set": {"unplugged": true}}').returncode == 0
    listed = pyocd(
        two_stations, "commander", "-u", "boardsim:NULINK3-SIM-01", "-t", "m2354kjfae", "-c", "read32 0"
    )
    assert listed.returncode != 0
    assert ctl('{"op": "plug", "station": "station-01"}').returncode == 0
    status = ctl('{"op": "status"}')
    assert json.loads(status.stdout)["stations"]["station-02"]["booted"] == "rom"
    refused = ctl('{"op": "jump", "station": "station-01"}')
    assert refused.returncode == 1
    assert "unknown op" in refused.stdout


def test_a_killed_serve_restarted_puts_its_boards_back(tmp_path: Path) -> None:
    """SIGKILL of the simulator is a power cut of its fixtures: restarted on the same state folder,
    each station gets the board it held back (from its folder, history kept) and its pile."""
    served = start(tmp_path, "--stations", "1", "--boards-per-station", "2", "--handling-delay", "0.1")

    def ctl(request: str) -> dict[str, object]:
        result = subprocess.run(
            [venv_tool("boardsim"), "ctl", "--state-dir", str(served.state), request],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        answer: dict[str, object] = json.loads(result.stdout)
        return answer

    def station() -> dict[str, object]:
        stations = ctl('{"op": "status"}')["stations"]
        assert isinstance(stations, dict)
        return dict(stations["station-01"])

    def until(condition: object) -> dict[str, object]:
        deadline = time.monotonic() + 60
        while True:
            now = station()
            if callable(condition) and condition(now):
                return now
            assert time.monotonic() < deadline, now
            time.sleep(0.1)

    first = until(lambda s: s["board"] is not None)["board"]
    ctl('{"op": "put-aside", "station": "station-01"}')
    second = until(lambda s: s["board"] not in (None, first))["board"]
    ctl('{"op": "power-cut", "station": "station-01"}')
    served.process.send_signal(signal.SIGKILL)
    served.process.wait(timeout=30)
    (served.state / "serve.json").unlink()
    served = start(tmp_path, "--stations", "1", "--handling-delay", "0.1")
    try:
        back = until(lambda s: s["board"] is not None)
        assert back["board"] == second
        assert back["queued"] == 1  # the board put aside still waits its turn
        (state,) = [s for s in served.board_states() if s["uid"] == second]
        events = state["events"]
        assert isinstance(events, list)
        causes = [event.get("cause") for event in events]
        assert "brown-out (power cut)" in causes  # its history from before the kill
        assert causes[-1] == "inserted (power on)"
    finally:
        stop(served)
