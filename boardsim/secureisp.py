"""Nuvoton's SecureISP target, answer for answer, as a pure model (no I/O).

What runs on the board's UART is Nuvoton's SecureISP framework (M55M1BSP SecureISPDemo
ISPSource/SecureISP.c and CommandHandler.c, the handler M2354BSP ships compiled) with this project's
``Exec_VendorFunction`` (firmware/vendor.c; its Python twin is boardsim/vendor.py). This model
follows that code path by path, so that the host is tested against the behaviour of the real
target, quirks included (docs/boardsim.md; tests/boardsim/test_differential.py compares it with the
C code built in ../shared/nuvoton-ref):

- three stages: CONNECT (ParseCONNECT), the ECDH commands in any order (ParseECDH, ends at
  GET_RAND_PUB1), then commands (ParseCommands);
- RESYNC is honoured before any check, answered under the key in use, and restarts at stage 1;
- a damaged request (CRC-32 or CRC-16), an unknown command, a refused key and DISCONNECT are
  answered, and then SecureISP has ended: nothing answers until the chip resets;
- RESET and the vendor reboot reset the chip before any answer;
- the valid length is read as sent: CONNECT ignores it, WRITE takes its byte count from word 1,
  MASS_WRITE writes ``length`` bytes at start + packet id * 48;
- the static public key goes out as the firmware stores it (``Firmware.static_key_on_wire``);
- data bytes past the valid length are what CommandHandler.c leaves there (zeros after a
  ``memset``, the request's bytes where it does none).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from nuwire.crc import crc16_ccitt_false, crc32
from nuwire.errors import ProtocolError
from nuwire.keys import public_key_from_raw, raw_public_key
from nuwire.profiles import TargetProfile
from nuwire.secureisp.commands import Command, Status
from nuwire.secureisp.packet import PACKET_SIZE, SessionCipher
from nuwire.secureisp.session import Kdf, new_key, shared_key

LIB_VERSION = 0x23551171
"""CommandHandler.c LIB_VERSION; M2354BSP's compiled handler carries the same word."""
NS_OFFSET = 0x1000_0000
ERASED = 0xFFFFFFFF


class Chip(Protocol):
    """The part of the board that SecureISP and the vendor code reach through the BSP."""

    profile: TargetProfile

    @property
    def ids(self) -> tuple[tuple[int, int, int], tuple[int, int, int, int]]:
        """UID0..2 and UCID0..3."""
        ...

    def read_word(self, address: int) -> int | None:
        """FMC READ: the word, or None when ISPFF is set (no such address)."""
        ...

    def program_word(self, address: int, value: int) -> bool:
        """FMC PROGRAM (flash, or an OTP word); False when ISPFF is set."""
        ...

    def erase_page(self, address: int) -> bool: ...

    def blank(self, address: int, length: int) -> bool:
        """FMC READs of the words in ``length`` bytes from ``address`` all give 0xFFFFFFFF (a word
        with ISPFF set counts as blank, as the C code's read gives it)."""
        ...


VendorFunction = Callable[["Request"], "int | None"]
"""``Exec_VendorFunction``: edits ``request.data`` into the reply, returns its valid length
(0: refused), or None when it resets the chip (nothing answers)."""


@dataclass
class Request:
    """One received packet as CommandHandler.c holds it: the header and 48 data bytes."""

    command: int
    packet_id: int
    length: int
    data: bytearray

    def word(self, index: int) -> int:
        return int(struct.unpack_from("<I", self.data, 4 * index)[0])

    def set_word(self, index: int, value: int) -> None:
        struct.pack_into("<I", self.data, 4 * index, value & 0xFFFFFFFF)

    def clear(self) -> None:
        self.data[:] = bytes(48)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the target did with one packet: the 64 bytes it sent (None: silence), and why."""

    response: bytes | None
    command: int
    status: int | None = None
    reset: bool = False
    """The chip reset (RESET, or the vendor reboot): nothing was sent."""
    ended: bool = False
    """SecureISP returned after this answer: nothing more is answered until a reset."""


@dataclass
class TargetStatistics:
    packets: int = 0
    malformed: int = 0
    refused: int = 0
    resyncs: int = 0
    ignored: int = 0


@dataclass
class SecureIspTarget:
    """ExecuteSecureISP() on one chip, from its reset until the next."""

    chip: Chip
    static_key: ec.EllipticCurvePrivateKey
    vendor: VendorFunction
    kdf: Kdf = Kdf.RAW
    random_key: Callable[[], ec.EllipticCurvePrivateKey] = new_key
    random_bytes: Callable[[int], bytes] = os.urandom
    stage: int = 1
    ended: bool = False
    stats: TargetStatistics = field(default_factory=TargetStatistics)

    def __post_init__(self) -> None:
        self._server_pub = bytearray(64)  # g_ISPInfo.ServerPubKey: kept over RESYNC, not over a reset
        self._tmp0 = bytearray(32)  # g_ISPInfo.tmp0: the next AES key, then the mass-write window
        self._restart()

    def __repr__(self) -> str:
        return f"<SecureIspTarget stage={self.stage} ended={self.ended} key={self._cipher is not None}>"

    def _restart(self) -> None:
        """ExecuteSecureISP's loop after RESYNC: key and IV cleared, the static key set again."""
        self.stage = 1
        self._cipher: SessionCipher | None = None
        self._iv = bytes(16)
        self._client_pub = bytearray(
            self.chip.profile.firmware.static_key_on_wire(raw_public_key(self.static_key.public_key()))
        )
        self._random: ec.EllipticCurvePrivateKey | None = None

    # -- one packet ---------------------------------------------------------------------------

    def handle(self, raw: bytes) -> Answer:
        if len(raw) != PACKET_SIZE:
            raise ProtocolError("packet size", PACKET_SIZE, len(raw))
        command, packet_id, length = struct.unpack_from("<HHH", raw, 2)
        if self.ended:
            self.stats.ignored += 1
            return Answer(None, command)
        self.stats.packets += 1
        request = Request(command, packet_id, length, bytearray(raw[8:56]))
        if command == Command.RESYNC:  # plaintext, before any check
            self.stats.resyncs += 1
            request.set_word(0, Status.OK)
            request.length = 4
            answer = self._answer(request, Status.OK)
            self._restart()
            return answer
        if not self._parse(raw, request):
            self.stats.malformed += 1
            request.clear()
            request.set_word(0, Status.ERR_CMD_CHECKSUM)
            request.length = 4
            return self._answer(request, Status.ERR_CMD_CHECKSUM, end=True)
        stage = {1: self._stage1, 2: self._stage2, 3: self._stage3}[self.stage]
        return stage(request)

    def _parse(self, raw: bytes, request: Request) -> bool:
        """CMD_ParseReqPacket: CRC-32 of bytes 0..55, decrypt, CRC-16 of the plaintext 2..55."""
        if crc32(raw[:56]) != int.from_bytes(raw[56:60], "little"):
            return False
        if self._cipher is not None:
            request.data[:] = self._cipher.decrypt(bytes(request.data))
        return crc16_ccitt_false(raw[2:8] + bytes(request.data)) == int.from_bytes(raw[:2], "little")

    def _answer(self, request: Request, status: int, *, end: bool = False) -> Answer:
        """CMD_GenRspPacket: CRC-16 over the plaintext, AES over the 48 data bytes, CRC-32."""
        if status != Status.OK:
            self.stats.refused += 1
        head = struct.pack("<HHH", request.command, request.packet_id, request.length & 0xFFFF)
        plain = bytes(request.data)
        crc16 = crc16_ccitt_false(head + plain)
        body = plain if self._cipher is None else self._cipher.encrypt(plain)
        sent = crc16.to_bytes(2, "little") + head + body
        self.ended = self.ended or end
        return Answer(sent + struct.pack("<II", crc32(sent), 0), request.command, status, ended=end)

    def _reply(self, request: Request, status: int, *words: int, end: bool = False) -> Answer:
        """memset(data, 0), status and words, length 4 * (1 + words)."""
        request.clear()
        for index, word in enumerate((status, *words)):
            request.set_word(index, word)
        request.length = 4 * (1 + len(words))
        return self._answer(request, status, end=end)

    def _refuse(self, request: Request, status: int, *, end: bool) -> Answer:
        """A refusal without memset: the rest of the data is the request's."""
        request.set_word(0, status)
        request.length = 4
        return self._answer(request, status, end=end)

    # -- stage 1: ParseCONNECT ----------------------------------------------------------------

    def _stage1(self, request: Request) -> Answer:
        if request.command == Command.DISCONNECT:
            return self._reply(request, Status.OK, end=True)
        if request.command != Command.CONNECT:
            return self._refuse(request, Status.ERR_CMD_INVALID, end=True)
        iv = bytes(request.data[:16])
        self._iv = iv if any(iv) else self.random_bytes(16)
        self.stage = 2
        iv_words = struct.unpack("<4I", self._iv)
        return self._reply(request, Status.OK, self.chip.profile.pdid, *iv_words, 0, 0, 0)

    # -- stage 2: ParseECDH -------------------------------------------------------------------

    def _stage2(self, request: Request) -> Answer:
        c, data = request.command, bytes(request.data)
        if c == Command.DISCONNECT:
            return self._reply(request, Status.OK, end=True)
        if c in (Command.ECDH_PUB0, Command.ECDH_RAND_PUB0, Command.ECDH_PUB1, Command.ECDH_RAND_PUB1):
            at = 0 if c in (Command.ECDH_PUB0, Command.ECDH_RAND_PUB0) else 32
            n = min(request.length, 64 - at, 48)  # memcpy(ServerPubKey.au32KeyN, data, u16Len)
            self._server_pub[at : at + n] = data[:n]
            if c != Command.ECDH_PUB1:
                return self._reply(request, Status.OK)
            key = self._shared(self.static_key)
            if key is None:
                return self._refuse(request, Status.ERR_PARAMETER, end=True)
            answer = self._reply(request, Status.OK)
            self._cipher = SessionCipher(key, self._iv)  # the answer went out under the old key
            return answer
        if c in (Command.ECDH_GET_PUB0, Command.ECDH_GET_PUB1):
            at = 0 if c == Command.ECDH_GET_PUB0 else 32
            return self._reply(request, Status.OK, *struct.unpack("<8I", self._client_pub[at : at + 32]))
        if c == Command.ECDH_GET_RAND_PUB0:
            mine = self.random_key()
            key = self._shared(mine)
            if key is None:
                return self._refuse(request, Status.ERR_PARAMETER, end=True)
            self._tmp0[:] = key
            self._client_pub[:] = raw_public_key(mine.public_key())
            return self._reply(request, Status.OK, *struct.unpack("<8I", self._client_pub[:32]))
        if c == Command.ECDH_GET_RAND_PUB1:
            answer = self._reply(request, Status.OK, *struct.unpack("<8I", self._client_pub[32:]))
            key = bytes(self._tmp0)
            self._cipher = SessionCipher(key, self._iv) if any(key) else None
            self._tmp0[:] = bytes(32)
            self.stage = 3
            return answer
        return self._refuse(request, Status.ERR_CMD_INVALID, end=True)

    def _shared(self, private: ec.EllipticCurvePrivateKey) -> bytes | None:
        """The AES key from ECDH with the host's key as received; None off the curve."""
        try:
            peer = public_key_from_raw(bytes(self._server_pub), "host key")
        except ProtocolError:
            return None  # ECC_GenerateSecretZ fails on a point off the curve
        return shared_key(private, peer, self._iv, self.kdf)

    # -- stage 3: ParseCommands ---------------------------------------------------------------

    def _stage3(self, request: Request) -> Answer:  # noqa: PLR0912  # ParseCommands' switch
        c = request.command
        if c == Command.DISCONNECT:
            return self._reply(request, Status.OK, end=True)
        if c == Command.GET_VERSION:
            return self._reply(request, Status.OK, LIB_VERSION)
        if c == Command.ERASE:
            return self._reply(request, self._erase(request.word(0), request.word(1)))
        if c == Command.WRITE:
            address, size = request.word(0), request.word(1)
            return self._reply(request, self._write(address, size, bytes(request.data[8:])))
        if c == Command.SET_MASS_WRITE:
            address, size = request.word(0), request.word(1)
            status = self._valid_region(address, size)
            if status == Status.OK:
                struct.pack_into("<II", self._tmp0, 0, address, size)
            return self._reply(request, status)
        if c == Command.MASS_WRITE:
            start = int.from_bytes(self._tmp0[:4], "little")
            address = (start + request.packet_id * 48) & 0xFFFFFFFF
            return self._reply(request, self._write(address, request.length, bytes(request.data)))
        if c == Command.GET_ID:
            p = self.chip.profile
            uid, ucid = self.chip.ids
            return self._reply(request, Status.OK, p.pdid, *uid, *ucid, p.cid, 0)
        if c == Command.READ_CONFIG:
            config = self.chip.profile.config.base
            words = (self._read(config), 0, 0, self.chip.profile.aprom.size, 0, self._read(config + 12))
            return self._reply(request, Status.OK, *words, 0, 0, 0, 0, 0)
        if c == Command.RESET:
            if request.word(0) > 2:
                return self._refuse(request, Status.ERR_PARAMETER, end=False)
            return Answer(None, c, reset=True)
        if c == Command.VENDOR:
            if request.length < 4:
                return self._refuse(request, Status.ERR_PARAMETER, end=False)
            length = self.vendor(request)
            if length is None:
                return Answer(None, c, reset=True)
            if length == 0:
                return self._refuse(request, Status.ERR_PARAMETER, end=False)
            request.length = length & 0xFFFF
            return self._answer(request, request.word(0))
        if c == Command.IS_MASKED:
            return self._reply(request, Command.IS_MASKED)
        return self._refuse(request, Status.ERR_CMD_INVALID, end=True)

    def _read(self, address: int) -> int:
        value = self.chip.read_word(address)
        return ERASED if value is None else value

    def _valid_region(self, address: int, size: int) -> Status:
        """_IsValidFlashRegion: word-aligned, inside APROM or LDROM, no 32-bit wrap."""
        address &= ~NS_OFFSET
        if address % 4 or size % 4 or not size:
            return Status.ERR_INVALID_ADDRESS
        end = address + size
        for region in (self.chip.profile.aprom, self.chip.profile.ldrom):
            if region.base <= address < region.end:
                return Status.OK if end <= region.end and end <= 0xFFFFFFFF else Status.ERR_OVER_RANGE
        return Status.ERR_OVER_RANGE

    def _write(self, address: int, size: int, data: bytes) -> Status:
        """_WriteFlash: each word programmed, then read back."""
        status = self._valid_region(address, size)
        if status != Status.OK:
            return status
        address &= ~NS_OFFSET
        for offset in range(0, size, 4):
            word = int.from_bytes(data[offset : offset + 4], "little")
            if not self.chip.program_word(address + offset, word) or self._read(address + offset) != word:
                return Status.ERR_ISP_WRITE
        return Status.OK

    def _erase(self, address: int, count: int) -> Status:
        """_PageErase: page-aligned, inside APROM or LDROM, each page checked blank after."""
        address &= ~NS_OFFSET
        page = self.chip.profile.aprom.page_size
        if address % page or not count:
            return Status.ERR_PAGE_ALIGN
        for region in (self.chip.profile.aprom, self.chip.profile.ldrom):
            if region.base <= address < region.end:
                if count > region.size // page or address + count * page > region.end:
                    return Status.ERR_OVER_RANGE
                break
        else:
            return Status.ERR_OVER_RANGE
        for index in range(count):
            at = address + index * page
            if not self.chip.erase_page(at):
                return Status.ERR_ISP_ERASE
            if not self.chip.blank(at, page):  # the C code reads each word back
                return Status.ERR_ISP_ERASE
        return Status.OK
