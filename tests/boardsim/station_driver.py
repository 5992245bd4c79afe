"""What a station does to one board, reduced to the hardware calls, for the simulator's tests.

It runs in its own process (pyOCD keeps per-process state), like the orchestrator's probe workers:
steps 1 and 3-6 through pyOCD, steps 8-12 through pyserial and the foundation's host session.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import serial
from cryptography.hazmat.primitives.asymmetric import ec

from nuwire import mcuboot
from nuwire.errors import ProtocolError
from nuwire.keys import public_key_from_raw, raw_public_key
from nuwire.profiles import M2354, FmcCommand
from nuwire.secureisp import messages as m
from nuwire.secureisp.commands import Status
from nuwire.secureisp.packet import PACKET_SIZE
from nuwire.secureisp.session import HostSession
from nuwire.secureisp.states import Phase, Role

FMC = M2354.fmc


def fmc(target: Any, command: int, address: int, data: int = 0) -> int:
    target.write32(FMC.base + FMC.ispcmd, command)
    target.write32(FMC.base + FMC.ispaddr, address)
    target.write32(FMC.base + FMC.ispdat, data)
    target.write32(FMC.base + FMC.isptrg, 1)
    while target.read32(FMC.base + FMC.isptrg) & 1:
        pass
    if target.read32(FMC.base + FMC.ispctl) & FMC.ispff:
        raise RuntimeError(f"FMC command 0x{command:02X} at 0x{address:08X} failed (ISPFF)")
    return int(target.read32(FMC.base + FMC.ispdat))


def debug_steps(unique_id: str, workdir: Path, boot_key: ec.EllipticCurvePrivateKey) -> str:
    from pyocd.core.helpers import ConnectHelper  # noqa: PLC0415  # imported in the worker process only
    from pyocd.flash.file_programmer import FileProgrammer  # noqa: PLC0415

    image = workdir / "bootloader.signed.bin"
    image.write_bytes(
        mcuboot.build(
            os.urandom(4096),
            signer=mcuboot.private_key_signer(boot_key),
            public_key=boot_key.public_key(),
            version=mcuboot.Version(1),
            header_size=M2354.bootloader_slot.header_size,
        )
    )
    session = ConnectHelper.session_with_chosen_probe(
        unique_id=unique_id, target_override="m2354kjfae", blocking=False,
        options={"project_dir": str(workdir), "no_config": True, "frequency": 4_000_000},
    )  # fmt: skip
    assert session is not None, f"no probe {unique_id}"
    with session:
        target = session.target
        for value in M2354.unlock_sequence:
            target.write32(M2354.reglctl, value)
        target.write32(FMC.base + FMC.ispctl, FMC.ispen | FMC.cfguen)
        uid = "".join(f"{fmc(target, FmcCommand.READ_UID, 4 * i):08X}" for i in range(3))
        for entry, (low, high) in M2354.bootloader_key_entries(raw_public_key(boot_key.public_key())).items():
            fmc(target, FmcCommand.PROGRAM, M2354.otp.entry_address(entry), low)
            fmc(target, FmcCommand.PROGRAM, M2354.otp.entry_address(entry) + 4, high)
        FileProgrammer(session).program(str(image), base_address=0, file_format="bin")
        target.reset_and_halt()
        for value in M2354.unlock_sequence:
            target.write32(M2354.reglctl, value)
        target.write32(FMC.base + FMC.ispctl, FMC.ispen | FMC.cfguen)
        fmc(target, FmcCommand.PROGRAM, M2354.debug_lock.config_address, 0xFFFFFFFF & ~M2354.debug_lock.mask)
        with contextlib.suppress(Exception):  # the locked port stops answering during pyOCD's reset check
            target.reset()
    return uid


class SerialHost:
    def __init__(self, device: serial.Serial) -> None:
        self.device = device

    def exchange(self, session: HostSession, raw: bytes) -> m.Reply:
        for _ in range(8):
            self.device.reset_input_buffer()
            self.device.write(raw)
            answer = self.device.read(PACKET_SIZE)
            if len(answer) == PACKET_SIZE:
                try:
                    reply = session.receive(answer)
                except ProtocolError:
                    raw = session.resend()
                    continue
                if reply.status is not Status.ERR_CMD_CHECKSUM:
                    return reply
            raw = session.resend()
        raise TimeoutError("no answer after 8 tries")

    def open_session(self, session: HostSession) -> None:
        assert self.exchange(session, session.resync()).ok
        assert self.exchange(session, session.connect()).ok
        while session.phase is not Phase.READY:
            assert self.exchange(session, session.key_exchange()).ok


def uart_steps(
    uart: str, baud: int, isp_keys: dict[str, str], app_key: ec.EllipticCurvePrivateKey, app: bytes
) -> str:
    station_key = ec.generate_private_key(ec.SECP256R1())
    rom_key = public_key_from_raw(bytes.fromhex(isp_keys["rom_public_key"]))
    boot_key = public_key_from_raw(bytes.fromhex(isp_keys["bootloader_public_key"]))
    with serial.Serial(uart, baud, timeout=1.0) as device:
        host = SerialHost(device)
        rom = HostSession(Role.ROM, station_key, rom_key)
        host.open_session(rom)
        entries = M2354.app_key_hash_entries(raw_public_key(app_key.public_key()))
        for entry, (low, high) in entries.items():
            assert host.exchange(rom, rom.send(m.WriteOtp(entry, low, high))).ok
        device.write(rom.send(m.RebootToBootloader()))  # the board resets: nothing answers
        boot = HostSession(Role.BOOTLOADER, station_key, boot_key)
        host.open_session(boot)
        slot = M2354.application_slot
        padded = app + b"\xff" * (-len(app) % 4)
        pages = -(-len(padded) // M2354.aprom.page_size)
        assert host.exchange(boot, boot.send(m.Erase(slot.base, pages))).ok
        assert host.exchange(boot, boot.send(m.SetMassWrite(slot.base, len(padded)))).ok
        for offset in range(0, len(padded), 48):
            assert host.exchange(boot, boot.send(m.MassWrite(offset // 48, padded[offset : offset + 48]))).ok
        verify = host.exchange(boot, boot.send(m.VerifyImage(slot.base)))
        if not verify.ok:
            return str(verify.status)
        assert host.exchange(boot, boot.send(m.Disconnect())).ok
        return "application"


def provision(
    unique_id: str, uart: str, *, baud: int, isp_keys: dict[str, str], workdir: str, app_size: int
) -> dict[str, Any]:
    """Run in a worker process: the whole sequence for the board in one station."""
    started = time.monotonic()
    boot_key = ec.generate_private_key(ec.SECP256R1())
    app_key = ec.generate_private_key(ec.SECP256R1())
    folder = Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    uid = debug_steps(unique_id, folder, boot_key)
    app = mcuboot.build(
        os.urandom(app_size),
        signer=mcuboot.private_key_signer(app_key),
        public_key=app_key.public_key(),
        version=mcuboot.Version(1),
        key_format=mcuboot.KeyFormat.FULL,
        header_size=M2354.application_slot.header_size,
        load_addr=M2354.application_slot.base,
    )
    outcome = uart_steps(uart, baud, isp_keys, app_key, app)
    return {"uid": uid, "outcome": outcome, "seconds": time.monotonic() - started}
