"""Each fault, and what the station side observes: the errors a real probe or serial port gives."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import serial
from anyio.from_thread import BlockingPortal, start_blocking_portal
from cryptography.hazmat.primitives.asymmetric import ec

from boardsim.serve import ServeSettings, Simulator
from boardsim.station import OperatorSettings
from nuwire.errors import ProtocolError
from nuwire.keys import public_key_from_raw
from nuwire.secureisp import messages as m
from nuwire.secureisp.commands import Command, Status
from nuwire.secureisp.packet import PACKET_SIZE
from nuwire.secureisp.session import HostSession
from nuwire.secureisp.states import Role
from tests.boardsim.station_driver import SerialHost


@dataclass
class Live:
    simulator: Simulator
    portal: BlockingPortal
    workdir: Path

    def command(self, request: dict[str, Any]) -> None:
        assert self.portal.call(self.simulator.command, request) == {"ok": True}

    def faults(self, **values: object) -> None:
        self.command({"op": "faults", "station": "station-01", "set": values})

    def session(self) -> Any:
        from pyocd.core.helpers import ConnectHelper  # noqa: PLC0415  # slow import, only here

        return ConnectHelper.session_with_chosen_probe(
            unique_id="boardsim:NULINK3-SIM-01", target_override="m2354kjfae", blocking=False,
            options={"project_dir": str(self.workdir), "no_config": True},
        )  # fmt: skip

    def rom_host(self) -> HostSession:
        keys = self.simulator.describe()["secureisp"]
        return HostSession(
            Role.ROM,
            ec.generate_private_key(ec.SECP256R1()),
            public_key_from_raw(bytes.fromhex(keys["rom_public_key"])),
        )

    def nreset(self) -> None:
        """What a station does to bring SecureISP back: nRESET through the probe."""
        board = self.simulator.stations[0].board
        assert board is not None
        self.portal.call(board.reset, "nRESET")

    def uart(self) -> serial.Serial:
        return serial.Serial(str(self.simulator.stations[0].uart.link), 460_800, timeout=1.0)


def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timing: bool) -> Iterator[Live]:
    monkeypatch.setenv("BOARDSIM_PROBES", str(tmp_path / "probes"))
    settings = ServeSettings(
        stations=1, state_dir=tmp_path / "state", baud=460_800, timing=timing,
        operator=OperatorSettings(handling_delay_s=0.0),
    )  # fmt: skip
    simulator = Simulator(settings)
    with start_blocking_portal() as portal:
        portal.start_task_soon(simulator.run)
        deadline = time.monotonic() + 10
        while simulator.stations[0].board is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield Live(simulator, portal, tmp_path)
        portal.call(portal.stop, True)


@pytest.fixture
def line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    yield from live(tmp_path, monkeypatch, timing=False)


@pytest.fixture
def timed_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    yield from live(tmp_path, monkeypatch, timing=True)


def test_unplugged_probe_gives_probe_error_and_a_replug_works(line: Live) -> None:
    from pyocd.core.exceptions import ProbeError  # noqa: PLC0415

    session = line.session()
    session.open()
    assert session.target.read32(0x40000000) == 0xA1735440
    line.faults(unplugged=True)
    with pytest.raises(ProbeError, match="unplugged"):
        session.target.read32(0x40000000)
    with contextlib.suppress(Exception):
        session.close()
    with pytest.raises(ProbeError):
        line.session().open()
    line.faults(unplugged=False)
    with line.session() as again:
        assert again.target.read32(0x40000000) == 0xA1735440


def test_swd_faults_give_transfer_fault_errors(line: Live) -> None:
    from pyocd.core.exceptions import TransferFaultError  # noqa: PLC0415

    with line.session() as session:
        line.faults(swd_fault_rate=1.0)
        with pytest.raises(TransferFaultError):
            session.target.read32(0x20000000)
        line.faults(swd_fault_rate=0.0)
        session.target.write32(0x20000000, 0x12345678)  # pyOCD clears the sticky error itself
        assert session.target.read32(0x20000000) == 0x12345678


def test_uart_loss_gives_read_timeouts_and_corruption_gives_crc_errors(line: Live) -> None:
    rom = line.rom_host()
    with line.uart() as device:
        line.faults(uart_loss_rate=1.0)
        device.write(rom.connect())
        assert device.read(PACKET_SIZE) == b""  # a serial port that hears nothing: a timeout
        line.faults(uart_loss_rate=0.0, uart_corrupt_rate=1.0)
        time.sleep(0.1)
        device.reset_input_buffer()
        device.write(rom.resend())
        answer = device.read(PACKET_SIZE)
        with pytest.raises(ProtocolError, match="crc32"):
            rom.receive(answer)
        line.faults(uart_corrupt_rate=0.0)
        drain(device)
        device.write(line.rom_host().resync())  # the damaged CONNECT ended SecureISP (as on the chip)
        assert device.read(PACKET_SIZE) == b""
        line.nreset()
        SerialHost(device).open_session(line.rom_host())


def drain(device: serial.Serial) -> None:
    """Drop late duplicate answers to earlier resends (a loaded machine makes the host resend)."""
    time.sleep(0.3)
    device.reset_input_buffer()


def test_brownout_mid_command_loses_the_session(line: Live) -> None:
    rom = line.rom_host()
    with line.uart() as device:
        host = SerialHost(device)
        host.open_session(rom)
        line.faults(brownout_at_command=int(Command.GET_ID))
        drain(device)
        device.write(rom.send(m.GetId()))
        assert device.read(PACKET_SIZE) == b""  # the board reset instead of answering
        fresh = line.rom_host()
        host.open_session(fresh)  # the reset board's ROM waits for CONNECT: a new session recovers
        assert host.exchange(fresh, fresh.send(m.GetId())).ok
    events = line.simulator.stations[0].board.events  # type: ignore[union-attr]
    assert any(event["cause"] == "brown-out" for event in events if "cause" in event)


def _exchange_time(line: Live, count: int, slow_factor: float) -> float:
    rom = line.rom_host()
    with line.uart() as device:
        host = SerialHost(device)
        host.open_session(rom)
        line.faults(slow_factor=slow_factor)
        started = time.monotonic()
        for _ in range(count):
            assert host.exchange(rom, rom.send(m.GetVersion())).ok
        return time.monotonic() - started


def test_slow_target_answers_later(timed_line: Live) -> None:
    board = timed_line.simulator.stations[0].board
    assert board is not None
    slowed = 10 * board.timing.aes_packet * 400  # a floor: a loaded machine only adds to it
    assert slowed >= 0.5
    assert _exchange_time(timed_line, 10, 400.0) >= slowed  # each answer waits 400x the target's own time


def test_brownout_at_a_byte_offset_resets_the_board(line: Live) -> None:
    station = line.simulator.stations[0]
    with line.uart() as device:
        line.faults(brownout_at_byte=3 * PACKET_SIZE)
        host = SerialHost(device)
        rom = line.rom_host()
        assert host.exchange(rom, rom.resync()).ok
        assert host.exchange(rom, rom.connect()).ok
        drain(device)
        device.write(rom.key_exchange())  # the third packet: the board browns out instead of answering
        assert device.read(PACKET_SIZE) == b""
        reply = host.exchange(rom, rom.resend())
        assert reply.status is Status.ERR_CMD_INVALID  # the reset board's ROM wanted CONNECT, and ends
        assert station.board is not None
        assert any(event.get("cause") == "brown-out" for event in station.board.events)
        line.nreset()
        host.open_session(line.rom_host())


def test_operator_removes_finished_or_idle_boards_and_inserts_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOARDSIM_PROBES", str(tmp_path / "probes"))
    settings = ServeSettings(
        stations=1, state_dir=tmp_path / "state", boards_per_station=3, board_kind="objid", timing=False,
        operator=OperatorSettings(handling_delay_s=0.05, removal_delay_s=0.0, idle_removal_s=0.3),
    )  # fmt: skip
    simulator = Simulator(settings)
    station = simulator.stations[0]
    with start_blocking_portal() as portal:
        portal.start_task_soon(simulator.run)
        deadline = time.monotonic() + 10
        while len(station.done) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        first = station.done[0]
        assert station.board is None or station.board.uid_text != first  # idle board taken out
        while station.board is None:
            time.sleep(0.02)
        station.board.booted = "application"  # as after DL_FINISH
        while len(station.done) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert portal.call(simulator.command, {"op": "remove", "station": "station-01"}) == {"ok": True}
        assert portal.call(simulator.command, {"op": "insert", "station": "station-01", "kind": "half"}) == {
            "ok": True
        }
        assert station.board is not None
        assert station.board.bootloader_valid is True  # a half-provisioned board carries a valid bootloader
        assert station.board.obj_id() is None
        with pytest.raises(ValueError, match="unknown fault 'nonsense'"):
            portal.call(simulator.command, {"op": "faults", "station": "station-01", "set": {"nonsense": 1}})
        portal.call(portal.stop, True)
    removed = [json.loads(p.read_text()) for p in (tmp_path / "state").glob("*/state.json")]
    assert sum(1 for s in removed if s["obj_id"] is not None) >= 2  # "objid" boards carry an OBJ_ID record
