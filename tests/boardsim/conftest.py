"""Fixtures: a simulated probe served on a Unix socket from a background event loop."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from boardsim.board import Board
from boardsim.cortex import Core, m2354_algorithms
from boardsim.dap import DapProbe, SwdPort
from boardsim.probe_server import ProbeServer
from boardsim.state import StateStore
from nuwire.profiles import M2354

UID = (0x00C0FFEE, 0x12345678, 0x9ABCDEF0)


@dataclass
class Rig:
    board: Board
    server: ProbeServer
    portal: BlockingPortal
    store: StateStore
    workdir: Path

    @property
    def unique_id(self) -> str:
        return f"boardsim:{self.server.probe.serial}"

    def state(self) -> dict[str, Any]:
        self.store.flush()
        loaded: dict[str, Any] = json.loads((self.store.folder(self.board) / "state.json").read_text())
        return loaded

    def session(self) -> Any:
        from pyocd.core.helpers import ConnectHelper  # noqa: PLC0415  # pyOCD loads slowly; only these tests need it

        return ConnectHelper.session_with_chosen_probe(
            unique_id=self.unique_id,
            target_override="m2354kjfae",
            blocking=False,
            options={"project_dir": str(self.workdir), "no_config": True, "frequency": 4_000_000},
        )


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    probes = tmp_path / "probes"
    probes.mkdir()
    monkeypatch.setenv("BOARDSIM_PROBES", str(probes))
    board = Board(M2354, UID)
    store = StateStore(tmp_path / "state")
    store.attach(board)
    core = Core(board, m2354_algorithms())
    board.reset("power on")
    server = ProbeServer(DapProbe("NULINK3-SIM-01", SwdPort(board, core)), probes / "NULINK3-SIM-01.sock")
    with start_blocking_portal() as portal:
        portal.start_task(server.serve)
        yield Rig(board, server, portal, store, tmp_path)
        portal.call(server.unplug)
        portal.call(portal.stop, True)
