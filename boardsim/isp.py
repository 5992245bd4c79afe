"""The board's UART side: the ROM's SecureISP and the bootloader's encrypted download.

:class:`BoardIsp` owns the target session that answers on the UART for whatever the board is running
(ROM after a reset, bootloader after REBOOT_TO_BOOTLOADER, nothing once the application runs) and
applies what an answered command does to the board: a reset, the jump to the bootloader, the boot of
a verified application. Every refusal goes on the wire as a status and into the board's events with
its reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from boardsim.board import ERASED_WORD, Board
from nuwire import mcuboot
from nuwire.errors import ProtocolError
from nuwire.secureisp import messages as m
from nuwire.secureisp.commands import STATUS_MEANING, Command, Status
from nuwire.secureisp.packet import DATA_SIZE
from nuwire.secureisp.session import Handled, Kdf, Outcome, TargetSession
from nuwire.secureisp.states import KEY_EXCHANGE, Role

ROM_VERSION = 0x23541001
BOOTLOADER_VERSION = 0x0B100001
_ECDH_TIMED = frozenset({Command.ECDH_PUB1, Command.ECDH_GET_RAND_PUB0})
_ECDH_COMMANDS = frozenset(command for _, command, _ in KEY_EXCHANGE)


def _identity(board: Board, request: m.Request, version: int) -> Outcome | None:
    """GET_ID and GET_VERSION, answered alike by the ROM and the bootloader."""
    if isinstance(request, m.GetId):
        p = board.profile
        return Outcome(Status.OK, m.DeviceId(p.pdid, board.uid, board.ucid, p.cid).to_payload())
    if isinstance(request, m.GetVersion):
        return Outcome(Status.OK, version.to_bytes(4, "little"))
    return None


def _program_and_verify(board: Board, address: int, data: bytes) -> bool:
    for offset in range(0, len(data), 4):
        word = int.from_bytes(data[offset : offset + 4], "little")
        if not board.program_flash_word(address + offset, word):
            return False
        if board.flash_read(address + offset, 4) != data[offset : offset + 4]:
            return False
    return True


@dataclass
class RomBackend:
    """SecureISP commands as the ROM carries them out on the board."""

    board: Board

    @property
    def pdid(self) -> int:
        return self.board.profile.pdid

    def handle(self, request: m.Request) -> Outcome:
        board = self.board
        identity = _identity(board, request, ROM_VERSION)
        if identity is not None:
            return identity
        if isinstance(request, m.ReadOtp):
            if not 0 <= request.entry < board.profile.otp.entries:
                return Outcome(Status.ERR_OVER_RANGE)
            return Outcome(Status.OK, m.OtpValue(*board.otp_entry(request.entry)).to_payload())
        if isinstance(request, m.WriteOtp):
            return self._write_otp(request)
        if isinstance(request, m.Erase):
            return self._erase(request)
        if isinstance(request, m.Write | m.MassWrite):
            if not self._writable(request.address, len(request.data)):
                return Outcome(Status.ERR_OVER_RANGE)
            ok = _program_and_verify(board, request.address, request.data)
            return Outcome(Status.OK if ok else Status.ERR_ISP_WRITE)
        if isinstance(request, m.SetMassWrite):
            if request.address % 4 or request.length % 4 or not request.length:
                return Outcome(Status.ERR_INVALID_ADDRESS)
            ok = self._writable(request.address, request.length)
            return Outcome(Status.OK if ok else Status.ERR_OVER_RANGE)
        if isinstance(request, m.RebootToBootloader):
            return Outcome(Status.OK if board.bootloader_valid else Status.ERR_NO_BOOTLOADER)
        return Outcome(Status.OK)  # RESET: carried out after the answer

    def _writable(self, address: int, length: int) -> bool:
        p = self.board.profile
        return p.aprom.contains(address, length) or p.ldrom.contains(address, length)

    def _write_otp(self, request: m.WriteOtp) -> Outcome:
        board = self.board
        if not 0 <= request.entry < board.profile.otp.entries:
            return Outcome(Status.ERR_OVER_RANGE)
        if board.otp_entry(request.entry) != (ERASED_WORD, ERASED_WORD):
            return Outcome(Status.ERR_ISP_WRITE)  # never a second program of an OTP word
        address = board.profile.otp.entry_address(request.entry)
        ok = board.program_otp_word(address, request.low) and board.program_otp_word(
            address + 4, request.high
        )
        ok = ok and board.otp_entry(request.entry) == (request.low, request.high)
        return Outcome(Status.OK if ok else Status.ERR_ISP_WRITE)

    def _erase(self, request: m.Erase) -> Outcome:
        p = self.board.profile
        page = p.aprom.page_size
        if request.address % page or not request.pages:
            return Outcome(Status.ERR_PAGE_ALIGN)
        if not self._writable(request.address, request.pages * page):
            return Outcome(Status.ERR_OVER_RANGE)
        for index in range(request.pages):
            if not self.board.erase_page(request.address + index * page):
                return Outcome(Status.ERR_ISP_ERASE)  # pragma: no cover - guarded by _writable
        return Outcome(Status.OK)


@dataclass
class BootloaderBackend:
    """The bootloader's encrypted download into the application slot, verified before it boots."""

    board: Board
    size: int = 0
    digest: bytes = b""
    written: set[int] = field(default_factory=set)
    reason: str = ""

    @property
    def pdid(self) -> int:
        return self.board.profile.pdid

    def handle(self, request: m.Request) -> Outcome:
        board = self.board
        slot = board.profile.application_slot
        identity = _identity(board, request, BOOTLOADER_VERSION)
        if identity is not None:
            return identity
        if isinstance(request, m.DlBegin):
            return self._begin(request)
        if isinstance(request, m.MassWrite):
            if not _program_and_verify(board, request.address, request.data):
                return self._refuse(Status.ERR_ISP_WRITE, f"program failed at 0x{request.address:08X}")
            self.written.add((request.address - slot.base) // DATA_SIZE)
            return Outcome(Status.OK)
        if isinstance(request, m.DlFinish):
            return self._finish()
        return Outcome(Status.OK)  # RESET

    def _refuse(self, status: Status, reason: str) -> Outcome:
        self.reason = reason
        return Outcome(status)

    def _begin(self, request: m.DlBegin) -> Outcome:
        board, slot = self.board, self.board.profile.application_slot
        if request.address != slot.base:
            return self._refuse(
                Status.ERR_INVALID_ADDRESS, f"slot is at 0x{slot.base:08X}, not 0x{request.address:08X}"
            )
        if not 0 < request.size <= slot.size:
            return self._refuse(Status.ERR_OVER_RANGE, f"image size {request.size} outside 1..{slot.size}")
        if board.app_key_hash() is None:
            return self._refuse(Status.ERR_DL_NO_KEY, "OTP entries 8..11 hold no application key hash")
        page = board.profile.aprom.page_size
        for offset in range(0, request.size, page):
            board.erase_page(slot.base + offset)
        self.size, self.digest, self.written = request.size, request.digest, set()
        return Outcome(Status.OK)

    def _finish(self) -> Outcome:
        board, slot = self.board, self.board.profile.application_slot
        chunks = -(-self.size // DATA_SIZE)
        if not self.size or len(self.written) < chunks:
            return self._refuse(Status.ERR_DL_INCOMPLETE, f"{len(self.written)} of {chunks} chunks written")
        image_bytes = board.flash_read(slot.base, self.size)
        if hashlib.sha256(image_bytes).digest() != self.digest:
            return self._refuse(Status.ERR_DL_DIGEST, "SHA-256 of the slot differs from DL_BEGIN's")
        try:
            image = mcuboot.parse(image_bytes)
        except ProtocolError as error:
            return self._refuse(Status.ERR_DL_FORMAT, str(error))
        key_hash = board.app_key_hash()
        verdict = mcuboot.verify_against_key_hash(image, key_hash or b"")
        if verdict is mcuboot.Verdict.KEY_MISMATCH:
            return self._refuse(Status.ERR_DL_KEY, "the image's public key does not hash to OTP 8..11")
        if verdict is not mcuboot.Verdict.OK:
            return self._refuse(Status.ERR_DL_SIGNATURE, verdict.value)
        self.reason = f"application {image.version} verified"
        return Outcome(Status.OK, self.size.to_bytes(4, "little"))


@dataclass
class IspKeys:
    """The static ECDH keys the ROM and the bootloader answer with, and the hosts they trust."""

    rom: ec.EllipticCurvePrivateKey
    bootloader: ec.EllipticCurvePrivateKey
    trusted_hosts: Collection[bytes] | None = None
    kdf: Kdf = Kdf.RAW


class BoardIsp:
    """What answers on a board's UART, and what the answers do to the board."""

    def __init__(self, board: Board, keys: IspKeys) -> None:
        self.board = board
        self.keys = keys
        self._session: TargetSession | None = None
        self._backend: RomBackend | BootloaderBackend | None = None
        self._running = "none"
        self._resets = -1
        self.sync()

    def __repr__(self) -> str:
        return f"<BoardIsp {self.board.uid_text} running={self._running} session={self._session!r}>"

    @property
    def session(self) -> TargetSession | None:
        return self._session

    def sync(self) -> None:
        """Start the session of whatever the board now runs (after a reset or a jump)."""
        if (self.board.booted, self.board.resets) == (self._running, self._resets):
            return
        self._running, self._resets = self.board.booted, self.board.resets
        if self._running == "rom":
            self._backend = RomBackend(self.board)
            key, role = self.keys.rom, Role.ROM
        elif self._running == "bootloader":
            self._backend = BootloaderBackend(self.board)
            key, role = self.keys.bootloader, Role.BOOTLOADER
        else:
            self._session = self._backend = None
            return
        self._session = TargetSession(
            role, self._backend, key, trusted_hosts=self.keys.trusted_hosts, kdf=self.keys.kdf
        )

    def handle(self, raw: bytes) -> Handled | None:
        """Answer one packet; None when nothing on the board listens (application running)."""
        self.sync()
        if self._session is None:
            return None
        handled = self._session.handle(raw)
        if handled.duplicate:
            return handled
        if handled.command in _ECDH_TIMED and handled.status is Status.OK:
            self.board._spend(self.board.timing.ecdh)
        if handled.status is not Status.OK:
            reason = getattr(self._backend, "reason", "") or STATUS_MEANING[handled.status]
            self.board.event(
                self._running,
                "refused",
                reason,
                command=f"0x{handled.command:04X}",
                status=handled.status.name,
            )
            if isinstance(self._backend, BootloaderBackend):
                self._backend.reason = ""
            return handled
        self._after(handled)
        return handled

    def _after(self, handled: Handled) -> None:
        board = self.board
        if handled.command == Command.RESET:
            board.reset("SecureISP RESET")
        elif handled.command == Command.REBOOT_TO_BOOTLOADER:
            board.booted = "bootloader"
            board.event("rom", "boot bootloader", "asked by REBOOT_TO_BOOTLOADER; verified at reset")
        elif handled.command == Command.DL_FINISH and isinstance(self._backend, BootloaderBackend):
            board.booted = "application"
            board.event("bootloader", "boot application", self._backend.reason)
        elif handled.command == Command.WRITE_OTP and isinstance(handled.request, m.WriteOtp):
            board.event("rom", "otp written", f"entry {handled.request.entry}")
