"""One simulated board: memories, OTP, CONFIG, identities, SYS and FMC registers, and reset.

Everything the hardware boundary reaches ends here: the debug side reads and writes the bus through
:meth:`Board.read32` / :meth:`Board.write32`, the UART side goes through the ROM and bootloader in
boardsim/isp.py, which use the FMC operations below like the ROM's own code would.

Flash is NOR: programming ANDs a word into what is there, only a page erase brings bits back to 1.
OTP words are programmable once: programming a word that is not blank sets ISPFF and changes
nothing. Every program operation that reaches an OTP word is counted, successful or not.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from nuwire import mcuboot
from nuwire.errors import ProtocolError
from nuwire.ids import RECORD_SIZE, decode_obj_id_record, format_uid
from nuwire.keys import from_otp_entries, public_key_from_raw
from nuwire.profiles import FmcCommand, Region, TargetProfile

Booted = Literal["none", "rom", "bootloader", "application"]
ERASED_WORD = 0xFFFFFFFF
CONFIG_WORDS = 4
FMC_REGISTERS = ("ispctl", "ispaddr", "ispdat", "ispcmd", "ispsts", "mpdat0", "mpdat1")


class BusFault(Exception):
    """An access the bus does not answer (unmapped or protected address); the AP reports FAULT."""


@dataclass(frozen=True, slots=True)
class Timing:
    """Seconds the target spends on its own work (the debug and UART links are timed elsewhere)."""

    page_erase: float = 0.020
    word_program: float = 0.000_040
    ecdh: float = 0.0
    aes_packet: float = 0.0

    @classmethod
    def instant(cls) -> Timing:
        return cls(0.0, 0.0, 0.0, 0.0)


@dataclass
class Board:
    profile: TargetProfile
    uid: tuple[int, int, int]
    ucid: tuple[int, int, int, int] = (0, 0, 0, 0)
    timing: Timing = field(default_factory=Timing.instant)
    clock: Callable[[], float] = time.monotonic
    on_change: Callable[[Board, str, int | None, int], None] | None = None
    """Told which file of the board's state changed (otp, aprom, ldrom, dataflash or state) and,
    for a flash memory, which bytes of it: (board, what, offset or None for all, length)."""
    on_reset: Callable[[], None] | None = None
    """Told after every reset (the debug model resets the core)."""

    def __post_init__(self) -> None:
        p = self.profile
        self.aprom = bytearray(b"\xff" * p.aprom.size)
        self.ldrom = bytearray(b"\xff" * p.ldrom.size)
        self.data_flash = bytearray(b"\xff" * p.data_flash.size)
        self._flashes = tuple(
            (region.base, region.end, store, region, name)
            for region, store, name in (
                (p.aprom, self.aprom, "aprom"),
                (p.ldrom, self.ldrom, "ldrom"),
                (p.data_flash, self.data_flash, "dataflash"),
            )
        )  # every bus access looks here first: plain integer compares
        self.sram = bytearray(p.sram.size)
        self.otp = bytearray(b"\xff" * (8 * p.otp.entries))
        self.otp_locks = bytearray(b"\xff" * (4 * p.otp.entries))
        self.otp_program_counts = [0] * (2 * p.otp.entries)
        self.config = [ERASED_WORD] * CONFIG_WORDS
        self.debug_locked = False
        self.booted: Booted = "none"
        self.bootloader_valid = False
        self.events: list[dict[str, object]] = []
        self.unlocked = False
        self._unlock_step = 0
        self.fmc = dict.fromkeys(FMC_REGISTERS, 0)
        self.busy_until = 0.0
        self.resets = 0

    def __repr__(self) -> str:
        return f"<Board {self.uid_text} booted={self.booted} locked={self.debug_locked}>"

    @functools.cached_property
    def uid_text(self) -> str:  # asked for with every flash word the state store hears of
        return format_uid(self.uid)

    # -- events and persistence ---------------------------------------------------------------

    def event(self, who: str, decision: str, reason: str = "", **details: object) -> None:
        self.events.append(
            {"time": round(time.time(), 3), "who": who, "decision": decision, "reason": reason, **details}
        )
        self.changed("state")

    def changed(self, what: str, offset: int | None = None, length: int = 4) -> None:
        """``what`` changed; for a flash memory, ``length`` bytes at ``offset`` in it (None: all)."""
        if self.on_change is not None:
            self.on_change(self, what, offset, length)

    def obj_id(self) -> bytes | None:
        start = self.profile.objid_record - self.profile.data_flash.base
        try:
            return decode_obj_id_record(bytes(self.data_flash[start : start + RECORD_SIZE]))
        except ProtocolError:
            return None

    # -- memories ----------------------------------------------------------------------------

    def _flash(self, address: int) -> tuple[bytearray, int, Region] | None:
        for base, end, store, region, _ in self._flashes:
            if base <= address and address + 4 <= end:
                return store, address - base, region
        return None

    def _file_of(self, region: Region) -> str:
        return next(name for _, _, _, known, name in self._flashes if known is region)

    def flash_read(self, address: int, length: int) -> bytes:
        found = self._flash(address)
        if found is None:
            raise BusFault(f"no flash at 0x{address:08X}")
        store, offset, _ = found
        return bytes(store[offset : offset + length])

    def read_block(self, address: int, length: int) -> bytes | None:
        """``length`` bytes of SRAM or of one flash memory from a word address, as word reads
        would give them; None when the range leaves that memory (the bus faults somewhere)."""
        p = self.profile
        if address % 4 == 0 and p.sram.contains(address, length):
            return bytes(self.sram[address - p.sram.base : address - p.sram.base + length])
        found = self._flash(address) if address % 4 == 0 else None
        if found is None or found[1] + length > len(found[0]):
            return None
        return bytes(found[0][found[1] : found[1] + length])

    def write_sram(self, address: int, data: bytes) -> bool:
        """Word writes to SRAM from a word address, at once; False when they would leave it."""
        p = self.profile
        if address % 4 or len(data) % 4 or not p.sram.contains(address, len(data)):
            return False
        self.sram[address - p.sram.base : address - p.sram.base + len(data)] = data
        return True

    def program_flash_word(self, address: int, value: int) -> bool:
        found = self._flash(address)
        if found is None or address % 4:
            return False
        store, offset, region = found
        old = int.from_bytes(store[offset : offset + 4], "little")
        store[offset : offset + 4] = (old & value).to_bytes(4, "little")
        self._spend(self.timing.word_program)
        self.changed(self._file_of(region), offset)
        return True

    def program_flash(self, address: int, data: bytes) -> bool:
        """Words programmed one after another (the flash algorithm's ProgramPage), as that many
        program_flash_word calls would, at the cost of one. A block that leaves its flash region
        goes word by word: the words before the edge are programmed, as on the chip."""
        found = self._flash(address)
        end = self._flash(address + len(data) - 4) if data else None
        if found is None or end is None or end[2] is not found[2] or address % 4 or len(data) % 4:
            return all(self.program_flash_word(address + at, int.from_bytes(data[at : at + 4], "little"))
                       for at in range(0, len(data), 4))  # fmt: skip
        store, offset, region = found
        old = int.from_bytes(store[offset : offset + len(data)], "little")
        store[offset : offset + len(data)] = (old & int.from_bytes(data, "little")).to_bytes(
            len(data), "little"
        )
        self._spend(len(data) // 4 * self.timing.word_program)
        self.changed(self._file_of(region), offset, len(data))
        return True

    def erase_page(self, address: int) -> bool:
        found = self._flash(address)
        if found is None:
            return False
        store, offset, region = found
        start = offset - offset % region.page_size
        store[start : start + region.page_size] = b"\xff" * region.page_size
        self._spend(self.timing.page_erase)
        self.changed(self._file_of(region), start, region.page_size)
        return True

    def otp_entry(self, entry: int) -> tuple[int, int]:
        raw = self.otp[8 * entry : 8 * entry + 8]
        return int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:], "little")

    def program_otp_word(self, address: int, value: int) -> bool:
        """Program one OTP word (or lock word); False (ISPFF) when it is already programmed."""
        otp = self.profile.otp
        offset = address - otp.base
        if 0 <= offset < 8 * otp.entries and offset % 4 == 0:
            index = offset // 4
            self.otp_program_counts[index] += 1
            store, at = self.otp, offset
        elif otp.lock_offset <= offset < otp.lock_offset + 4 * otp.entries and offset % 4 == 0:
            store, at = self.otp_locks, offset - otp.lock_offset
        else:
            return False
        old = int.from_bytes(store[at : at + 4], "little")
        self._spend(self.timing.word_program)
        blank = old == ERASED_WORD
        if blank:
            store[at : at + 4] = value.to_bytes(4, "little")
        self.changed("otp")
        return blank

    def _spend(self, seconds: float) -> None:
        self.busy_until = max(self.busy_until, self.clock()) + seconds

    # -- the bus ------------------------------------------------------------------------------

    def read32(self, address: int) -> int:
        p = self.profile
        if address % 4:
            raise BusFault(f"unaligned word read at 0x{address:08X}")
        if p.sram.contains(address, 4):
            offset = address - p.sram.base
            return int.from_bytes(self.sram[offset : offset + 4], "little")
        found = self._flash(address)
        if found is not None:
            store, offset, _ = found
            return int.from_bytes(store[offset : offset + 4], "little")
        if address == p.sys_base:
            return p.pdid
        if address == p.reglctl:
            return int(self.unlocked)
        fmc = p.fmc
        if fmc.base <= address < fmc.base + 0x100:
            return self._fmc_read(address - fmc.base)
        raise BusFault(f"no device at 0x{address:08X}")

    def write32(self, address: int, value: int) -> None:
        p = self.profile
        if address % 4:
            raise BusFault(f"unaligned word write at 0x{address:08X}")
        if p.sram.contains(address, 4):
            offset = address - p.sram.base
            self.sram[offset : offset + 4] = value.to_bytes(4, "little")
            return
        if self._flash(address) is not None:
            raise BusFault(f"flash is written through the FMC, not the bus (0x{address:08X})")
        if address == p.reglctl:
            self._reglctl(value)
            return
        if address == p.sys_base:
            return  # PDID is read-only
        if p.fmc.base <= address < p.fmc.base + 0x100:
            self._fmc_write(address - p.fmc.base, value)
            return
        raise BusFault(f"no device at 0x{address:08X}")

    def _reglctl(self, value: int) -> None:
        sequence = self.profile.unlock_sequence
        if value == sequence[self._unlock_step]:
            self._unlock_step += 1
            if self._unlock_step == len(sequence):
                self.unlocked, self._unlock_step = True, 0
        else:
            self._unlock_step = 0
            if value == 0:
                self.unlocked = False

    # -- FMC ----------------------------------------------------------------------------------

    def _fmc_offsets(self) -> dict[int, str]:
        f = self.profile.fmc
        return {getattr(f, name): name for name in FMC_REGISTERS}

    def _fmc_read(self, offset: int) -> int:
        if offset == self.profile.fmc.isptrg:
            return int(self.clock() < self.busy_until)
        name = self._fmc_offsets().get(offset)
        if name is None:
            return 0
        value = self.fmc[name]
        if name == "ispsts":
            ispff = self.profile.fmc.ispff
            value = (value & ~ispff) | (self.fmc["ispctl"] & ispff)
        return value

    def _fmc_write(self, offset: int, value: int) -> None:
        f = self.profile.fmc
        protected = offset in (f.ispctl, f.isptrg)
        if protected and not self.unlocked:
            return
        if offset == f.isptrg:
            if value & f.ispgo and self.fmc["ispctl"] & f.ispen:
                self._fmc_execute()
            return
        name = self._fmc_offsets().get(offset)
        if name is None:
            return
        if name == "ispctl" and value & f.ispff:
            value &= ~f.ispff  # write 1 to clear the fail flag
        elif name == "ispctl":
            value |= self.fmc["ispctl"] & f.ispff
        self.fmc[name] = value & ERASED_WORD

    def _fail(self) -> None:
        self.fmc["ispctl"] |= self.profile.fmc.ispff

    def _fmc_execute(self) -> None:
        p = self.profile
        command, address, data = self.fmc["ispcmd"], self.fmc["ispaddr"], self.fmc["ispdat"]
        reads: dict[int, Callable[[], int]] = {
            FmcCommand.READ_UID: lambda: self._uid_word(address // 4),
            FmcCommand.READ_CID: lambda: p.cid,
            FmcCommand.READ_DID: lambda: p.pdid,
            FmcCommand.READ: lambda: self._read_any(address),
        }
        if command in reads:
            self.fmc["ispdat"] = reads[command]()
        elif command == FmcCommand.READ_64:
            self.fmc["mpdat0"] = self._read_any(address)
            self.fmc["mpdat1"] = self._read_any(address + 4)
        elif command == FmcCommand.PROGRAM:
            self._program_or_fail([(address, data)])
        elif command == FmcCommand.PROGRAM_64:
            self._program_or_fail([(address, self.fmc["mpdat0"]), (address + 4, self.fmc["mpdat1"])])
        elif command == FmcCommand.PAGE_ERASE:
            self._page_erase(address)
        else:
            self._fail()

    def _uid_word(self, index: int) -> int:
        if index < 3:
            return self.uid[index]
        return self.ucid[index - 4] if 4 <= index < 8 else 0

    def _in_otp(self, address: int) -> bool:
        otp = self.profile.otp
        return otp.base <= address < otp.base + otp.lock_offset + 4 * otp.entries

    def _program_or_fail(self, words: list[tuple[int, int]]) -> None:
        for address, value in words:
            if not self._program(address, value):
                self._fail()

    def _page_erase(self, address: int) -> None:
        in_config = self.profile.config.contains(address)
        if self._in_otp(address) or not self._may_update(address, in_config):
            self._fail()
        elif in_config:
            self.config = [ERASED_WORD] * CONFIG_WORDS
            self._spend(self.timing.page_erase)
            self.changed("state")
        elif not self.erase_page(address):
            self._fail()

    def _read_any(self, address: int) -> int:
        p = self.profile
        if p.otp.base <= address < p.otp.base + 8 * p.otp.entries:
            offset = address - p.otp.base
            return int.from_bytes(self.otp[offset : offset + 4], "little")
        if p.config.contains(address, 4):
            index = (address - p.config.base) // 4
            return self.config[index] if index < CONFIG_WORDS else ERASED_WORD
        found = self._flash(address)
        if found is None:
            self._fail()
            return ERASED_WORD
        return int.from_bytes(self.flash_read(address, 4), "little")

    def _may_update(self, address: int, in_config: bool) -> bool:
        f, p, ctl = self.profile.fmc, self.profile, self.fmc["ispctl"]
        if in_config:
            return bool(ctl & f.cfguen)
        if p.ldrom.contains(address):
            return bool(ctl & f.lduen)
        return bool(ctl & f.apuen)

    def _program(self, address: int, value: int) -> bool:
        in_config = self.profile.config.contains(address)
        if self._in_otp(address):
            return self.program_otp_word(address, value)
        if not self._may_update(address, in_config):
            return False
        if in_config:
            index = (address - self.profile.config.base) // 4
            if index >= CONFIG_WORDS or address % 4:
                return False
            self.config[index] &= value
            self._spend(self.timing.word_program)
            self.changed("state")
            return True
        return self.program_flash_word(address, value)

    # -- reset --------------------------------------------------------------------------------

    def reset(self, why: str = "reset") -> None:
        """What the ROM does at reset: apply the debug lock, check the bootloader, enter ISP.

        Boards in a station's fixture are strapped for ISP boot, so the ROM's SecureISP answers
        after every reset; the bootloader runs when a station asks for it (REBOOT_TO_BOOTLOADER)
        and only if it verified at this reset.
        """
        self.resets += 1
        self.unlocked, self._unlock_step = False, 0
        self.fmc = dict.fromkeys(self.fmc, 0)
        self.sram[:] = bytes(len(self.sram))
        self.debug_locked = self.profile.debug_lock.is_locked(self.config[0])
        self.bootloader_valid, reason = self._check_bootloader()
        self.booted = "rom"
        self.event("rom", "isp", reason, cause=why, debug_locked=self.debug_locked)
        if self.on_reset is not None:
            self.on_reset()

    def bootloader_key(self) -> bytes | None:
        entries = [self.otp_entry(n) for n in self.profile.otp.bootloader_key]
        if all(word == ERASED_WORD for entry in entries for word in entry):
            return None
        return from_otp_entries(entries)

    def app_key_hash(self) -> bytes | None:
        entries = [self.otp_entry(n) for n in self.profile.otp.app_key_hash]
        if any(word == ERASED_WORD for entry in entries for word in entry):
            return None
        return from_otp_entries(entries)

    def slot_bytes(self, slot_name: str) -> bytes:
        slot = getattr(self.profile, f"{slot_name}_slot")
        return self.flash_read(slot.base, slot.size)

    def _check_bootloader(self) -> tuple[bool, str]:
        raw_key = self.bootloader_key()
        if raw_key is None:
            return False, "no bootloader key in OTP"
        try:
            key = public_key_from_raw(raw_key, "bootloader key in OTP")
            image = mcuboot.parse(self.slot_bytes("bootloader"))
        except ProtocolError as error:
            return False, f"bootloader not bootable: {error}"
        verdict = mcuboot.verify(image, key)
        if verdict is not mcuboot.Verdict.OK:
            return False, f"bootloader refused: {verdict.value}"
        return True, f"bootloader {image.version} verified with the OTP key"
