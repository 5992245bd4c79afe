"""SecureISP over a station's serial port (pyserial-asyncio), stop-and-wait.

Each request is sent once and its answer awaited for ``timeout`` seconds; a late answer to an
earlier request (another packet id) is dropped and listening goes on. Nuvoton's target ends
SecureISP after a damaged or refused request and answers nothing more until the chip resets, so a
damaged, refused or missing answer is a :class:`SessionLost`: the caller pulses nRESET through the
probe and opens a new session (new IV, new ECDH). Only firmware known to keep its session
(``Firmware.keeps_session``) gets blind resends, and RESYNC, harmless to repeat, is resent while
a board comes out of reset.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import serial_asyncio

from nuwire.errors import ProtocolError, StaleReply
from nuwire.secureisp.messages import Reply, Request
from nuwire.secureisp.packet import PacketAssembler
from nuwire.secureisp.session import HostSession
from nuwire.secureisp.states import Phase
from orchestrator.errors import SessionLost, UartFailure

RESYNC_ATTEMPTS = 5


class UartPort(Protocol):
    """The station's ISP UART, opened for one group of exchanges (``async with``): SecureISP
    requests in a host session, each answer within the packet deadline (``uart.timeout_s``);
    a failure is a UartFailure (orchestrator/errors.py). :class:`UartLink` is the line's."""

    async def __aenter__(self) -> UartPort: ...
    async def __aexit__(self, *_: object) -> None: ...
    async def send(self, session: HostSession, request: Request) -> Reply | None:
        """The answer to ``request``, or None for one nothing answers (RESET, REBOOT_TO_BOOTLOADER)."""

    async def open_session(self, session: HostSession) -> None:
        """RESYNC, CONNECT and both ECDH rounds."""


class UartLink:
    def __init__(
        self,
        device: str,
        baud: int,
        *,
        timeout: float,
        attempts: int = 6,
        count: Callable[[str, int], None] | None = None,
    ) -> None:
        """``count(direction, n)`` hears of every n bytes sent ("tx") or received ("rx");
        ``attempts`` bounds the resends for firmware that keeps its session."""
        self.device, self.baud, self.timeout, self.attempts = device, baud, timeout, attempts
        self._reader: asyncio.StreamReader | None = None
        self._writer: Any = None
        self._assembler = PacketAssembler()
        self._count = count or (lambda *_: None)

    def __repr__(self) -> str:
        return f"<UartLink {self.device} {self.baud} baud open={self._reader is not None}>"

    async def __aenter__(self) -> UartLink:
        try:
            self._reader, self._writer = await serial_asyncio.open_serial_connection(
                url=self.device, baudrate=self.baud
            )
        except (OSError, ValueError) as error:  # pyserial's SerialException is an OSError
            raise UartFailure(f"UART {self.device} does not open: {error}", gone=True) from None
        with contextlib.suppress(OSError, AttributeError):  # bytes of an earlier session: not ours
            self._writer.transport.serial.reset_input_buffer()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def _packet(self) -> bytes:
        assert self._reader is not None  # noqa: S101  # used inside the context manager only
        while True:
            try:
                data = await self._reader.read(64)
            except OSError as error:  # the device went away (a USB adapter pulled, a pty closed)
                raise SessionLost(f"{self.device}: {error}") from None
            if not data:
                raise SessionLost(f"{self.device}: the device closed")
            self._count("rx", len(data))
            packets = self._assembler.feed(data)
            if packets:
                return packets[-1]

    async def _write(self, raw: bytes) -> None:
        try:
            self._writer.write(raw)
            await self._writer.drain()
        except OSError as error:
            raise SessionLost(f"{self.device}: {error}") from None
        self._count("tx", len(raw))

    async def send(self, session: HostSession, request: Request) -> Reply | None:
        """``request`` in ``session``: its answer, or None for a request nothing answers (the
        target resets: RESET, REBOOT_TO_BOOTLOADER)."""
        raw = session.send(request)
        if not request.ANSWERED:
            await self._write(raw)
            return None
        return await self.exchange(session, raw)

    async def exchange(self, session: HostSession, raw: bytes, *, attempts: int | None = None) -> Reply:
        tries = attempts or (self.attempts if session.firmware.keeps_session else 1)
        problem = "no answer"
        for attempt in range(tries):
            self._assembler.reset()  # stop-and-wait: a part packet pending now is an old answer's
            if attempt:
                raw = session.resend()
            await self._write(raw)
            with anyio.move_on_after(self.timeout):
                while True:
                    try:
                        reply = session.receive(await self._packet())
                    except StaleReply:
                        continue  # a late answer to an earlier request: keep listening
                    except ProtocolError as error:
                        if session.phase is Phase.FAILED:  # a wrong key: no resend can help
                            raise SessionLost(f"{self.device}: {error}") from error
                        problem = f"damaged answer ({error.field})"
                        break
                    if session.phase is Phase.FAILED:
                        raise SessionLost(f"{self.device}: the target ended SecureISP: {reply.status!r}")
                    return reply
        raise SessionLost(f"{self.device}: {problem} after {tries} tries")

    async def open_session(self, session: HostSession) -> None:
        """RESYNC, CONNECT and both ECDH rounds; the session key then lives in ``session`` only."""
        if not (await self.exchange(session, session.resync(), attempts=RESYNC_ATTEMPTS)).ok:
            raise SessionLost(f"{self.device}: RESYNC refused")
        reply = await self.exchange(session, session.connect())
        if not reply.ok:
            raise SessionLost(f"{self.device}: CONNECT refused: {reply.status!r}")
        while session.phase is not Phase.READY:
            reply = await self.exchange(session, session.key_exchange())
            if not reply.ok:
                raise SessionLost(f"{self.device}: key exchange refused: {reply.status!r}")
