"""Serves one simulated probe's CMSIS-DAP packets on a Unix socket, with the link's timing."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from boardsim.dap import DapProbe
from boardsim.deadline import Deadline
from boardsim.links import FRAME, frame

SWD_CLOCKS_PER_TRANSFER = 46  # request 8, turnaround and ack 5, data and parity 33


@dataclass(frozen=True, slots=True)
class LinkTiming:
    """USB round trip of one CMSIS-DAP packet; SWD time follows from the probe's SWD clock."""

    usb_round_trip: float = 0.0

    def delay(self, probe: DapProbe, transfers: int) -> float:
        if not self.usb_round_trip:
            return 0.0
        return self.usb_round_trip + transfers * SWD_CLOCKS_PER_TRANSFER / probe.swd_clock_hz


class ProbeServer:
    """Accepts pyOCD's connections to one probe; ``unplug`` drops them all, as pulling the USB does."""

    def __init__(self, probe: DapProbe, path: Path, timing: LinkTiming | None = None) -> None:
        self.probe = probe
        self.path = path
        self.timing = timing or LinkTiming()
        self.plugged = True
        self.packets = 0
        self._connections: set[SocketStream] = set()

    def __repr__(self) -> str:
        return f"<ProbeServer {self.probe.serial} plugged={self.plugged} packets={self.packets}>"

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.path.unlink(missing_ok=True)
        listener = await anyio.create_unix_listener(self.path)
        async with listener:
            task_status.started()
            await listener.serve(self._connection)

    async def unplug(self) -> None:
        self.plugged = False
        for connection in list(self._connections):
            await connection.aclose()

    def plug(self) -> None:
        self.plugged = True

    async def _connection(self, stream: SocketStream) -> None:
        if not self.plugged:
            await stream.aclose()
            return
        self._connections.add(stream)
        reader = BufferedByteReceiveStream(stream)
        deadline = Deadline()
        try:
            while True:
                (length,) = FRAME.unpack(await reader.receive_exactly(FRAME.size))
                received = time.monotonic()
                packet = await reader.receive_exactly(length)
                before = self.probe.port.transfers
                response = self.probe.process(packet)
                self.packets += 1
                delay = self.timing.delay(self.probe, self.probe.port.transfers - before)
                if delay:  # the answer leaves when the real probe's would, to the microsecond
                    await deadline.wait_until(received + delay)
                await stream.send(frame(response))
        except (
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.ClosedResourceError,
            anyio.BrokenResourceError,
        ):
            pass
        finally:
            deadline.close()
            self._connections.discard(stream)
            await stream.aclose()
