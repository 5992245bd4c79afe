"""A simulated line for daemon tests: cloudserver and boardsim in their own processes, a job,
and a stations.yaml; ``orchestrator run`` is started by the test, as many times as it likes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from orchestrator.demo import _create_job, _prepare, _start, _stations_yaml
from tests.conftest import venv_tool


def count_boards(journal: Path, where: str, *params: str) -> int:
    """Boards in a (maybe still starting) daemon's journal matching ``where``; 0 before it exists."""
    if not journal.exists():
        return 0
    try:
        with sqlite3.connect(journal) as db:
            return int(db.execute(f"SELECT COUNT(*) FROM boards WHERE {where}", params).fetchone()[0])  # noqa: S608  # tests' own clauses
    except sqlite3.OperationalError:  # the daemon has created the file but not yet its tables
        return 0


@dataclass
class SimulatedLine:
    workdir: Path
    stations_yaml: str

    @property
    def config(self) -> Path:
        return self.workdir / "stations.yaml"

    @property
    def journal(self) -> Path:
        return self.workdir / "journal.db"

    @property
    def log(self) -> Path:
        return self.workdir / "logs" / "orchestrator.jsonl"

    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def fault(self, station: str, **settings: object) -> None:
        """Set faults on a simulated station while the line runs (``boardsim ctl``)."""
        request = json.dumps({"op": "faults", "station": station, "set": settings})
        command = [venv_tool("boardsim"), "ctl", "--state-dir", str(self.workdir / "boards"), request]
        subprocess.run(command, capture_output=True, check=True)

    def daemon(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        command = [
            venv_tool("orchestrator"),
            "run",
            "--config",
            str(self.config),
            "--journal",
            str(self.journal),
        ]
        process = subprocess.Popen(
            [*command, "--log-file", str(self.log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        self.daemons.append(process)
        return process

    def until(
        self, done: Callable[[], bool], what: str, daemon: subprocess.Popen[bytes] | None = None
    ) -> None:
        """Wait for an event (``done()``), bounded; a daemon that exits first fails the test."""
        deadline = time.monotonic() + 900  # a bound for a loaded machine, not a timing
        while not done():
            assert time.monotonic() < deadline, f"no {what} within 900 s"
            assert daemon is None or daemon.poll() is None, f"the daemon exited before {what}"
            time.sleep(0.01)

    def stop(self, daemon: subprocess.Popen[bytes]) -> None:
        """SIGTERM once the daemon serves; it must stop cleanly."""
        self.serving(daemon)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0

    def serving(self, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
        """Wait until ``process`` serves (its api.json names it): a SIGTERM from then on is handled."""
        address = self.journal.parent / "api.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if json.loads(address.read_text()).get("pid") == process.pid:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"daemon {process.pid} did not start serving (exit {process.poll()})")


@contextmanager
def simulated_line(
    workdir: Path, *, stations: int, boards: int, baud: int, app_size: int, quantity: int, kind: str = "blank"
) -> Iterator[SimulatedLine]:
    bodies = _prepare(workdir, app_size)
    os.environ["BOARDSIM_PROBES"] = str((workdir / "probes").resolve())
    processes = _start(workdir, stations, boards, baud, None, board_kind=kind)
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        url, job_id = anyio.run(_create_job, workdir / "cloud", bodies, quantity)
        simulated = json.loads((workdir / "boards" / "serve.json").read_text())
        text = _stations_yaml(workdir, url, job_id, simulated, uart_timeout=2.0)
        (workdir / "stations.yaml").write_text(text)
        yield SimulatedLine(workdir, text, daemons)
    finally:
        for daemon in daemons:
            if daemon.poll() is None:  # a test that failed left it running
                daemon.kill()
                daemon.wait()
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
