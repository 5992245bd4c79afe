"""The board's ROM and bootloader behind Nuvoton's SecureISP with this project's vendor code."""

from __future__ import annotations

import os

from boardsim.board import Board
from boardsim.isp import BoardIsp
from nuwire.keys import raw_public_key
from nuwire.profiles import M2354
from nuwire.secureisp import messages as m
from nuwire.secureisp.commands import Status
from nuwire.secureisp.states import Role
from tests.boardsim.helpers import Keys, connect, exchange, host, install_bootloader, send, signed

UID = (0x53494D01, 1, 2)


def _board(keys: Keys, *, app_hash: bool = True) -> tuple[Board, BoardIsp]:
    board = Board(M2354, UID)
    install_bootloader(board, keys)
    isp = BoardIsp(board, keys.isp)
    rom = host(Role.ROM, keys)
    connect(rom, isp)
    if app_hash:
        for entry, (low, high) in M2354.app_key_hash_entries(raw_public_key(keys.app.public_key())).items():
            reply = send(rom, isp, m.WriteOtp(entry, low, high))
            assert reply is not None
            assert reply.ok
    assert send(rom, isp, m.RebootToBootloader()) is None
    assert board.booted == "bootloader"
    return board, isp


def _download(keys: Keys, isp: BoardIsp, image: bytes) -> m.Reply:
    boot = host(Role.BOOTLOADER, keys)
    connect(boot, isp)
    slot = M2354.application_slot
    padded = image + b"\xff" * (-len(image) % 4)
    assert (reply := send(boot, isp, m.Erase(slot.base, -(-len(padded) // 0x800))))
    assert reply.ok
    assert (reply := send(boot, isp, m.SetMassWrite(slot.base, len(padded))))
    assert reply.ok
    for offset in range(0, len(padded), 48):
        assert (reply := send(boot, isp, m.MassWrite(offset // 48, padded[offset : offset + 48])))
        assert reply.ok
    verify = send(boot, isp, m.VerifyImage(slot.base))
    assert verify is not None
    if verify.ok:
        assert (reply := send(boot, isp, m.Disconnect()))
        assert reply.ok
    return verify


def test_rom_then_bootloader_boots_a_signed_application() -> None:
    keys = Keys.make()
    board, isp = _board(keys)
    image = signed(os.urandom(3000), keys.app, "application", full=True)
    verify = _download(keys, isp, image)
    assert verify.ok
    assert m.single_word(verify.vendor_data(), "VERIFY_IMAGE") == len(image)
    assert board.booted == "application"
    assert isp.handle(bytes(64)) is None  # the application does not answer on the UART


def test_tampered_or_foreign_images_are_refused_and_not_booted() -> None:
    keys = Keys.make()
    board, isp = _board(keys)
    image = bytearray(signed(os.urandom(3000), keys.app, "application", full=True))
    image[0x500] ^= 1
    assert _download(keys, isp, bytes(image)).status == Status.ERR_IMAGE_SIGNATURE
    foreign = signed(os.urandom(3000), keys.boot, "application", full=True)
    board.reset("again")
    board.booted = "bootloader"
    assert _download(keys, isp, foreign).status == Status.ERR_IMAGE_KEY
    assert board.booted == "bootloader"


def test_no_key_hash_means_no_image_is_accepted() -> None:
    keys = Keys.make()
    _, isp = _board(keys, app_hash=False)
    image = signed(os.urandom(300), keys.app, "application", full=True)
    assert _download(keys, isp, image).status == Status.ERR_IMAGE_NO_KEY


def test_otp_word_is_programmed_once_and_a_different_value_is_refused() -> None:
    keys = Keys.make()
    board = Board(M2354, UID)
    install_bootloader(board, keys)
    isp = BoardIsp(board, keys.isp)
    rom = host(Role.ROM, keys)
    connect(rom, isp)
    first = send(rom, isp, m.WriteOtp(20, 0x11111111, 0xFFFFFFFF))  # the high word left blank
    assert first is not None
    assert first.ok
    again = send(rom, isp, m.WriteOtp(20, 0x11111111, 0x22222222))  # completes it, low untouched
    assert again is not None
    assert again.ok
    other = send(rom, isp, m.WriteOtp(20, 0x33333333, 0x22222222))
    assert other is not None
    assert other.status == Status.ERR_OTP_DIFFERENT
    value = m.OtpValue.from_reply(send(rom, isp, m.ReadOtp(20)) or other, 20)
    assert (value.low, value.high) == (0x11111111, 0x22222222)
    assert board.otp_program_counts[40:42] == [1, 1]


def test_damaged_request_ends_secureisp_until_a_reset() -> None:
    keys = Keys.make()
    board = Board(M2354, UID)
    install_bootloader(board, keys)
    isp = BoardIsp(board, keys.isp)
    rom = host(Role.ROM, keys)
    connect(rom, isp)
    raw = bytearray(rom.send(m.GetId()))
    raw[20] ^= 1
    assert exchange(rom, isp, bytes(raw)).status == Status.ERR_CMD_CHECKSUM
    answer = isp.handle(rom.resync())
    assert answer is not None
    assert answer.response is None
    assert any(e["decision"] == "isp ended" for e in board.events)
    board.reset("nRESET")
    fresh = host(Role.ROM, keys)
    assert exchange(fresh, isp, fresh.resync()).ok
    connect(fresh, isp)
