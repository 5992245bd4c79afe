"""SecureISP sessions for both roles, as pure state machines over 64-byte packets.

Host: ``connect()`` and ``key_exchange()`` give the packets of the handshake, ``send(request)`` one
command, ``receive(raw)`` checks the answer and moves the session. It is stop-and-wait: one request
is outstanding; ``resend()`` gives the same bytes again after a lost packet, ``resync()`` restarts.

Target: ``handle(raw)`` answers every packet. A byte-identical repeat of the last request gets the
cached answer without doing the work twice, so a host that resends after a lost answer never
programs anything twice. Commands that touch the board go to a :class:`Backend`.

Key exchange (docs/protocols.md): round 1 with static keys (the host must already know the target's
static public key; the target may hold a list of trusted host keys), round 2 with fresh random keys
under the round-1 key. Coordinates travel big-endian. The AES-256 key is the raw shared secret
(wire-compatible) or, with ``Kdf.HKDF_SHA256`` on both sides, HKDF of it salted with the IV.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from nuwire.errors import ProtocolError, TransitionError
from nuwire.keys import public_key_from_raw, raw_public_key
from nuwire.secureisp.commands import Command, Status
from nuwire.secureisp.messages import (
    REQUESTS,
    ConnectInfo,
    DlBegin,
    MassWrite,
    Reply,
    Request,
    SetMassWrite,
)
from nuwire.secureisp.packet import DATA_SIZE, Packet, SessionCipher, decode, encode, peek_command
from nuwire.secureisp.states import KEY_EXCHANGE, KEY_EXCHANGE_PHASES, Phase, Role, next_phase

KeyFactory = Callable[[], ec.EllipticCurvePrivateKey]
T = TypeVar("T")
HKDF_INFO = b"nuprov SecureISP session key v1"


class Kdf(Enum):
    RAW = "raw"
    HKDF_SHA256 = "hkdf-sha256"


def _present(value: T | None, what: str) -> T:
    """``value``, which the session table guarantees at this point; TransitionError otherwise."""
    if value is None:
        raise TransitionError(what, "present", "missing")
    return value


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def session_cipher(
    private: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey, iv: bytes, kdf: Kdf
) -> SessionCipher:
    secret = private.exchange(ec.ECDH(), peer)
    if kdf is Kdf.HKDF_SHA256:
        secret = HKDF(SHA256(), 32, salt=iv, info=HKDF_INFO).derive(secret)
    return SessionCipher(secret, iv)


_ECDH_NEXT = {phase: command for phase, command, _ in KEY_EXCHANGE}


@dataclass(slots=True)
class _Pending:
    command: int
    packet_id: int
    raw: bytes
    cipher: SessionCipher | None


class HostSession:
    """The station's side of one SecureISP session with a board's ROM or bootloader."""

    def __init__(
        self,
        role: Role,
        static_key: ec.EllipticCurvePrivateKey,
        target_static_key: ec.EllipticCurvePublicKey,
        *,
        kdf: Kdf = Kdf.RAW,
        iv: bytes = bytes(16),
        random_key: KeyFactory = new_key,
    ) -> None:
        if len(iv) != 16:
            raise ProtocolError("IV length", 16, len(iv))
        self.role = role
        self.phase = Phase.IDLE
        self.connect_info: ConnectInfo | None = None
        self._static = static_key
        self._target_static = raw_public_key(target_static_key)
        self._kdf = kdf
        self._iv = iv
        self._random_key = random_key
        self._random: ec.EllipticCurvePrivateKey | None = None
        self._target_random_x = b""
        self._cipher: SessionCipher | None = None
        self._pending: _Pending | None = None

    def __repr__(self) -> str:
        pending = f" pending=0x{self._pending.command:X}" if self._pending else ""
        return f"<HostSession {self.role.value} phase={self.phase.value}{pending}>"

    @property
    def encrypted(self) -> bool:
        return self._cipher is not None

    def connect(self) -> bytes:
        return self._send(Command.CONNECT, 0, self._iv)

    def key_exchange(self) -> bytes:
        """The next packet of the ECDH handshake; TransitionError when the handshake is not due."""
        command = _ECDH_NEXT.get(self.phase)
        if command is None or command is Command.CONNECT:
            raise TransitionError("phase", "a key-exchange phase", self.phase.value)
        if command is Command.ECDH_RAND_PUB0:
            self._random = self._random_key()
        data = {
            Command.ECDH_PUB0: lambda: raw_public_key(self._static.public_key())[:32],
            Command.ECDH_PUB1: lambda: raw_public_key(self._static.public_key())[32:],
            Command.ECDH_RAND_PUB0: lambda: self._random_raw()[:32],
            Command.ECDH_RAND_PUB1: lambda: self._random_raw()[32:],
        }.get(command, lambda: b"")()
        return self._send(command, 0, data)

    def disconnect(self) -> bytes:
        return self._send(Command.DISCONNECT, 0, b"")

    def send(self, request: Request) -> bytes:
        return self._send(request.COMMAND, request.packet_id, request.to_payload())

    def resend(self) -> bytes:
        if self._pending is None:
            raise TransitionError("resend", "an outstanding request", "none")
        return self._pending.raw

    def resync(self) -> bytes:
        """RESYNC in plaintext: legal in every phase; the session restarts when it is answered."""
        self._pending = None
        return self._send(Command.RESYNC, 0, b"", plaintext=True)

    def receive(self, raw: bytes) -> Reply:
        """Check the answer to the outstanding request and move the session.

        A corrupted or stale answer raises ProtocolError and changes nothing (the request stays
        outstanding: resend it). ERR_CMD_CHECKSUM also leaves it outstanding: the target saw a
        corrupted request. Any other refusal ends the request; during the key exchange it fails
        the session until RESYNC.
        """
        pending = self._pending
        if pending is None:
            raise ProtocolError("reply", "no reply (nothing outstanding)", peek_command(raw))
        packet = decode(raw, pending.cipher)
        if (packet.command, packet.packet_id) != (pending.command, pending.packet_id):
            raise ProtocolError(
                "reply command/packet id",
                (pending.command, pending.packet_id),
                (packet.command, packet.packet_id),
                "stale or foreign reply",
            )
        reply = Reply.from_data(packet.command, packet.packet_id, packet.data)
        if reply.status == Status.ERR_CMD_CHECKSUM:
            return reply
        self._pending = None
        after = next_phase(self.role, self.phase, pending.command)
        if not reply.ok or after is None:
            if self.phase in KEY_EXCHANGE_PHASES:
                self._fail()
            return reply
        self._accept(Command(pending.command), reply)
        self.phase = after
        if after is Phase.IDLE:
            self._cipher = None
        return reply

    def _accept(self, command: Command, reply: Reply) -> None:
        if command is Command.CONNECT:
            info = ConnectInfo.from_payload(reply.payload)
            self.connect_info = info
            self._iv = info.iv
        elif command is Command.ECDH_PUB1:
            peer = public_key_from_raw(self._target_static, "target static key")
            self._cipher = session_cipher(self._static, peer, self._iv, self._kdf)
        elif command in (Command.ECDH_GET_PUB0, Command.ECDH_GET_PUB1):
            half = slice(0, 32) if command is Command.ECDH_GET_PUB0 else slice(32, 64)
            if reply.payload != self._target_static[half]:
                self._fail()
                raise ProtocolError(
                    f"{command.name} target static key", self._target_static[half], reply.payload
                )
        elif command is Command.ECDH_GET_RAND_PUB0:
            self._target_random_x = _coordinate(reply.payload, command)
        elif command is Command.ECDH_GET_RAND_PUB1:
            raw = self._target_random_x + _coordinate(reply.payload, command)
            try:
                peer = public_key_from_raw(raw, "target random key")
            except ProtocolError:
                self._fail()
                raise
            random_key = _present(self._random, "host random key")
            self._cipher = session_cipher(random_key, peer, self._iv, self._kdf)
            self._random = None

    def _fail(self) -> None:
        self.phase = Phase.FAILED
        self._cipher = None
        self._random = None

    def _random_raw(self) -> bytes:
        return raw_public_key(_present(self._random, "host random key").public_key())

    def _send(self, command: int, packet_id: int, data: bytes, plaintext: bool = False) -> bytes:
        if command != Command.RESYNC:
            if self._pending is not None:
                raise TransitionError("outstanding request", "none", f"0x{self._pending.command:X}")
            if next_phase(self.role, self.phase, command) is None:
                raise TransitionError(f"command 0x{command:X} in phase", "a legal command", self.phase.value)
        use = None if plaintext else self._cipher
        raw = encode(Packet(command, packet_id, data), use)
        self._pending = _Pending(command, packet_id, raw, use)
        return raw


def _coordinate(payload: bytes, command: Command) -> bytes:
    if len(payload) != 32:
        raise ProtocolError(f"{command.name} reply length", 36, len(payload) + 4)
    return payload


@dataclass(frozen=True, slots=True)
class Outcome:
    """A backend's answer: a status and the bytes after the status word."""

    status: Status
    payload: bytes = b""


class Backend(Protocol):
    """What the target session needs from the board it runs on."""

    @property
    def pdid(self) -> int: ...

    def handle(self, request: Request) -> Outcome: ...


@dataclass(frozen=True, slots=True)
class TargetStatistics:
    packets: int
    duplicates: int
    malformed: int
    refused: int
    resyncs: int


@dataclass(frozen=True, slots=True)
class Handled:
    """What the target did with one packet: the answer to send and what it was about."""

    response: bytes
    command: int
    status: Status
    request: Request | None = None
    duplicate: bool = False


@dataclass(slots=True)
class _Counters:
    packets: int = 0
    duplicates: int = 0
    malformed: int = 0
    refused: int = 0
    resyncs: int = 0
    last: tuple[bytes, Handled] | None = field(default=None)


class TargetSession:
    """The board's side: the ROM's SecureISP or the bootloader's download, over one backend."""

    def __init__(
        self,
        role: Role,
        backend: Backend,
        static_key: ec.EllipticCurvePrivateKey,
        *,
        trusted_hosts: Collection[bytes] | None = None,
        kdf: Kdf = Kdf.RAW,
        random_key: KeyFactory = new_key,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.role = role
        self.phase = Phase.IDLE
        self._backend = backend
        self._static = static_key
        self._trusted = None if trusted_hosts is None else frozenset(trusted_hosts)
        self._kdf = kdf
        self._random_key = random_key
        self._random_bytes = random_bytes
        self._iv = bytes(16)
        self._cipher: SessionCipher | None = None
        self._next_cipher: SessionCipher | None = None
        self._host_x = b""
        self._host_key: ec.EllipticCurvePublicKey | None = None
        self._random_raw = b""
        self._window: tuple[int, int] | None = None
        self._n = _Counters()

    def __repr__(self) -> str:
        return f"<TargetSession {self.role.value} phase={self.phase.value} packets={self._n.packets}>"

    def statistics(self) -> TargetStatistics:
        n = self._n
        return TargetStatistics(n.packets, n.duplicates, n.malformed, n.refused, n.resyncs)

    def handle(self, raw: bytes) -> Handled:
        command = peek_command(raw)
        self._n.packets += 1
        if command == Command.RESYNC:
            self._n.resyncs += 1
            self._restart()
            return self._answer(command, 0, Status.OK, cipher=None)
        last = self._n.last
        if last is not None and last[0] == raw:
            self._n.duplicates += 1
            return Handled(last[1].response, last[1].command, last[1].status, last[1].request, duplicate=True)
        try:
            packet = decode(raw, self._cipher)
        except ProtocolError:
            self._n.malformed += 1
            packet_id = int.from_bytes(raw[4:6], "little")
            return self._answer(command, packet_id, Status.ERR_CMD_CHECKSUM, cipher=self._cipher)
        after = next_phase(self.role, self.phase, packet.command)
        if after is None:
            status = Status.ERR_CMD_CONNECT if self.phase is Phase.IDLE else Status.ERR_CMD_INVALID
            return self._done(raw, packet, status)
        if packet.command in _ECDH_COMMANDS or packet.command in (Command.CONNECT, Command.DISCONNECT):
            status, payload = self._session_command(Command(packet.command), packet.data)
            return self._done(raw, packet, status, payload, after=after)
        try:
            request = self._request(packet)
        except ProtocolError:
            return self._done(raw, packet, Status.ERR_PARAMETER)
        outcome = self._window_check(request) or self._backend.handle(request)
        if outcome.status == Status.OK and isinstance(request, SetMassWrite | DlBegin):
            self._window = (request.address, request.size if isinstance(request, DlBegin) else request.length)
        return self._done(raw, packet, outcome.status, outcome.payload, request=request, after=after)

    def _request(self, packet: Packet) -> Request:
        request = REQUESTS[Command(packet.command)].from_payload(packet.data)
        if isinstance(request, MassWrite):
            start = self._window[0] if self._window else 0
            request = MassWrite(packet.packet_id, request.data, start + packet.packet_id * DATA_SIZE)
        return request

    def _window_check(self, request: Request) -> Outcome | None:
        if not isinstance(request, MassWrite):
            return None
        if self._window is None:
            return Outcome(Status.ERR_CMD_INVALID)
        start, length = self._window
        if request.address + len(request.data) > start + -(-length // 4) * 4:  # last word padded
            return Outcome(Status.ERR_OVER_RANGE)
        return None

    def _session_command(self, command: Command, data: bytes) -> tuple[Status, bytes]:
        if command is Command.CONNECT:
            if len(data) != 16:
                return Status.ERR_PARAMETER, b""
            self._iv = data if any(data) else self._random_bytes(16)
            return Status.OK, ConnectInfo(self._backend.pdid, self._iv).to_payload()
        if command is Command.DISCONNECT:
            return Status.OK, b""
        if command in (Command.ECDH_PUB0, Command.ECDH_RAND_PUB0):
            if len(data) != 32:
                return Status.ERR_DH_ARGUMENT, b""
            self._host_x = data
            return Status.OK, b""
        if command in (Command.ECDH_PUB1, Command.ECDH_RAND_PUB1):
            return self._host_key_received(command, data)
        if command is Command.ECDH_GET_PUB0:
            return Status.OK, raw_public_key(self._static.public_key())[:32]
        if command is Command.ECDH_GET_PUB1:
            return Status.OK, raw_public_key(self._static.public_key())[32:]
        if command is Command.ECDH_GET_RAND_PUB0:
            host_key = _present(self._host_key, "host random key")
            mine = self._random_key()
            self._random_raw = raw_public_key(mine.public_key())
            self._next_cipher = session_cipher(mine, host_key, self._iv, self._kdf)
            return Status.OK, self._random_raw[:32]
        return Status.OK, self._random_raw[32:]  # ECDH_GET_RAND_PUB1

    def _host_key_received(self, command: Command, data: bytes) -> tuple[Status, bytes]:
        raw = self._host_x + data
        try:
            self._host_key = public_key_from_raw(raw, "host key")
        except ProtocolError:
            return Status.ERR_DH_KEY, b""
        if command is Command.ECDH_PUB1:
            if self._trusted is not None and raw not in self._trusted:
                return Status.ERR_DH_KEY, b""
            self._next_cipher = session_cipher(self._static, self._host_key, self._iv, self._kdf)
        return Status.OK, b""

    def _done(
        self,
        raw: bytes,
        packet: Packet,
        status: Status,
        payload: bytes = b"",
        *,
        request: Request | None = None,
        after: Phase | None = None,
    ) -> Handled:
        handled = self._answer(
            packet.command, packet.packet_id, status, payload, request=request, cipher=self._cipher
        )
        if status != Status.OK:
            self._n.refused += 1
            if after is not None and self.phase in KEY_EXCHANGE_PHASES:
                self._restart()
                self.phase = Phase.FAILED
        else:
            after = _present(after, "phase after an OK answer")
            if packet.command in (Command.ECDH_PUB1, Command.ECDH_GET_RAND_PUB1):
                self._cipher, self._next_cipher = self._next_cipher, None
            self.phase = after
            if after in (Phase.IDLE, Phase.CLOSED):
                self._restart(keep_phase=after is Phase.CLOSED)
        self._n.last = (raw, handled)
        return handled

    def _answer(
        self,
        command: int,
        packet_id: int,
        status: Status,
        payload: bytes = b"",
        *,
        request: Request | None = None,
        cipher: SessionCipher | None,
    ) -> Handled:
        data = Reply(command, packet_id, status, payload).to_data()
        response = encode(Packet(command, packet_id, data), cipher)
        return Handled(response, command, status, request)

    def _restart(self, keep_phase: bool = False) -> None:
        if not keep_phase:
            self.phase = Phase.IDLE
        self._cipher = self._next_cipher = None
        self._host_key = None
        self._host_x = self._random_raw = b""
        self._window = None
        self._n.last = None


_ECDH_COMMANDS = frozenset(command for _, command, _ in KEY_EXCHANGE) - {Command.CONNECT}
