"""The board's UART side: Nuvoton's SecureISP with this project's vendor code, in the ROM and the
bootloader.

:class:`BoardIsp` runs the SecureISP target (boardsim/secureisp.py) of whatever the board is
running (the ROM after a reset, the bootloader after the vendor REBOOT_TO_BOOTLOADER, nothing once
the application runs) and applies what an answered command does to the board: a reset, the jump
to the bootloader, the boot of a verified application when the bootloader's SecureISP ends.
Every refusal goes into the board's events with its reason.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from boardsim.board import ERASED_WORD, Board
from boardsim.secureisp import Answer, SecureIspTarget
from boardsim.vendor import VendorCode
from nuwire.profiles import TargetProfile
from nuwire.secureisp.commands import STATUS_MEANING, Command, Status, status_of
from nuwire.secureisp.session import Kdf

_ECDH_TIMED = frozenset({Command.ECDH_PUB1, Command.ECDH_GET_RAND_PUB0})


class BoardChip:
    """The chip as SecureISP reaches it through the FMC: flash, OTP and CONFIG words of a Board."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.profile: TargetProfile = board.profile

    @property
    def ids(self) -> tuple[tuple[int, int, int], tuple[int, int, int, int]]:
        return self.board.uid, self.board.ucid

    def read_word(self, address: int) -> int | None:
        p, board = self.profile, self.board
        if address % 4:
            return None
        if p.otp.base <= address < p.otp.base + 8 * p.otp.entries:
            offset = address - p.otp.base
            return int.from_bytes(board.otp[offset : offset + 4], "little")
        if p.config.contains(address, 4):
            index = (address - p.config.base) // 4
            return board.config[index] if index < len(board.config) else ERASED_WORD
        for region in (p.aprom, p.ldrom):
            if region.contains(address, 4):
                return int.from_bytes(board.flash_read(address, 4), "little")
        return None

    def program_word(self, address: int, value: int) -> bool:
        p = self.profile
        if p.otp.base <= address < p.otp.base + 8 * p.otp.entries:
            return self.board.program_otp_word(address, value)
        if not (p.aprom.contains(address, 4) or p.ldrom.contains(address, 4)):
            return False
        return self.board.program_flash_word(address, value)

    def erase_page(self, address: int) -> bool:
        p = self.profile
        if not (p.aprom.contains(address) or p.ldrom.contains(address)):
            return False
        return self.board.erase_page(address)

    def blank(self, address: int, length: int) -> bool:
        p = self.profile
        if p.aprom.contains(address, length) or p.ldrom.contains(address, length):
            return self.board.flash_read(address, length) == b"\xff" * length  # word by word, at once
        return all(self.read_word(at) in (None, ERASED_WORD) for at in range(address, address + length, 4))


@dataclass
class IspKeys:
    """The static ECDH keys the ROM and the bootloader answer with."""

    rom: ec.EllipticCurvePrivateKey
    bootloader: ec.EllipticCurvePrivateKey
    trusted_hosts: Collection[bytes] | None = None  # Nuvoton's code trusts any host ("TODO")
    kdf: Kdf = Kdf.RAW


class BoardIsp:
    """What answers on a board's UART, and what the answers do to the board."""

    def __init__(self, board: Board, keys: IspKeys) -> None:
        self.board = board
        self.keys = keys
        self.chip = BoardChip(board)
        self._target: SecureIspTarget | None = None
        self._vendor: VendorCode | None = None
        self._running = "none"
        self._resets = -1
        self.sync()

    def __repr__(self) -> str:
        return f"<BoardIsp {self.board.uid_text} running={self._running} target={self._target!r}>"

    @property
    def target(self) -> SecureIspTarget | None:
        return self._target

    def sync(self) -> None:
        """Start the SecureISP of whatever the board now runs (after a reset or a jump)."""
        if (self.board.booted, self.board.resets) == (self._running, self._resets):
            return
        self._running, self._resets = self.board.booted, self.board.resets
        if self._running not in ("rom", "bootloader"):
            self._target = self._vendor = None
            return
        key = self.keys.rom if self._running == "rom" else self.keys.bootloader
        self._vendor = VendorCode(self.chip)
        self._target = SecureIspTarget(self.chip, key, self._vendor, kdf=self.keys.kdf)

    def handle(self, raw: bytes) -> Answer | None:
        """Answer one packet; None when nothing on the board listens (application running)."""
        self.sync()
        target, vendor = self._target, self._vendor
        if target is None or vendor is None:
            return None
        answer = target.handle(raw)
        if answer.response is None and not answer.reset:
            return answer  # SecureISP has ended: silence until a reset
        if answer.command in _ECDH_TIMED and answer.status == Status.OK:
            self.board._spend(self.board.timing.ecdh)
        if answer.status not in (None, Status.OK):
            status = status_of(answer.status) if answer.status is not None else 0
            meaning = STATUS_MEANING.get(status, "") if isinstance(status, Status) else ""
            self.board.event(
                self._running,
                "refused",
                vendor.reason or meaning,
                command=f"0x{answer.command:04X}",
                status=status.name if isinstance(status, Status) else f"0x{answer.status:X}",
            )
            vendor.reason = ""
        if answer.ended:
            self.board.event(self._running, "isp ended", "SecureISP returned: silent until a reset")
        self._after(answer, raw)
        return answer

    def _after(self, answer: Answer, raw: bytes) -> None:
        board, vendor = self.board, self._vendor
        if answer.reset and answer.command == Command.RESET:
            board.reset("SecureISP RESET")
        elif answer.reset:  # the vendor REBOOT_TO_BOOTLOADER: a CPU reset into the bootloader
            board.reset("REBOOT_TO_BOOTLOADER")
            if board.bootloader_valid:
                board.booted = "bootloader"
                board.event("rom", "boot bootloader", "verified at this reset")
        elif (
            answer.command == Command.DISCONNECT
            and answer.status == Status.OK
            and self._running == "bootloader"
            and vendor is not None
            and vendor.verified
        ):
            board.booted = "application"
            board.event("bootloader", "boot application", f"application {vendor.verified} verified")
