"""SecureISP over a station's serial port (pyserial-asyncio), stop-and-wait with resends.

A lost or damaged answer is a timeout or a ProtocolError: the same 64 bytes go again, and the
target answers a repeat from its cache. A late answer to an earlier request is dropped. After the
resends a :class:`UartFailure` says the session is lost; the caller restarts it with RESYNC.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
import serial_asyncio

from nuwire.errors import ProtocolError
from nuwire.secureisp.commands import Status
from nuwire.secureisp.messages import Reply
from nuwire.secureisp.packet import PacketAssembler
from nuwire.secureisp.session import HostSession
from nuwire.secureisp.states import Phase


class UartFailure(Exception):
    retryable = True


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
        """``count(direction, n)`` hears of every n bytes sent ("tx") or received ("rx")."""
        self.device, self.baud, self.timeout, self.attempts = device, baud, timeout, attempts
        self._reader: asyncio.StreamReader | None = None
        self._writer: Any = None
        self._assembler = PacketAssembler()
        self._count = count or (lambda *_: None)

    def __repr__(self) -> str:
        return f"<UartLink {self.device} {self.baud} baud open={self._reader is not None}>"

    async def __aenter__(self) -> UartLink:
        self._reader, self._writer = await serial_asyncio.open_serial_connection(
            url=self.device, baudrate=self.baud
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def _packet(self) -> bytes:
        assert self._reader is not None  # noqa: S101  # used inside the context manager only
        while True:
            data = await self._reader.read(64)
            self._count("rx", len(data))
            packets = self._assembler.feed(data)
            if packets:
                return packets[-1]

    async def exchange(self, session: HostSession, raw: bytes) -> Reply:
        for _ in range(self.attempts):
            self._writer.write(raw)
            self._count("tx", len(raw))
            with anyio.move_on_after(self.timeout):
                while True:
                    answer = await self._packet()
                    try:
                        reply = session.receive(answer)
                    except ProtocolError as error:
                        if "stale" in error.detail:
                            continue  # a late answer to an earlier send: keep listening
                        break
                    if reply.status is not Status.ERR_CMD_CHECKSUM:
                        return reply
                    break
            self._assembler.reset()
            raw = session.resend()
        raise UartFailure(f"{self.device}: no valid answer after {self.attempts} tries")

    async def open_session(self, session: HostSession) -> None:
        """RESYNC, CONNECT and both ECDH rounds; the session key then lives in ``session`` only."""
        if not (await self.exchange(session, session.resync())).ok:
            raise UartFailure(f"{self.device}: RESYNC refused")
        reply = await self.exchange(session, session.connect())
        if not reply.ok:
            raise UartFailure(f"{self.device}: CONNECT refused: {reply.status!r}")
        while session.phase is not Phase.READY:
            reply = await self.exchange(session, session.key_exchange())
            if not reply.ok:
                raise UartFailure(f"{self.device}: key exchange refused: {reply.status!r}")
