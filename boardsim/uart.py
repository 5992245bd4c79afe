"""A board's UART as a real serial device: a pseudo-terminal whose slave side the station opens
with pyserial, as it would a NuLink3's virtual COM port.

Timing follows the wire: every byte costs 10 bit times at the baud rate in each direction, so a
64-byte request and its 64-byte answer take 1280 bit times plus what the target spends working.
Faults act on bytes as a noisy cable would: loss and corruption at a rate, in both directions.
"""

from __future__ import annotations

import errno
import os
import random
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from boardsim.deadline import Deadline
from boardsim.isp import BoardIsp
from nuwire.secureisp.packet import PACKET_SIZE, PacketAssembler, peek_command

IDLE_GAP_S = 0.05
"""A partial packet is dropped after this much silence (the receiver realigns)."""


@dataclass
class UartFaults:
    loss_rate: float = 0.0
    corrupt_rate: float = 0.0
    brownout_at_byte: int | None = None
    """Reset the board when this many bytes have arrived from the station since it was inserted."""
    brownout_at_command: int | None = None
    answer_lost_at_command: int | None = None
    """The board carries out the next packet with this command id, and its answer is lost (once)."""
    """Reset the board when a packet with this SecureISP command id arrives (once)."""
    slow_factor: float = 1.0
    rng: random.Random = field(default_factory=random.Random)

    def damage(self, data: bytes) -> bytes:
        if not (self.loss_rate or self.corrupt_rate):
            return data
        out = bytearray()
        for byte in data:
            if self.rng.random() < self.loss_rate:
                continue
            out.append(byte ^ (1 << self.rng.randrange(8)) if self.rng.random() < self.corrupt_rate else byte)
        return bytes(out)


@dataclass
class UartStatistics:
    bytes_in: int = 0
    bytes_out: int = 0
    packets: int = 0
    dropped_bytes: int = 0


class UartPort:
    """One station's serial device. ``isp`` gives what answers on it now (None: no board)."""

    def __init__(
        self, link: Path, baud: int, isp: Callable[[], BoardIsp | None], faults: UartFaults | None = None
    ) -> None:
        self._master, slave = os.openpty()
        tty.setraw(slave)
        self._slave = slave  # kept open so the device persists while stations come and go
        os.set_blocking(self._master, False)
        self.device = os.ttyname(slave)
        self.link = link
        link.unlink(missing_ok=True)
        link.symlink_to(self.device)
        self.baud = baud
        self.isp = isp
        self.faults = faults or UartFaults()
        self.stats = UartStatistics()
        self._assembler = PacketAssembler()
        self._deadline = Deadline()
        self.bytes_since_insert = 0

    def __repr__(self) -> str:
        return f"<UartPort {self.link.name} -> {self.device} baud={self.baud} packets={self.stats.packets}>"

    def byte_time(self) -> float:
        return 10.0 / self.baud

    def close(self) -> None:
        for fd in (self._master, self._slave):
            os.close(fd)
        self._deadline.close()
        self.link.unlink(missing_ok=True)

    def _read(self) -> bytes:
        try:
            return os.read(self._master, 4096)
        except BlockingIOError:
            return b""
        except OSError as error:
            if error.errno == errno.EIO:
                return b""
            raise

    async def serve(self) -> None:
        while True:
            if self._assembler.pending:
                with anyio.move_on_after(IDLE_GAP_S) as scope:
                    await anyio.wait_readable(self._master)
                if scope.cancelled_caught:
                    self.stats.dropped_bytes += self._assembler.pending
                    self._assembler.reset()
                    continue
            else:
                await anyio.wait_readable(self._master)
            data = self._read()
            if not data:
                await anyio.sleep(0.001)
                continue
            self.stats.bytes_in += len(data)
            for raw in self._assembler.feed(self.faults.damage(data)):
                await self._packet(raw)

    async def _packet(self, raw: bytes) -> None:
        isp = self.isp()
        if isp is None:
            return
        board = isp.board
        self.bytes_since_insert += PACKET_SIZE
        faults = self.faults
        at_byte = faults.brownout_at_byte is not None and self.bytes_since_insert >= faults.brownout_at_byte
        if at_byte or faults.brownout_at_command == peek_command(raw):
            faults.brownout_at_byte = faults.brownout_at_command = None
            board.reset("brown-out")
            return
        started = time.monotonic()
        handled = isp.handle(raw)
        if handled is None or handled.response is None:
            return
        if faults.answer_lost_at_command == handled.command:
            faults.answer_lost_at_command = None
            return
        self.stats.packets += 1
        work = (max(0.0, board.busy_until - board.clock()) + board.timing.aes_packet) * faults.slow_factor
        wire = 2 * PACKET_SIZE * self.byte_time()
        await self._deadline.wait_until(started + wire + work)  # not rounded up to a millisecond
        response = faults.damage(handled.response)
        os.write(self._master, response)
        self.stats.bytes_out += len(response)
