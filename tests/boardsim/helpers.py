"""Boards in known states, keys and signed images for the simulator's tests."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from boardsim.board import Board
from boardsim.isp import BoardIsp, IspKeys
from nuwire import mcuboot
from nuwire.keys import raw_public_key
from nuwire.profiles import M2354
from nuwire.secureisp import messages as m
from nuwire.secureisp.session import HostSession
from nuwire.secureisp.states import Phase, Role


def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class Keys:
    boot: ec.EllipticCurvePrivateKey
    app: ec.EllipticCurvePrivateKey
    station: ec.EllipticCurvePrivateKey
    isp: IspKeys

    @classmethod
    def make(cls) -> Keys:
        return cls(key(), key(), key(), IspKeys(rom=key(), bootloader=key()))


def signed(body: bytes, signing: ec.EllipticCurvePrivateKey, slot_name: str, *, full: bool) -> bytes:
    slot = getattr(M2354, f"{slot_name}_slot")
    return mcuboot.build(
        body,
        signer=mcuboot.private_key_signer(signing),
        public_key=signing.public_key(),
        version=mcuboot.Version(1, 0, 0),
        key_format=mcuboot.KeyFormat.FULL if full else mcuboot.KeyFormat.HASH,
        header_size=slot.header_size,
        load_addr=slot.base,
    )


def install_bootloader(board: Board, keys: Keys) -> None:
    """Steps 3-5 done directly on the model (the debug-side tests do them through pyOCD)."""
    image = signed(os.urandom(4096), keys.boot, "bootloader", full=False)
    base = M2354.bootloader_slot.base
    for offset in range(0, len(image) + 3, 4):
        board.program_flash_word(
            base + offset, int.from_bytes(image[offset : offset + 4].ljust(4, b"\xff"), "little")
        )
    for entry, (low, high) in M2354.bootloader_key_entries(raw_public_key(keys.boot.public_key())).items():
        address = M2354.otp.entry_address(entry)
        board.program_otp_word(address, low)
        board.program_otp_word(address + 4, high)
    board.reset("test setup")


def host(role: Role, keys: Keys) -> HostSession:
    target = keys.isp.rom if role is Role.ROM else keys.isp.bootloader
    return HostSession(role, keys.station, target.public_key())


def exchange(session: HostSession, isp: BoardIsp, raw: bytes) -> m.Reply:
    handled = isp.handle(raw)
    assert handled is not None
    assert handled.response is not None
    return session.receive(handled.response)


def send(session: HostSession, isp: BoardIsp, request: m.Request) -> m.Reply | None:
    """``request`` to the board: its answer, or None when the board reset without one."""
    handled = isp.handle(session.send(request))
    assert handled is not None
    if handled.response is None:
        assert handled.reset
        assert not request.ANSWERED
        return None
    return session.receive(handled.response)


def connect(session: HostSession, isp: BoardIsp) -> None:
    assert exchange(session, isp, session.connect()).ok
    while session.phase is not Phase.READY:
        assert exchange(session, isp, session.key_exchange()).ok
