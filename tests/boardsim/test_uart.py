"""A full SecureISP session over a real pseudo-terminal, opened with pyserial like a COM port."""

from __future__ import annotations

import hashlib
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
from boardsim.uart import UartFaults, UartPort
from nuwire.keys import raw_public_key
from nuwire.profiles import M2354
from nuwire.secureisp import messages as m
from nuwire.secureisp.commands import Status
from nuwire.secureisp.packet import PACKET_SIZE
from nuwire.secureisp.session import HostSession
from nuwire.secureisp.states import Role
from tests.boardsim.helpers import Keys, host, install_bootloader, signed
from tests.boardsim.station_driver import SerialHost

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


def provision_app_hash(line: Line) -> None:
    rom = host(Role.ROM, line.keys)
    line.connect(rom)
    device = m.DeviceId.from_payload(line.exchange(rom, rom.send(m.GetId())).payload)
    assert device.uid == (1, 2, 3)
    for entry, (low, high) in M2354.app_key_hash_entries(raw_public_key(line.keys.app.public_key())).items():
        assert line.exchange(rom, rom.send(m.WriteOtp(entry, low, high))).ok
    assert line.exchange(rom, rom.send(m.RebootToBootloader())).ok


def download(line: Line, image: bytes) -> m.Reply:
    boot = host(Role.BOOTLOADER, line.keys)
    line.connect(boot)
    slot = M2354.application_slot
    assert line.exchange(boot, boot.send(m.DlBegin(slot.base, len(image), hashlib.sha256(image).digest()))).ok
    padded = image + b"\xff" * (-len(image) % 4)
    for offset in range(0, len(padded), 48):
        assert line.exchange(boot, boot.send(m.MassWrite(offset // 48, padded[offset : offset + 48]))).ok
    return line.exchange(boot, boot.send(m.DlFinish()))


def test_full_session_over_a_pty_boots_the_application(line: Line) -> None:
    provision_app_hash(line)
    image = signed(os.urandom(3000), line.keys.app, "application", full=True)
    assert download(line, image).ok
    assert line.state()["booted"] == "application"
    assert line.port.stats.packets > 80


def test_tampered_image_and_wrong_key_are_refused_over_the_pty(line: Line) -> None:
    provision_app_hash(line)
    tampered = bytearray(signed(os.urandom(2000), line.keys.app, "application", full=True))
    tampered[0x410] ^= 0xFF
    assert download(line, bytes(tampered)).status is Status.ERR_DL_SIGNATURE
    foreign = signed(os.urandom(2000), Keys.make().app, "application", full=True)
    assert download(line, foreign).status is Status.ERR_DL_KEY
    state = line.state()
    assert state["booted"] == "bootloader"
    reasons = [event["reason"] for event in state["events"] if event["decision"] == "refused"]  # type: ignore[attr-defined]
    assert "SHA256 TLV does not match the image" in reasons
    assert "the image's public key does not hash to OTP 8..11" in reasons


def test_corrupted_packet_is_refused_and_recorded(line: Line) -> None:
    rom = host(Role.ROM, line.keys)
    line.connect(rom)
    raw = bytearray(rom.send(m.GetId()))
    raw[20] ^= 0x01
    line.serial.write(bytes(raw))
    reply = rom.receive(line.serial.read(PACKET_SIZE))
    assert reply.status is Status.ERR_CMD_CHECKSUM
    assert line.exchange(rom, rom.resend()).ok
    events = line.state()["events"]
    assert isinstance(events, list)
    assert events[-1]["status"] == "ERR_CMD_CHECKSUM"


def test_noisy_line_still_provisions_with_resends(line: Line) -> None:
    line.port.faults = UartFaults(loss_rate=0.001, corrupt_rate=0.001)
    line.port.faults.rng.seed(5)
    provision_app_hash(line)
    assert download(line, signed(os.urandom(3000), line.keys.app, "application", full=True)).ok
    assert line.state()["booted"] == "application"
    refused = sum(event["decision"] == "refused" for event in line.board.events)
    assert line.port.stats.dropped_bytes + refused > 0  # the noise was there, and was recovered from
