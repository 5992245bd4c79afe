"""Typed SecureISP requests and replies: each knows its command and its data-field layout.

Data fields are little-endian u32 words unless a row says bytes. Requests (host to target), with
the layout Nuvoton's CommandHandler.c reads (docs/protocols.md gives the source lines):

    GET_ID                -
    GET_VERSION           -
    READ_CONFIG           -
    DISCONNECT            -   (SecureISP ends; the target answers nothing more until reset)
    ERASE                 address, page count
    WRITE                 address, byte count, data (<= 40 bytes)
    SET_MASS_WRITE        start address, total byte count
    MASS_WRITE            data (<= 48 bytes, whole words); address = start + packet id * 48
    RESET                 mode (0 chip, 1 system, 2 CPU): the target resets, nothing answers
    VENDOR 0x8F00         0, sub-command, arguments:
      READ_OTP              entry
      WRITE_OTP             entry, low word, high word
      REBOOT_TO_BOOTLOADER  -   (the target resets into its bootloader, nothing answers)
      VERIFY_IMAGE          slot address

Replies carry the status in word 0, then the rows below (only when the status is OK):

    CONNECT     PDID, IV (16 bytes), command mask, 0, 0
    GET_ID      PDID, UID0..2, UCID0..3, CID, 0
    GET_VERSION version
    READ_CONFIG CONFIG0, FNSADDR, 0, APROM size, 0, CONFIG3, XOM status x5
    VENDOR      byte count, then:  READ_OTP entry, low, high;  VERIFY_IMAGE bytes checked
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from nuwire.errors import ProtocolError
from nuwire.secureisp.commands import Command, Status, Vendor, status_of
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
    """A command for the target. ``index`` is MASS_WRITE's packet id; the session numbers the rest.

    ``ANSWERED`` is False for requests the target carries out by resetting: nothing comes back.
    """

    COMMAND: ClassVar[Command]
    ANSWERED: ClassVar[bool] = True

    def to_payload(self) -> bytes:
        return b""

    @property
    def index(self) -> int | None:
        return None


@dataclass(frozen=True, slots=True)
class GetId(Request):
    COMMAND = Command.GET_ID


@dataclass(frozen=True, slots=True)
class GetVersion(Request):
    COMMAND = Command.GET_VERSION


@dataclass(frozen=True, slots=True)
class ReadConfig(Request):
    """CONFIG0 (word 0 after the status) is how the part says whether its debug port is locked."""

    COMMAND = Command.READ_CONFIG


@dataclass(frozen=True, slots=True)
class Disconnect(Request):
    """Ends SecureISP on Nuvoton's target; the bootloader then boots a verified application."""

    COMMAND = Command.DISCONNECT


@dataclass(frozen=True, slots=True)
class Erase(Request):
    COMMAND = Command.ERASE
    address: int
    pages: int

    def to_payload(self) -> bytes:
        return _pack(self.address, self.pages)


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


@dataclass(frozen=True, slots=True)
class SetMassWrite(Request):
    COMMAND = Command.SET_MASS_WRITE
    address: int
    length: int

    def to_payload(self) -> bytes:
        return _pack(self.address, self.length)


@dataclass(frozen=True, slots=True)
class MassWrite(Request):
    """One chunk of a mass write: the target writes it at start + ``chunk`` * 48."""

    COMMAND = Command.MASS_WRITE
    chunk: int
    data: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.chunk <= 0xFFFF:
            raise ProtocolError("MASS_WRITE packet id", "0..0xFFFF", self.chunk)
        if not 0 < len(self.data) <= DATA_SIZE or len(self.data) % 4:
            raise ProtocolError("MASS_WRITE byte count", f"4..{DATA_SIZE}, whole words", len(self.data))

    @property
    def index(self) -> int:
        return self.chunk

    def to_payload(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class Reset(Request):
    COMMAND = Command.RESET
    ANSWERED = False
    mode: int = 0

    def __post_init__(self) -> None:
        if self.mode not in (0, 1, 2):
            raise ProtocolError("RESET mode", "0, 1 or 2", self.mode)

    def to_payload(self) -> bytes:
        return _pack(self.mode)


@dataclass(frozen=True, slots=True)
class VendorRequest(Request):
    """A sub-command of VENDOR 0x8F00: word 0 reserved (0), word 1 the sub-command, then args."""

    COMMAND = Command.VENDOR
    SUB: ClassVar[Vendor]

    def arguments(self) -> tuple[int, ...]:
        return ()

    def to_payload(self) -> bytes:
        return _pack(0, self.SUB, *self.arguments())


@dataclass(frozen=True, slots=True)
class ReadOtp(VendorRequest):
    SUB = Vendor.READ_OTP
    entry: int

    def arguments(self) -> tuple[int, ...]:
        return (self.entry,)


@dataclass(frozen=True, slots=True)
class WriteOtp(VendorRequest):
    SUB = Vendor.WRITE_OTP
    entry: int
    low: int
    high: int

    def arguments(self) -> tuple[int, ...]:
        return (self.entry, self.low, self.high)


@dataclass(frozen=True, slots=True)
class RebootToBootloader(VendorRequest):
    SUB = Vendor.REBOOT_TO_BOOTLOADER
    ANSWERED = False


@dataclass(frozen=True, slots=True)
class VerifyImage(VendorRequest):
    SUB = Vendor.VERIFY_IMAGE
    address: int

    def arguments(self) -> tuple[int, ...]:
        return (self.address,)


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded reply: the request's command and packet id, the status, the bytes after it."""

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

    def vendor_data(self) -> bytes:
        """What follows the byte count of a vendor reply (word 1), checked against that count."""
        if len(self.payload) < 4:
            raise ProtocolError("vendor reply length", ">= 8 (status, byte count)", len(self.payload) + 4)
        count = int.from_bytes(self.payload[:4], "little")
        if count != len(self.payload) - 4:
            raise ProtocolError("vendor reply byte count", len(self.payload) - 4, count)
        return self.payload[4:]


def vendor_reply(status: Status | int, *words: int) -> bytes:
    """The data of a vendor reply: status, byte count, words (the target's side of the layout)."""
    return _pack(int(status), 4 * len(words), *words)


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
    """A READ_OTP answer: it names the entry, so an answer can never be taken for another's."""

    entry: int
    low: int
    high: int

    @property
    def blank(self) -> bool:
        return self.low == self.high == 0xFFFFFFFF

    @classmethod
    def from_reply(cls, reply: Reply, entry: int) -> OtpValue:
        value = cls(*_words(reply.vendor_data(), 3, "READ_OTP reply"))
        if value.entry != entry:
            raise ProtocolError("READ_OTP reply entry", entry, value.entry, "an answer for another entry")
        return value


def single_word(data: bytes, name: str) -> int:
    """The one word after the status (GET_VERSION) or the byte count (VERIFY_IMAGE)."""
    (word,) = _words(data, 1, name)
    return word
