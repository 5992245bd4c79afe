"""SecureISP packets: 64 bytes, little-endian.

    0-1   CRC-16/CCITT-FALSE over the plaintext bytes 2..55
    2-3   command id
    4-5   packet id
    6-7   valid length of the data field (0..48)
    8-55  data (48 bytes; AES-256-CFB128 encrypted once the session has a key)
    56-59 CRC-32 over bytes 0..55 as sent
    60-63 reserved (sent as zero, ignored on receipt, as Nuvoton's handler does)

Building: CRC-16 over the plaintext, encrypt the data, CRC-32 over the result. Receiving: the reverse.
The IV is the session's and is the same for every packet (a known weakness; docs/protocols.md).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.modes import CFB  # CFB128: Nuvoton's mode, kept for the wire
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from nuwire.crc import crc16_ccitt_false, crc32
from nuwire.errors import ProtocolError

PACKET_SIZE = 64
DATA_SIZE = 48
_HEAD = struct.Struct("<HHHH")
_TAIL = struct.Struct("<II")


class SessionCipher:
    """AES-256-CFB128 of one packet's 48 data bytes, restarted at the session IV for each packet."""

    __slots__ = ("_iv", "_key")

    def __init__(self, key: bytes, iv: bytes) -> None:
        if len(key) != 32:
            raise ProtocolError("session key length", 32, len(key))
        if len(iv) != 16:
            raise ProtocolError("session IV length", 16, len(iv))
        self._key = key
        self._iv = iv

    def __repr__(self) -> str:
        return "<SessionCipher AES-256-CFB128 key=<hidden>>"

    def encrypt(self, data: bytes) -> bytes:
        encryptor = Cipher(algorithms.AES(self._key), CFB(self._iv)).encryptor()
        return encryptor.update(data) + encryptor.finalize()

    def decrypt(self, data: bytes) -> bytes:
        decryptor = Cipher(algorithms.AES(self._key), CFB(self._iv)).decryptor()
        return decryptor.update(data) + decryptor.finalize()


@dataclass(frozen=True, slots=True)
class Packet:
    """One packet's plaintext content. ``data`` holds the ``length`` valid bytes."""

    command: int
    packet_id: int
    data: bytes = b""

    def __post_init__(self) -> None:
        for name, value in (("command", self.command), ("packet_id", self.packet_id)):
            if not 0 <= value <= 0xFFFF:
                raise ProtocolError(name, "0..0xFFFF", value)
        if len(self.data) > DATA_SIZE:
            raise ProtocolError("length", f"<= {DATA_SIZE}", len(self.data))

    def word(self, index: int) -> int:
        """Data word ``index`` (little-endian u32), zero past the valid length."""
        chunk = self.data[4 * index : 4 * index + 4].ljust(4, b"\0")
        return int.from_bytes(chunk, "little")


def encode(packet: Packet, cipher: SessionCipher | None) -> bytes:
    """The 64 bytes on the wire for ``packet``; the data is encrypted when ``cipher`` is given."""
    body = _HEAD.pack(0, packet.command, packet.packet_id, len(packet.data))[2:]
    body += packet.data.ljust(DATA_SIZE, b"\0")
    crc16 = crc16_ccitt_false(body)
    if cipher is not None:
        body = body[:6] + cipher.encrypt(body[6:])
    sent = crc16.to_bytes(2, "little") + body
    return sent + _TAIL.pack(crc32(sent), 0)


def peek_command(raw: bytes) -> int:
    """The command id of a raw packet, read before any check (RESYNC is honoured this way)."""
    _check_size(raw)
    return int.from_bytes(raw[2:4], "little")


def decode(raw: bytes, cipher: SessionCipher | None) -> Packet:
    """Check and decode one raw packet; raise ProtocolError naming the first bad field."""
    _check_size(raw)
    sent_crc32, _reserved = _TAIL.unpack_from(raw, 56)
    actual_crc32 = crc32(raw[:56])
    if sent_crc32 != actual_crc32:
        raise ProtocolError("crc32", actual_crc32, sent_crc32, "packet corrupted in transit")
    crc16, command, packet_id, length = _HEAD.unpack_from(raw)
    data = raw[8:56] if cipher is None else cipher.decrypt(raw[8:56])
    actual_crc16 = crc16_ccitt_false(raw[2:8] + data)
    if crc16 != actual_crc16:
        raise ProtocolError("crc16", actual_crc16, crc16, "wrong key or corrupted plaintext")
    if length > DATA_SIZE:
        raise ProtocolError("length", f"<= {DATA_SIZE}", length)
    return Packet(command, packet_id, data[:length])


def _check_size(raw: bytes) -> None:
    if len(raw) != PACKET_SIZE:
        raise ProtocolError("packet size", PACKET_SIZE, len(raw))


class PacketAssembler:
    """Cuts a byte stream into 64-byte packets.

    SecureISP has no start marker: a UART receiver realigns by dropping a partial packet after an
    idle gap. The driver owns the clock and calls :meth:`reset` on such a gap; this class only counts.
    """

    __slots__ = ("_buffer", "dropped_bytes")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.dropped_bytes = 0

    def __repr__(self) -> str:
        return f"<PacketAssembler pending={len(self._buffer)} dropped={self.dropped_bytes}>"

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        whole = len(self._buffer) - len(self._buffer) % PACKET_SIZE
        packets = [bytes(self._buffer[i : i + PACKET_SIZE]) for i in range(0, whole, PACKET_SIZE)]
        del self._buffer[:whole]
        return packets

    def reset(self) -> None:
        self.dropped_bytes += len(self._buffer)
        self._buffer.clear()
