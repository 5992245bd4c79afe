"""The debug side through pyOCD's own Python API: UID, OTP, flash programming, reset, lock."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from nuwire.keys import raw_public_key
from nuwire.profiles import M2354, FmcCommand
from tests.boardsim.conftest import Rig
from tests.boardsim.helpers import Keys, signed

FMC = M2354.fmc.base


def unlock(target: Any) -> None:
    for value in M2354.unlock_sequence:
        target.write32(M2354.reglctl, value)
    target.write32(FMC + M2354.fmc.ispctl, M2354.fmc.ispen | M2354.fmc.cfguen | M2354.fmc.apuen)


def isp(target: Any, command: int, address: int, data: int = 0) -> tuple[int, bool]:
    """One FMC command; returns ISPDAT and whether ISPFF (fail) was set (then clears it)."""
    target.write32(FMC + M2354.fmc.ispcmd, command)
    target.write32(FMC + M2354.fmc.ispaddr, address)
    target.write32(FMC + M2354.fmc.ispdat, data)
    target.write32(FMC + M2354.fmc.isptrg, 1)
    while target.read32(FMC + M2354.fmc.isptrg) & 1:
        pass
    failed = bool(target.read32(FMC + M2354.fmc.ispctl) & M2354.fmc.ispff)
    if failed:
        target.write32(FMC + M2354.fmc.ispctl, target.read32(FMC + M2354.fmc.ispctl) | M2354.fmc.ispff)
    return target.read32(FMC + M2354.fmc.ispdat), failed


def test_uid_otp_flash_reset_and_lock_through_pyocd(rig: Rig, tmp_path: Path) -> None:
    from pyocd.core.exceptions import Error as PyocdError  # noqa: PLC0415  # slow import, only here
    from pyocd.flash.file_programmer import FileProgrammer  # noqa: PLC0415

    keys = Keys.make()
    with rig.session() as session:
        target = session.target
        assert target.read32(M2354.sys_base) == M2354.pdid
        unlock(target)
        uid = [isp(target, FmcCommand.READ_UID, 4 * i)[0] for i in range(3)]
        assert "".join(f"{word:08X}" for word in uid) == rig.state()["uid"]

        # OTP entry 0, low then high word: the first program works, the second fails and changes nothing.
        otp0 = M2354.otp.entry_address(0)
        low, high = M2354.bootloader_key_entries(raw_public_key(keys.boot.public_key()))[0]
        assert isp(target, FmcCommand.PROGRAM, otp0, low)[1] is False
        assert isp(target, FmcCommand.PROGRAM, otp0 + 4, high)[1] is False
        assert isp(target, FmcCommand.PROGRAM, otp0, 0)[1] is True
        assert isp(target, FmcCommand.PROGRAM, otp0 + 4, 0)[1] is True
        target.write32(FMC + M2354.fmc.ispcmd, FmcCommand.READ_64)
        target.write32(FMC + M2354.fmc.ispaddr, otp0)
        target.write32(FMC + M2354.fmc.isptrg, 1)
        assert (target.read32(FMC + M2354.fmc.mpdat0), target.read32(FMC + M2354.fmc.mpdat1)) == (low, high)
        assert rig.state()["otp_program_counts"][0:2] == [2, 2]

        # The bootloader, with pyOCD's own flash loader and the built-in algorithm.
        image = tmp_path / "bootloader.bin"
        image.write_bytes(signed(os.urandom(6000), keys.boot, "bootloader", full=False))
        FileProgrammer(session).program(
            str(image), base_address=M2354.bootloader_slot.base, file_format="bin"
        )
        assert rig.board.slot_bytes("bootloader")[: image.stat().st_size] == image.read_bytes()

        target.reset_and_halt()
        assert rig.state()["debug_locked"] is False

        # Lock: clear the ICELOCK bit of CONFIG0; it takes effect at the next reset.
        config0 = M2354.debug_lock.config_address
        unlock(target)
        isp(target, FmcCommand.PROGRAM, config0, 0xFFFFFFFF & ~M2354.debug_lock.mask)
        assert isp(target, FmcCommand.READ, config0)[0] == 0xFFFFF7FF
        assert rig.state()["debug_locked"] is False  # not before the reset
        with contextlib.suppress(PyocdError):  # pyOCD's post-reset check already meets the locked port
            target.reset()
    assert rig.state()["debug_locked"] is True
    with pytest.raises(PyocdError, match=r"not detected|No ACK"):
        rig.session().open()
