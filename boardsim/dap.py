"""A NuLink3 as CMSIS-DAP sees it: DAP commands in, responses out, over an SWD port into a board.

The SW-DP has DPIDR, CTRL/STAT power-up handshakes, SELECT (AP, AP bank, DP bank), ABORT and RDBUFF;
one AHB MEM-AP (CSW, TAR, DRW, BD0..3, CFG, BASE, IDR) reaches the board's bus and the Cortex-M23
debug registers. A debug-locked board, a removed board or an unplugged probe answers nothing
(No-ACK), which pyOCD reports as "Target not detected"; an access the bus does not answer gives a
FAULT and a sticky error until ABORT clears it, as on hardware.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from boardsim.board import Board, BusFault
from boardsim.cortex import Core

ACK_OK, ACK_WAIT, ACK_FAULT, ACK_NONE = 1, 2, 4, 7
VALUE_MISMATCH = 0x10
DPIDR = 0x0BE12477  # ARMv8-M SW-DP, version 2
TARGETID = 0x00000477
AP_IDR = 0x04770025  # AHB5-AP
AP_BASE = 0xE00FF003
_AP_CONSTANTS = {0xF4: 0, 0xF8: AP_BASE, 0xFC: AP_IDR}  # CFG, BASE, IDR
CSW_DEVICE_EN, CSW_SDEVICE_EN = 1 << 6, 1 << 23
STICKYERR, STICKYCMP, STICKYORUN, WDATAERR = 1 << 5, 1 << 4, 1 << 1, 1 << 7
CAP_SWD = 0x01
PACKET_SIZE = 512
PACKET_COUNT = 4


@dataclass
class SwdPort:
    """The SW-DP and its MEM-AP, in front of one board (or none, when the fixture is empty)."""

    board: Board | None = None
    core: Core | None = None
    fault_rate: float = 0.0
    disconnected: bool = False
    """SWDIO/SWCLK lost (a loose cable): the DP answers nothing, as a locked part does; nRESET works."""
    lost_at_reset: bool = False
    """The link is lost at the board's next reset (a cable that drops when the board resets), until
    the next board is put in (the operator re-seats the cable)."""
    armed_at: int = 0
    rng: random.Random = field(default_factory=random.Random)
    ctrl_stat: int = 0
    select: int = 0
    csw: int = 0x03000052
    tar: int = 0
    rdbuff: int = 0
    transfers: int = 0

    def attach(self, board: Board | None, core: Core | None) -> None:
        if self.lost_at_reset and self.board is not None and self.board.resets > self.armed_at:
            self.lost_at_reset = False  # lost with the board taken out: the next one is seated anew
        self.board, self.core = board, core
        self.armed_at = board.resets if board is not None else 0
        self.ctrl_stat = self.select = self.tar = self.rdbuff = 0

    @property
    def answers(self) -> bool:
        if self.board is None or self.board.debug_locked or self.disconnected:
            return False
        return not (self.lost_at_reset and self.board.resets > self.armed_at)

    def dp_read(self, address: int) -> tuple[int, int]:
        if not self.answers:
            return ACK_NONE, 0
        bank = self.select & 0xF
        if address == 0x0:
            return ACK_OK, DPIDR
        if address == 0x4:
            if bank == 2:
                return ACK_OK, TARGETID
            if bank == 3:
                return ACK_OK, 1
            acks = (self.ctrl_stat & (1 << 30)) << 1 | (self.ctrl_stat & (1 << 28)) << 1
            return ACK_OK, self.ctrl_stat | acks
        if address == 0x8:
            return ACK_OK, self.rdbuff
        return ACK_OK, self.rdbuff  # RDBUFF

    def dp_write(self, address: int, value: int) -> int:
        if not self.answers:
            return ACK_NONE
        if address == 0x0:  # ABORT: STKCMPCLR, STKERRCLR, WDERRCLR, ORUNERRCLR
            for bit, flag in ((1, STICKYCMP), (2, STICKYERR), (3, WDATAERR), (4, STICKYORUN)):
                if value & (1 << bit):
                    self.ctrl_stat &= ~flag
        elif address == 0x4:
            sticky = self.ctrl_stat & (STICKYERR | STICKYCMP | STICKYORUN | WDATAERR)
            self.ctrl_stat = (value & ~(STICKYERR | STICKYCMP | STICKYORUN | WDATAERR)) | sticky
        elif address == 0x8:
            self.select = value
        return ACK_OK

    def _fault(self) -> int:
        self.ctrl_stat |= STICKYERR
        return ACK_FAULT

    def ap_read(self, address: int) -> tuple[int, int]:
        ack = self._ap_gate()
        if ack != ACK_OK:
            return ack, 0
        register = (self.select & 0xF0) | (address & 0xC)
        if self.select >> 24:
            return ACK_OK, 0  # no AP there: IDR reads 0
        if register == 0x0C or 0x10 <= register <= 0x1C:  # DRW, BD0-3: the bus
            try:
                value = self._memory(register, None)
            except BusFault:
                return self._fault(), 0
        elif register == 0x00:
            value = self.csw | CSW_DEVICE_EN | CSW_SDEVICE_EN
        elif register == 0x04:
            value = self.tar
        else:
            value = _AP_CONSTANTS.get(register, 0)
        self.rdbuff = value
        return ACK_OK, value

    def ap_write(self, address: int, value: int) -> int:
        ack = self._ap_gate()
        if ack != ACK_OK:
            return ack
        register = (self.select & 0xF0) | (address & 0xC)
        if self.select >> 24:
            return ACK_OK
        if register == 0x00:
            self.csw = value
        elif register == 0x04:
            self.tar = value
        elif register == 0x0C or 0x10 <= register <= 0x1C:
            try:
                self._memory(register, value)
            except BusFault:
                return self._fault()
        return ACK_OK

    def _ap_gate(self) -> int:
        if not self.answers:
            return ACK_NONE
        if self.ctrl_stat & STICKYERR:
            return ACK_FAULT
        if self.fault_rate and self.rng.random() < self.fault_rate:
            return self._fault()
        self.transfers += 1
        return ACK_OK

    def _memory(self, register: int, value: int | None) -> int:
        size = self.csw & 0x7
        address = self.tar if register == 0x0C else (self.tar & ~0xF) | (register & 0xC)
        if size > 2:
            raise BusFault(f"unsupported access size {size}")
        width = 1 << size
        word_address = address & ~3
        lane = (address & 3) * 8
        if value is None:
            result = self._bus_read(word_address)
        else:
            if width == 4:
                self._bus_write(word_address, value)
            else:
                mask = ((1 << (8 * width)) - 1) << lane
                old = self._bus_read(word_address)
                self._bus_write(word_address, (old & ~mask) | (value & mask))
            result = 0
        if register == 0x0C and self.csw & 0x30:
            self.tar = (self.tar + width) & 0xFFFFFFFF
        return result

    def block(self, request: int, count: int, data: bytes) -> bytes | None:
        """A DAP_TransferBlock of ``count`` word accesses to DRW carried out at once, exactly as
        one by one would (the transfer count, TAR, RDBUFF), when nothing can differ: no fault
        injection, word size with single auto-increment, all inside SRAM (reads and writes) or
        flash (reads). None: take the word-by-word path."""
        board = self.board
        if (
            board is None
            or request & 0x3D != 0x0D  # AP DRW, no value match
            or self.select & 0xFF0000F0
            or self.csw & 0x37 != 0x12
            or self.fault_rate
            or self.ctrl_stat & STICKYERR
            or not self.answers
        ):
            return None
        length = 4 * count
        if request & 2:
            found = board.read_block(self.tar, length)
            if found is None:
                return None
            self.rdbuff = int.from_bytes(found[-4:], "little") if found else self.rdbuff
        else:
            if len(data) < length or not board.write_sram(self.tar, data[:length]):
                return None
            found = b""
        self.transfers += count
        self.tar = (self.tar + length) & 0xFFFFFFFF
        return found

    def _bus_read(self, address: int) -> int:
        if self.board is None:
            raise BusFault("no board in the fixture")
        if address >= 0xE0000000 and self.core is not None:
            return self.core.read32(address)
        return self.board.read32(address)

    def _bus_write(self, address: int, value: int) -> None:
        if self.board is None:
            raise BusFault("no board in the fixture")
        if address >= 0xE0000000 and self.core is not None:
            self.core.write32(address, value)
        else:
            self.board.write32(address, value)


@dataclass
class DapProbe:
    """CMSIS-DAP v2 command processing for one probe (one station)."""

    serial: str
    port: SwdPort = field(default_factory=SwdPort)
    swd_clock_hz: int = 1_000_000
    reset_asserted: bool = False
    match_mask: int = 0xFFFFFFFF

    def info(self, ident: int) -> bytes:
        strings = {
            1: "Nuvoton", 2: "Nu-Link3 CMSIS-DAP (boardsim)", 3: self.serial, 4: "2.1.0",
            5: "Nuvoton", 6: "M2354KJFAE", 9: "3.00.7712r",
        }  # fmt: skip
        numbers = {0xF0: (CAP_SWD, 1), 0xF1: (1_000_000, 4), 0xFE: (PACKET_COUNT, 1), 0xFF: (PACKET_SIZE, 2)}
        if ident in strings:
            text = strings[ident].encode() + b"\0"
            return bytes([0x00, len(text)]) + text
        if ident in numbers:
            value, width = numbers[ident]
            return bytes([0x00, width]) + value.to_bytes(width, "little")
        return bytes([0x00, 0])

    def process(self, command: bytes) -> bytes:
        """One CMSIS-DAP request packet in, its response out."""
        if not command:
            return b"\xff"
        kind = command[0]
        if kind == 0x00:
            return self.info(command[1])
        if kind == 0x05:
            return self._transfer(command)
        if kind == 0x06:
            return self._transfer_block(command)
        if kind == 0x02:
            return bytes([0x02, 1])  # SWD
        if kind == 0x08:
            (value,) = struct.unpack_from("<I", command, 2)
            self.port.dp_write(0x0, value)
            return bytes([0x08, 0])
        if kind == 0x10:
            return self._pins(command)
        if kind == 0x11:
            (self.swd_clock_hz,) = struct.unpack_from("<I", command, 1)
            return bytes([0x11, 0])
        if kind == 0x0A:
            self._reset_board("DAP_ResetTarget")
            return bytes([0x0A, 0, 1])
        if kind in (0x01, 0x03, 0x04, 0x09, 0x12, 0x13):
            return bytes([kind, 0])
        return b"\xff"

    def _reset_board(self, why: str) -> None:
        if self.port.board is not None:
            self.port.board.reset(why)

    def _pins(self, command: bytes) -> bytes:
        value, select = command[1], command[2]
        if select & 0x80:
            asserted = not value & 0x80
            if self.reset_asserted and not asserted:
                self._reset_board("nRESET")
            self.reset_asserted = asserted
        pins = 0x02 | (0 if self.reset_asserted else 0x80)
        return bytes([0x10, pins])

    def _one(self, request: int, value: int) -> tuple[int, int | None]:
        ap, read, address = request & 1, request & 2, request & 0xC
        if read:
            ack, data = self.port.ap_read(address) if ap else self.port.dp_read(address)
            if ack == ACK_OK and request & 0x10 and data & self.match_mask != value & self.match_mask:
                return ACK_OK | VALUE_MISMATCH, None
            return ack, (None if request & 0x10 else data)
        if request & 0x20:
            self.match_mask = value
            return ACK_OK, None
        return (self.port.ap_write(address, value) if ap else self.port.dp_write(address, value)), None

    def _transfer(self, command: bytes) -> bytes:
        count, offset = command[2], 3
        done, ack, out = 0, ACK_OK, bytearray()
        for _ in range(count):
            request = command[offset]
            offset += 1
            value = 0
            if not request & 2 or request & 0x30:
                (value,) = struct.unpack_from("<I", command, offset)
                offset += 4
            ack, data = self._one(request, value)
            if ack != ACK_OK:
                break
            if data is not None:
                out += struct.pack("<I", data)
            done += 1
        return bytes([0x05, done, ack]) + bytes(out)

    def _transfer_block(self, command: bytes) -> bytes:
        (count,) = struct.unpack_from("<H", command, 2)
        request, offset = command[4], 5
        at_once = self.port.block(request, count, command[offset:]) if count else None
        if at_once is not None:
            return struct.pack("<BHB", 0x06, count, ACK_OK) + at_once
        done, ack, out = 0, ACK_OK, bytearray()
        for _ in range(count):
            if request & 2:
                ack, data = self._one(request, 0)
                if ack != ACK_OK:
                    break
                out += struct.pack("<I", data or 0)
            else:
                (value,) = struct.unpack_from("<I", command, offset)
                offset += 4
                ack, _ = self._one(request, value)
                if ack != ACK_OK:
                    break
            done += 1
        return struct.pack("<BHB", 0x06, done, ack) + bytes(out)
