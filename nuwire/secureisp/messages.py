"""Typed SecureISP requests and replies: each knows its command and its data-field layout.

Data fields are little-endian u32 words unless a row says bytes. Requests (host to target):

    GET_ID                -
    GET_VERSION           -
    READ_OTP              entry
    WRITE_OTP             entry, low word, high word
    ERASE                 address, page count
    WRITE                 address, byte count, data (<= 40 bytes)
    SET_MASS_WRITE        start address, total byte count
    MASS_WRITE            data (<= 48 bytes, whole words); address = start + packet id * 48
    RESET                 mode (0 chip, 1 system, 2 CPU)
    REBOOT_TO_BOOTLOADER  -
    DL_BEGIN              slot address, image size, SHA-256 of the image (32 bytes)
    DL_FINISH             -

Replies carry the status in word 0, then the rows below (only when the status is OK):

    CONNECT     PDID, IV (16 bytes), command mask, 0, 0
    GET_ID      PDID, UID0..2, UCID0..3, CID, 0
    GET_VERSION version
    READ_OTP    low word, high word
    DL_FINISH   bytes received
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from nuwire.errors import ProtocolError
from nuwire.secureisp.commands import Command, Status, status_of
from nuwire.secureisp.packet import DATA_SIZE

WRITE_MAX = 40


def _words(data: bytes, count: int, name: str) -> tuple[int, ...]:
    if len(data) != 4 * count:
        raise ProtocolError(f"{name} data length", 4 * count, len(data))
    return struct.unpack(f"<{count}I", data)


def _pack(*words: int) -> bytes:
    for word in words:
        if not 0 <= word <= 0xFFFFFFFF:
            raise ProtocolError("data word", "0..0xFFFFFFFF", word)
    return struct.pack(f"<{len(words)}I", *words)


@dataclass(frozen=True, slots=True)
class Request:
    """A command the target's backend carries out. ``packet_id`` is 0 except for MASS_WRITE."""

    COMMAND: ClassVar[Command]

    def to_payload(self) -> bytes:
        return b""

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        _words(data, 0, cls.COMMAND.name)
        return cls()

    @property
    def packet_id(self) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class GetId(Request):
    COMMAND = Command.GET_ID


@dataclass(frozen=True, slots=True)
class GetVersion(Request):
    COMMAND = Command.GET_VERSION


@dataclass(frozen=True, slots=True)
class RebootToBootloader(Request):
    COMMAND = Command.REBOOT_TO_BOOTLOADER


@dataclass(frozen=True, slots=True)
class DlFinish(Request):
    COMMAND = Command.DL_FINISH


@dataclass(frozen=True, slots=True)
class ReadOtp(Request):
    COMMAND = Command.READ_OTP
    entry: int

    def to_payload(self) -> bytes:
        return _pack(self.entry)

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        (entry,) = _words(data, 1, "READ_OTP")
        return cls(entry)


@dataclass(frozen=True, slots=True)
class WriteOtp(Request):
    COMMAND = Command.WRITE_OTP
    entry: int
    low: int
    high: int

    def to_payload(self) -> bytes:
        return _pack(self.entry, self.low, self.high)

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        return cls(*_words(data, 3, "WRITE_OTP"))


@dataclass(frozen=True, slots=True)
class Erase(Request):
    COMMAND = Command.ERASE
    address: int
    pages: int

    def to_payload(self) -> bytes:
        return _pack(self.address, self.pages)

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        return cls(*_words(data, 2, "ERASE"))


@dataclass(frozen=True, slots=True)
class Write(Request):
    COMMAND = Command.WRITE
    address: int
    data: bytes

    def __post_init__(self) -> None:
        if not 0 < len(self.data) <= WRITE_MAX or len(self.data) % 4:
            raise ProtocolError("WRITE byte count", f"4..{WRITE_MAX}, whole words", len(self.data))

    def to_payload(self) -> bytes:
        return _pack(self.address, len(self.data)) + self.data

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        if len(data) < 8:
            raise ProtocolError("WRITE data length", ">= 8", len(data))
        address, count = struct.unpack_from("<II", data)
        if count != len(data) - 8:
            raise ProtocolError("WRITE byte count", len(data) - 8, count)
        return cls(address, data[8:])


@dataclass(frozen=True, slots=True)
class SetMassWrite(Request):
    COMMAND = Command.SET_MASS_WRITE
    address: int
    length: int

    def to_payload(self) -> bytes:
        return _pack(self.address, self.length)

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        return cls(*_words(data, 2, "SET_MASS_WRITE"))


@dataclass(frozen=True, slots=True)
class MassWrite(Request):
    """One chunk of a mass write; the session fills in ``address`` on the target side."""

    COMMAND = Command.MASS_WRITE
    index: int
    data: bytes
    address: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.index <= 0xFFFF:
            raise ProtocolError("MASS_WRITE packet id", "0..0xFFFF", self.index)
        if not 0 < len(self.data) <= DATA_SIZE or len(self.data) % 4:
            raise ProtocolError("MASS_WRITE byte count", f"4..{DATA_SIZE}, whole words", len(self.data))

    @property
    def packet_id(self) -> int:
        return self.index

    def to_payload(self) -> bytes:
        return self.data

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        return cls(0, data)


@dataclass(frozen=True, slots=True)
class Reset(Request):
    COMMAND = Command.RESET
    mode: int = 0

    def __post_init__(self) -> None:
        if self.mode not in (0, 1, 2):
            raise ProtocolError("RESET mode", "0, 1 or 2", self.mode)

    def to_payload(self) -> bytes:
        return _pack(self.mode)

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        (mode,) = _words(data, 1, "RESET")
        return cls(mode)


@dataclass(frozen=True, slots=True)
class DlBegin(Request):
    COMMAND = Command.DL_BEGIN
    address: int
    size: int
    digest: bytes

    def __post_init__(self) -> None:
        if len(self.digest) != 32:
            raise ProtocolError("DL_BEGIN digest length", 32, len(self.digest))

    def to_payload(self) -> bytes:
        return _pack(self.address, self.size) + self.digest

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        if len(data) != 40:
            raise ProtocolError("DL_BEGIN data length", 40, len(data))
        address, size = struct.unpack_from("<II", data)
        return cls(address, size, data[8:])


REQUESTS: dict[Command, type[Request]] = {
    cls.COMMAND: cls
    for cls in (
        GetId,
        GetVersion,
        RebootToBootloader,
        DlFinish,
        ReadOtp,
        WriteOtp,
        Erase,
        Write,
        SetMassWrite,
        MassWrite,
        Reset,
        DlBegin,
    )
}


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded reply: the request's command and packet id, the status, the words after it."""

    command: int
    packet_id: int
    status: Status | int
    payload: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @classmethod
    def from_data(cls, command: int, packet_id: int, data: bytes) -> Reply:
        if len(data) < 4:
            raise ProtocolError("reply data length", ">= 4 (status word)", len(data))
        return cls(command, packet_id, status_of(int.from_bytes(data[:4], "little")), data[4:])

    def to_data(self) -> bytes:
        return _pack(int(self.status)) + self.payload


@dataclass(frozen=True, slots=True)
class ConnectInfo:
    pdid: int
    iv: bytes
    command_mask: int = 0

    def to_payload(self) -> bytes:
        return _pack(self.pdid) + self.iv + _pack(self.command_mask, 0, 0)

    @classmethod
    def from_payload(cls, data: bytes) -> ConnectInfo:
        if len(data) != 32:
            raise ProtocolError("CONNECT reply length", 32, len(data))
        pdid, mask = struct.unpack_from("<I", data)[0], struct.unpack_from("<I", data, 20)[0]
        return cls(pdid, data[4:20], mask)


@dataclass(frozen=True, slots=True)
class DeviceId:
    pdid: int
    uid: tuple[int, int, int]
    ucid: tuple[int, int, int, int]
    cid: int

    def to_payload(self) -> bytes:
        return _pack(self.pdid, *self.uid, *self.ucid, self.cid, 0)

    @classmethod
    def from_payload(cls, data: bytes) -> DeviceId:
        words = _words(data, 10, "GET_ID reply")
        return cls(
            words[0], (words[1], words[2], words[3]), (words[4], words[5], words[6], words[7]), words[8]
        )


@dataclass(frozen=True, slots=True)
class OtpValue:
    low: int
    high: int

    @property
    def blank(self) -> bool:
        return self.low == self.high == 0xFFFFFFFF

    def to_payload(self) -> bytes:
        return _pack(self.low, self.high)

    @classmethod
    def from_payload(cls, data: bytes) -> OtpValue:
        low, high = _words(data, 2, "READ_OTP reply")
        return cls(low, high)


def single_word(data: bytes, name: str) -> int:
    """The one word after the status in GET_VERSION and DL_FINISH replies."""
    (word,) = _words(data, 1, name)
    return word
