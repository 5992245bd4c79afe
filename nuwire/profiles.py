"""Target profiles as data: another NuMicro part is a new profile, not new code.

Facts and their sources are in docs/protocols.md and ../shared/notes/nuvoton-facts.md: the memory
map and FMC from the BSP headers (Library/StdDriver/inc/fmc.h), PDIDs from ISPTool_Cross_Platform
(PartNumID.py). The OTP layout, the slots and the OBJ_ID record place are this project's choices. The
debug-lock bit is not confirmed for every part: it is a setting here, never a constant in code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

from nuwire.errors import ProtocolError
from nuwire.keys import OtpEntry, key_hash, to_otp_entries
from nuwire.secureisp.firmware import NUVOTON_DEMO, NUVOTON_FIXEDKEY, Firmware


class FmcCommand(IntEnum):
    """ISPCMD codes of the flash memory controller."""

    READ = 0x00
    READ_UID = 0x04
    READ_CID = 0x0B
    READ_DID = 0x0C
    PROGRAM = 0x21
    PAGE_ERASE = 0x22
    VECMAP = 0x2E
    READ_64 = 0x40
    PROGRAM_64 = 0x61


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    base: int
    size: int
    page_size: int = 0

    @property
    def end(self) -> int:
        return self.base + self.size

    def contains(self, address: int, length: int = 1) -> bool:
        return self.base <= address and address + length <= self.end


@dataclass(frozen=True, slots=True)
class Fmc:
    """FMC register offsets and the bits the provisioning sequence uses."""

    base: int
    ispctl: int = 0x00
    ispaddr: int = 0x04
    ispdat: int = 0x08
    ispcmd: int = 0x0C
    isptrg: int = 0x10
    ispsts: int = 0x40
    mpdat0: int = 0x80
    mpdat1: int = 0x84
    ispen: int = 1 << 0
    apuen: int = 1 << 3
    cfguen: int = 1 << 4
    lduen: int = 1 << 5
    ispff: int = 1 << 6
    ispgo: int = 1 << 0


@dataclass(frozen=True, slots=True)
class Otp:
    """OTP: 64-bit entries, programmed a 32-bit word at a time, bits only go from 1 to 0."""

    base: int
    entries: int
    lock_offset: int
    bootloader_key: range
    app_key_hash: range

    def entry_address(self, entry: int) -> int:
        if not 0 <= entry < self.entries:
            raise ProtocolError("OTP entry", f"0..{self.entries - 1}", entry)
        return self.base + 8 * entry

    def lock_address(self, entry: int) -> int:
        self.entry_address(entry)
        return self.base + self.lock_offset + 4 * entry


@dataclass(frozen=True, slots=True)
class Slot:
    """Where an MCUboot image lives: the header starts at ``base``."""

    name: str
    base: int
    size: int
    header_size: int


@dataclass(frozen=True, slots=True)
class DebugLock:
    """How the debug port is locked: clear ``bit`` of the CONFIG word at ``config_address``.

    The lock takes effect at the next reset; after it the SW-DP does not answer (No-ACK).
    """

    config_address: int
    bit: int

    @property
    def mask(self) -> int:
        return 1 << self.bit

    def is_locked(self, config_word: int) -> bool:
        return not config_word & self.mask


@dataclass(frozen=True, slots=True)
class TargetProfile:
    name: str
    pyocd_target: str
    pdid: int
    cid: int
    aprom: Region
    ldrom: Region
    data_flash: Region
    config: Region
    sram: Region
    sys_base: int
    reglctl_offset: int
    unlock_sequence: tuple[int, ...]
    fmc: Fmc
    otp: Otp
    bootloader_slot: Slot
    application_slot: Slot
    objid_record: int
    debug_lock: DebugLock
    firmware: Firmware = NUVOTON_DEMO
    """The SecureISP target code on the part (ROM and bootloader): its quirks are settings."""
    reset_post_delay_s: float = 0.1
    """pyOCD's ``reset.post_delay``: the pause after a reset request before pyOCD polls the core.
    pyOCD's default (0.1 s) suits any chip; it then polls DHCSR until the core is out of reset and
    halted, so the pause needs to cover only the reset itself."""

    @property
    def reglctl(self) -> int:
        return self.sys_base + self.reglctl_offset

    def bootloader_key_entries(self, raw_public_key: bytes) -> dict[int, OtpEntry]:
        """OTP entry -> words holding the bootloader public key X||Y."""
        return dict(zip(self.otp.bootloader_key, to_otp_entries(raw_public_key), strict=True))

    def app_key_hash_entries(self, raw_public_key: bytes) -> dict[int, OtpEntry]:
        """OTP entry -> words holding SHA-256 of the application public key X||Y."""
        return dict(zip(self.otp.app_key_hash, to_otp_entries(key_hash(raw_public_key)), strict=True))


M2354 = TargetProfile(
    name="M2354",
    pyocd_target="m2354kjfae",
    reset_post_delay_s=0.01,  # a system reset is over in microseconds; the DHCSR poll waits out the rest
    pdid=0xA1735440,
    cid=0xDA,
    aprom=Region("APROM", 0x0000_0000, 0x10_0000, page_size=0x800),
    ldrom=Region("LDROM", 0x0010_0000, 0x4000, page_size=0x800),
    data_flash=Region("data flash", 0x0011_0000, 0x2000, page_size=0x800),
    config=Region("CONFIG", 0x0030_0000, 0x800, page_size=0x800),
    sram=Region("SRAM", 0x2000_0000, 0x4_0000),
    sys_base=0x4000_0000,
    reglctl_offset=0x100,
    unlock_sequence=(0x59, 0x16, 0x88),
    fmc=Fmc(base=0x4000_C000),
    otp=Otp(
        base=0x0031_0000,
        entries=256,
        lock_offset=0x800,
        bootloader_key=range(0, 8),
        app_key_hash=range(8, 12),
    ),
    bootloader_slot=Slot("bootloader", 0x0000_0000, 0x2_0000, header_size=0x400),
    application_slot=Slot("application", 0x0002_0000, 0xE_0000, header_size=0x400),
    objid_record=0x0011_0000,
    debug_lock=DebugLock(config_address=0x0030_0000, bit=11),
)

M2354_FIXEDKEY = replace(M2354, name="M2354-fixedkey", firmware=NUVOTON_FIXEDKEY)
"""M2354 with SecureISP built to send its static key whole (nuvoton-ref's ``fixedkey`` build)."""

PROFILES: dict[str, TargetProfile] = {p.name: p for p in (M2354, M2354_FIXEDKEY)}


def profile(name: str) -> TargetProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ProtocolError("target profile", " or ".join(sorted(PROFILES)), name) from None
