"""The host's side of a SecureISP session, as a pure state machine over 64-byte packets.

``connect()`` and ``key_exchange()`` give the packets of the handshake, ``send(request)`` one
command, ``receive(raw)`` checks the answer and moves the session. It is stop-and-wait: one
request is outstanding, and each request has its own packet id within the session (MASS_WRITE's
id is its chunk number, the others count from 0x8000), so a late answer can never be taken for
another request's. ``resend()`` gives the same bytes again, for firmware known to keep its session
after an error (``Firmware.keeps_session``); Nuvoton's does not, and the caller resets the board.

Key exchange (docs/protocols.md): round 1 with static keys (the host must already know the target's
static public key, and checks the bytes the target's firmware sends for it: ``Firmware``), round 2
with fresh random keys under the round-1 key. Coordinates travel big-endian. The AES-256 key is the
raw shared secret (wire-compatible) or, with ``Kdf.HKDF_SHA256`` on both sides, HKDF of it salted
with the IV.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from nuwire.errors import ProtocolError, StaleReply, TransitionError
from nuwire.keys import public_key_from_raw, raw_public_key
from nuwire.secureisp.commands import Command, Status
from nuwire.secureisp.firmware import NUVOTON_DEMO, Firmware
from nuwire.secureisp.messages import ConnectInfo, Reply, Request
from nuwire.secureisp.packet import Packet, SessionCipher, decode, encode, peek_command
from nuwire.secureisp.states import KEY_EXCHANGE, KEY_EXCHANGE_PHASES, Phase, Role, next_phase

KeyFactory = Callable[[], ec.EllipticCurvePrivateKey]
T = TypeVar("T")
HKDF_INFO = b"nuprov SecureISP session key v1"
FIRST_PACKET_ID = 0x8000
"""Requests other than MASS_WRITE are numbered from here (MASS_WRITE ids are chunk numbers)."""
SESSION_ENDING = frozenset({Status.ERR_CMD_CHECKSUM, Status.ERR_CMD_INVALID})
"""Statuses after which Nuvoton's target has left SecureISP (CommandHandler.c: ret = -1)."""


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


def shared_key(
    private: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey, iv: bytes, kdf: Kdf
) -> bytes:
    """The AES-256 session key: the raw ECDH secret, or HKDF of it salted with the IV."""
    secret = private.exchange(ec.ECDH(), peer)
    if kdf is Kdf.HKDF_SHA256:
        secret = HKDF(SHA256(), 32, salt=iv, info=HKDF_INFO).derive(secret)
    return secret


def session_cipher(
    private: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey, iv: bytes, kdf: Kdf
) -> SessionCipher:
    return SessionCipher(shared_key(private, peer, iv, kdf), iv)


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
        firmware: Firmware = NUVOTON_DEMO,
        kdf: Kdf = Kdf.RAW,
        iv: bytes = bytes(16),
        random_key: KeyFactory = new_key,
    ) -> None:
        if len(iv) != 16:
            raise ProtocolError("IV length", 16, len(iv))
        self.role = role
        self.firmware = firmware
        self.phase = Phase.IDLE
        self.connect_info: ConnectInfo | None = None
        self._static = static_key
        self._target_static_raw = raw_public_key(target_static_key)
        self._target_static_sent = firmware.static_key_on_wire(self._target_static_raw)
        self._kdf = kdf
        self._iv = iv
        self._random_key = random_key
        self._random: ec.EllipticCurvePrivateKey | None = None
        self._target_random_x = b""
        self._cipher: SessionCipher | None = None
        self._pending: _Pending | None = None
        self._next_id = FIRST_PACKET_ID

    def __repr__(self) -> str:
        pending = f" pending=0x{self._pending.command:X}" if self._pending else ""
        return f"<HostSession {self.role.value} phase={self.phase.value}{pending}>"

    @property
    def encrypted(self) -> bool:
        return self._cipher is not None

    def connect(self) -> bytes:
        return self._send(Command.CONNECT, self._iv)

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
        return self._send(command, data)

    def disconnect(self) -> bytes:
        return self._send(Command.DISCONNECT, b"")

    def send(self, request: Request) -> bytes:
        """The packet for ``request``. A request nothing answers (``ANSWERED`` False: the target
        resets) closes the session at once and leaves nothing outstanding."""
        raw = self._send(request.COMMAND, request.to_payload(), request.index)
        if not request.ANSWERED:
            self._pending = None
            self.phase = Phase.CLOSED
            self._cipher = None
        return raw

    def resend(self) -> bytes:
        if self._pending is None:
            raise TransitionError("resend", "an outstanding request", "none")
        return self._pending.raw

    def resync(self) -> bytes:
        """RESYNC in plaintext, legal in every phase. A target that holds a key answers under it
        (CommandHandler.c encrypts every answer once it has a key), so the answer is checked
        under this session's key when it has one; a target left with a key this host does not
        hold (an earlier session) is recognised by the CRC-32 and the echoed ids alone."""
        packet_id = self._take_id()
        raw = encode(Packet(Command.RESYNC, packet_id, b""), None)
        self._pending = _Pending(Command.RESYNC, packet_id, raw, self._cipher)
        return raw

    def receive(self, raw: bytes) -> Reply:
        """Check the answer to the outstanding request and move the session.

        A corrupted or stale answer raises ProtocolError and changes nothing. ERR_CMD_CHECKSUM and
        ERR_CMD_INVALID mean the target has left SecureISP (FAILED); a refusal during the key
        exchange fails the session too. Other refusals end the request and keep the session.
        """
        pending = self._pending
        if pending is None:
            raise ProtocolError("reply", "no reply (nothing outstanding)", peek_command(raw))
        packet = self._decode(raw, pending)
        if (packet.command, packet.packet_id) != (pending.command, pending.packet_id):
            raise StaleReply(
                "reply command/packet id",
                (pending.command, pending.packet_id),
                (packet.command, packet.packet_id),
                "stale or foreign reply",
            )
        reply = Reply.from_data(packet.command, packet.packet_id, packet.data)
        self._pending = None
        after = next_phase(self.phase, pending.command)
        if not reply.ok or after is None:
            if self.phase in KEY_EXCHANGE_PHASES or reply.status in SESSION_ENDING:
                self._fail()
            return reply
        self._accept(Command(pending.command), reply)
        self.phase = after
        if after in (Phase.IDLE, Phase.CLOSED):
            self._cipher = None
        return reply

    def _decode(self, raw: bytes, pending: _Pending) -> Packet:
        if pending.command != Command.RESYNC:
            return decode(raw, pending.cipher)
        for cipher in (pending.cipher, None):
            try:
                return decode(raw, cipher)
            except ProtocolError as error:
                if error.field != "crc16":
                    raise
        # CRC-32 held and only the key was foreign: the target answered RESYNC and restarts.
        return Packet(peek_command(raw), int.from_bytes(raw[4:6], "little"), bytes(4))

    def _accept(self, command: Command, reply: Reply) -> None:
        if command is Command.CONNECT:
            info = ConnectInfo.from_payload(reply.payload)
            self.connect_info = info
            self._iv = info.iv
        elif command is Command.ECDH_PUB1:
            peer = public_key_from_raw(self._target_static_raw, "target static key")
            self._cipher = session_cipher(self._static, peer, self._iv, self._kdf)
        elif command in (Command.ECDH_GET_PUB0, Command.ECDH_GET_PUB1):
            half = slice(0, 32) if command is Command.ECDH_GET_PUB0 else slice(32, 64)
            if reply.payload != self._target_static_sent[half]:
                self._fail()
                raise ProtocolError(
                    f"{command.name} target static key",
                    self._target_static_sent[half],
                    reply.payload,
                    f"as {self.firmware.name} sends it",
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

    def _take_id(self) -> int:
        packet_id = self._next_id
        self._next_id = FIRST_PACKET_ID + (packet_id + 1 - FIRST_PACKET_ID) % FIRST_PACKET_ID
        return packet_id

    def _send(self, command: int, data: bytes, index: int | None = None) -> bytes:
        if self._pending is not None:
            raise TransitionError("outstanding request", "none", f"0x{self._pending.command:X}")
        if next_phase(self.phase, command) is None:
            raise TransitionError(f"command 0x{command:X} in phase", "a legal command", self.phase.value)
        packet_id = self._take_id() if index is None else index
        raw = encode(Packet(command, packet_id, data), self._cipher)
        self._pending = _Pending(command, packet_id, raw, self._cipher)
        return raw


def _coordinate(payload: bytes, command: Command) -> bytes:
    if len(payload) != 32:
        raise ProtocolError(f"{command.name} reply length", 36, len(payload) + 4)
    return payload
