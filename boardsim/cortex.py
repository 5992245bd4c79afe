"""The Cortex-M23 debug view pyOCD needs: ROM table, SCS registers, core registers, halt, reset.

There is no instruction-set emulator. When the debugger resumes the core at an entry point of the
flash algorithm that pyOCD's built-in ``m2354kjfae`` target loads into SRAM (recognised by its bytes,
as a CPU would run them), the function runs in Python against the board's FMC model, the core stays
"running" for as long as the flash work takes, then halts at the return address with the result in
R0, exactly what the algorithm's BKPT return does on a chip. Resuming anywhere else lets the core run
until the debugger halts it. Why this and not a flash class that drives the FMC over the debug port:
the orchestrator then uses pyOCD's own target and flash loader unchanged, the same code it runs on a
real M2354.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from boardsim.board import Board, BusFault

SCS = 0xE000E000
CPUID, ICSR, AIRCR, DFSR = 0xE000ED00, 0xE000ED04, 0xE000ED0C, 0xE000ED30
PFR1, DHCSR, DCRSR, DCRDR, DEMCR, DSCSR = (
    0xE000ED44,
    0xE000EDF0,
    0xE000EDF4,
    0xE000EDF8,
    0xE000EDFC,
    0xE000EE08,
)
ROM_TABLE = 0xE00FF000
CPUID_M23 = 0x410CD200  # implementer Arm, ARMv8-M baseline, part 0xD20 (Cortex-M23)
DBGKEY = 0xA05F0000
C_DEBUGEN, C_HALT, C_STEP, C_MASKINTS = 1, 2, 4, 8
S_REGRDY, S_HALT, S_SDE, S_RETIRE_ST, S_RESET_ST = 1 << 16, 1 << 17, 1 << 20, 1 << 24, 1 << 25
VC_CORERESET = 1
SYSRESETREQ, VECTKEY = 1 << 2, 0x05FA0000
R0, SP, LR, PC, XPSR = 0, 13, 14, 15, 16
DFSR_BKPT, DFSR_HALTED = 2, 1

# CoreSight identification: the ROM table points at the SCS, whose DEVARCH says "v8-M SCS".
_ROM_TABLE_WORDS = {0x000: 0xFFF0F003, 0x004: 0, 0xFCC: 1}
# PIDR4..7 at 0xFD0, PIDR0..3 at 0xFE0, CIDR0..3 at 0xFF0; designer Arm (0x43B), JEDEC.
_ROM_TABLE_IDS = (0x04, 0, 0, 0, 0xC9, 0xB4, 0x0B, 0x00, 0x0D, 0x10, 0x05, 0xB1)  # class 1: ROM table
_SCS_IDS = (0x04, 0, 0, 0, 0x20, 0xBD, 0x0B, 0x00, 0x0D, 0x90, 0x05, 0xB1)  # class 9, part 0xD20
_SCS_DEVARCH = 0x47702A04


def _coresight_id(base: int, address: int, ids: tuple[int, ...]) -> int | None:
    offset = address - base
    if 0xFD0 <= offset <= 0xFFC:
        return ids[(offset - 0xFD0) // 4]
    return None


@dataclass(frozen=True, slots=True)
class FlashAlgorithm:
    """A flash algorithm blob and its entry points, as pyOCD's target describes it."""

    load_address: int
    blob: bytes
    init: int
    uninit: int
    erase_sector: int
    program_page: int

    @classmethod
    def from_pyocd(cls, algo: dict[str, object]) -> FlashAlgorithm:
        words = algo["instructions"]
        if not isinstance(words, list):
            raise TypeError("flash algorithm without an instruction list")

        def entry(name: str) -> int:
            value = algo[name]
            if not isinstance(value, int):
                raise TypeError(f"flash algorithm field {name} is not an address")
            return value & ~1

        return cls(
            entry("load_address"),
            b"".join(int(word).to_bytes(4, "little") for word in words),
            entry("pc_init"),
            entry("pc_unInit"),
            entry("pc_erase_sector"),
            entry("pc_program_page"),
        )


def m2354_algorithms() -> tuple[FlashAlgorithm, ...]:
    """The algorithm pyOCD's built-in m2354kjfae target loads (secure SRAM at 0x20000000)."""
    from pyocd.target.builtin.target_M2354 import flash_algo  # noqa: PLC0415  # loaded once, only by the server

    return (FlashAlgorithm.from_pyocd(flash_algo(0x20000000)),)


@dataclass
class Core:
    board: Board
    algorithms: tuple[FlashAlgorithm, ...] = ()
    clock: Callable[[], float] = time.monotonic
    registers: dict[int, int] = field(default_factory=dict)
    control: int = 0
    demcr: int = 0
    dcrdr: int = 0
    halted: bool = False
    reset_sticky: bool = True
    dfsr: int = 0
    halt_at: float | None = None
    """When the core is running a flash function: the time it halts again."""

    def __post_init__(self) -> None:
        self.board.on_reset = self.after_reset

    # -- the bus at 0xE0000000 -----------------------------------------------------------------

    def read32(self, address: int) -> int:
        if address == DHCSR:
            return self._dhcsr()
        simple = {CPUID: CPUID_M23, PFR1: 0x10, DCRDR: self.dcrdr, DEMCR: self.demcr, DFSR: self.dfsr,
                  AIRCR: 0xFA050000, DSCSR: 0x00010000}  # fmt: skip
        if address in simple:
            return simple[address]
        if address >= ROM_TABLE:
            found = _coresight_id(ROM_TABLE, address, _ROM_TABLE_IDS)
            return found if found is not None else _ROM_TABLE_WORDS.get(address - ROM_TABLE, 0)
        if SCS <= address < SCS + 0x1000:
            if address == SCS + 0xFBC:
                return _SCS_DEVARCH
            found = _coresight_id(SCS, address, _SCS_IDS)
            return found if found is not None else 0
        raise BusFault(f"no device at 0x{address:08X}")

    def write32(self, address: int, value: int) -> None:
        if address == DHCSR:
            if value & 0xFFFF0000 == DBGKEY:
                self._control(value & 0xF)
        elif address == DCRSR:
            self._transfer_register(value)
        elif address == DCRDR:
            self.dcrdr = value
        elif address == DEMCR:
            self.demcr = value
        elif address == DFSR:
            self.dfsr &= ~value
        elif address == AIRCR:
            if value & 0xFFFF0000 == VECTKEY and value & SYSRESETREQ:
                self.board.reset("SYSRESETREQ")
        elif not SCS <= address < SCS + 0x1000:
            raise BusFault(f"no device at 0x{address:08X}")

    # -- run control -------------------------------------------------------------------------------

    def _running_done(self) -> None:
        if self.halt_at is not None and self.clock() >= self.halt_at:
            self.halt_at = None
            self.halted = True
            self.dfsr |= DFSR_BKPT

    def _dhcsr(self) -> int:
        self._running_done()
        value = self.control | S_REGRDY | S_SDE | (S_HALT if self.halted else 0)
        if self.reset_sticky:
            value |= S_RESET_ST
            self.reset_sticky = False
        return value

    def _control(self, bits: int) -> None:
        self._running_done()
        self.control = bits
        if not bits & C_DEBUGEN:
            return
        if bits & C_HALT:
            if not self.halted:
                self.halt_at = None
                self.halted = True
                self.dfsr |= DFSR_HALTED
        elif self.halted:
            self.halted = False
            self._resume()

    def _transfer_register(self, value: int) -> None:
        selector = value & 0x7F
        if value & (1 << 16):
            self.registers[selector] = self.dcrdr
        else:
            self.dcrdr = self.registers.get(selector, 0)

    def _resume(self) -> None:
        pc = self.registers.get(PC, 0) & ~1
        for algorithm in self.algorithms:
            if pc not in (algorithm.init, algorithm.uninit, algorithm.erase_sector, algorithm.program_page):
                continue
            start = algorithm.load_address - self.board.profile.sram.base
            if bytes(self.board.sram[start : start + len(algorithm.blob)]) != algorithm.blob:
                continue
            self.registers[R0] = self._run(algorithm, pc)
            self.registers[PC] = self.registers.get(LR, 0) & ~1
            self.halt_at = max(self.board.busy_until, self.clock())
            return

    def _run(self, algorithm: FlashAlgorithm, pc: int) -> int:
        board, r = self.board, self.registers
        if pc == algorithm.init:
            fmc = board.profile.fmc
            board.unlocked = True
            board.fmc["ispctl"] |= fmc.ispen | fmc.apuen | fmc.lduen | fmc.cfguen
            return 0
        if pc == algorithm.uninit:
            return 0
        address = r.get(R0, 0) & 0x0FFFFFFF
        if pc == algorithm.erase_sector:
            return 0 if board.erase_page(address) else 1
        size, buffer = r.get(1, 0), r.get(2, 0) - board.profile.sram.base
        return 0 if board.program_flash(address, bytes(board.sram[buffer : buffer + size])) else 1

    def after_reset(self) -> None:
        """Core state after a system reset: halted at the reset vector if vector catch is set."""
        self.registers = {XPSR: 0x01000000}
        vector = self.board.aprom[0:8]
        self.registers[SP] = int.from_bytes(vector[0:4], "little")
        self.registers[PC] = int.from_bytes(vector[4:8], "little") & ~1
        self.halt_at = None
        self.halted = bool(self.demcr & VC_CORERESET)
        self.reset_sticky = True
        self.control &= C_DEBUGEN
