"""A full SecureISP session over a real pseudo-terminal, opened with pyserial like a COM port."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import serial
from anyio.from_thread import start_blocking_portal

from boardsim.board import Board
from boardsim.isp import BoardIsp
from boardsim.state import StateStore
from boardsim.uart import UartPort
from nuwire.keys import raw_public_key
from nuwire.profiles import M2354
from nuwire.secureisp import messages as m
from nuwire.secureisp.commands import Status
from nuwire.secureisp.packet import PACKET_SIZE
from nuwire.secureisp.session import HostSession
from nuwire.secureisp.states import Role
from tests.boardsim.helpers import Keys, host, install_bootloader, signed
from tests.boardsim.station_driver import SerialHost, uart_steps

BAUD = 921_600


@dataclass
class Line:
    board: Board
    isp: BoardIsp
    port: UartPort
    serial: serial.Serial
    keys: Keys
    store: StateStore

    def exchange(self, session: HostSession, raw: bytes) -> m.Reply:
        """Stop-and-wait with resends, as a station does."""
        return SerialHost(self.serial).exchange(session, raw)

    def connect(self, session: HostSession) -> None:
        SerialHost(self.serial).open_session(session)

    def state(self) -> dict[str, object]:
        self.store.flush()
        loaded: dict[str, object] = json.loads((self.store.folder(self.board) / "state.json").read_text())
        return loaded


@pytest.fixture
def line(tmp_path: Path) -> Iterator[Line]:
    keys = Keys.make()
    board = Board(M2354, (1, 2, 3))
    store = StateStore(tmp_path / "state")
    store.attach(board)
    board.reset("power on")
    install_bootloader(board, keys)
    isp = BoardIsp(board, keys.isp)
    port = UartPort(tmp_path / "uart-01", BAUD, lambda: isp)
    with start_blocking_portal() as portal:
        portal.start_task_soon(port.serve)
        with serial.Serial(str(tmp_path / "uart-01"), BAUD, timeout=0.5) as device:
            yield Line(board, isp, port, device, keys, store)
        portal.call(portal.stop, True)
    port.close()


def test_full_session_over_a_pty_boots_the_application(line: Line) -> None:
    keys = {
        "rom_public_key": raw_public_key(line.keys.isp.rom.public_key()).hex(),
        "bootloader_public_key": raw_public_key(line.keys.isp.bootloader.public_key()).hex(),
    }
    image = signed(os.urandom(2000), line.keys.app, "application", full=True)
    line.serial.close()
    assert uart_steps(line.port.link.as_posix(), BAUD, keys, line.keys.app, image) == "application"
    assert line.board.booted == "application"
    assert line.state()["booted"] == "application"


def test_a_corrupted_request_is_answered_once_and_then_nothing_until_reset(line: Line) -> None:
    rom = host(Role.ROM, line.keys)
    line.connect(rom)
    raw = bytearray(rom.send(m.GetId()))
    raw[30] ^= 0x40
    line.serial.write(bytes(raw))
    answer = line.serial.read(PACKET_SIZE)
    assert rom.receive(answer).status is Status.ERR_CMD_CHECKSUM
    line.serial.write(rom.resync())
    assert line.serial.read(PACKET_SIZE) == b""  # SecureISP has ended: silence
