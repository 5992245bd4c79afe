"""The board's ROM and bootloader answering SecureISP, driven in-process (the pty tests drive the
same over a serial device)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from boardsim.board import Board
from boardsim.isp import BoardIsp
from boardsim.state import StateStore
from nuwire.keys import raw_public_key
from nuwire.profiles import M2354
from nuwire.secureisp import messages as m
from nuwire.secureisp.commands import Status
from nuwire.secureisp.states import Role
from tests.boardsim.helpers import Keys, connect, exchange, host, install_bootloader, signed

UID = (0x0A0B0C0D, 0x11223344, 0x55667788)


@pytest.fixture
def keys() -> Keys:
    return Keys.make()


def booted(board: Board) -> str:
    return board.booted


def ready_board(keys: Keys, state_dir: Path | None = None) -> tuple[Board, BoardIsp]:
    board = Board(M2354, UID)
    if state_dir is not None:
        StateStore(state_dir).attach(board)
    board.reset("power on")
    install_bootloader(board, keys)
    return board, BoardIsp(board, keys.isp)


def write_app_hash(keys: Keys, isp: BoardIsp) -> None:
    rom = host(Role.ROM, keys)
    connect(rom, isp)
    device = m.DeviceId.from_payload(exchange(rom, isp, rom.send(m.GetId())).payload)
    assert device.uid == UID
    entries = M2354.app_key_hash_entries(raw_public_key(keys.app.public_key()))
    for entry, (low, high) in entries.items():
        assert m.OtpValue.from_payload(exchange(rom, isp, rom.send(m.ReadOtp(entry))).payload).blank
        assert exchange(rom, isp, rom.send(m.WriteOtp(entry, low, high))).ok
    assert exchange(rom, isp, rom.send(m.RebootToBootloader())).ok


def download(keys: Keys, isp: BoardIsp, image: bytes, digest: bytes | None = None) -> m.Reply:
    boot = host(Role.BOOTLOADER, keys)
    connect(boot, isp)
    slot = M2354.application_slot
    assert exchange(
        boot, isp, boot.send(m.DlBegin(slot.base, len(image), digest or hashlib.sha256(image).digest()))
    ).ok
    padded = image + b"\xff" * (-len(image) % 4)
    for index in range(0, len(padded), 48):
        assert exchange(boot, isp, boot.send(m.MassWrite(index // 48, padded[index : index + 48]))).ok
    return exchange(boot, isp, boot.send(m.DlFinish()))


def test_rom_then_bootloader_boots_a_signed_application(keys: Keys, tmp_path: Path) -> None:
    board, isp = ready_board(keys, tmp_path)
    assert board.bootloader_valid
    write_app_hash(keys, isp)
    assert board.booted == "bootloader"
    image = signed(os.urandom(10_000), keys.app, "application", full=True)
    finish = download(keys, isp, image)
    assert finish.ok
    assert m.single_word(finish.payload, "DL_FINISH") == len(image)
    assert booted(board) == "application"
    assert isp.handle(b"\0" * 64) is None  # the application does not speak SecureISP
    state = json.loads((tmp_path / board.uid_text / "state.json").read_text())
    assert state["booted"] == "application"
    assert state["uid"] == "0A0B0C0D1122334455667788"
    assert state["otp_program_counts"][16:24] == [1] * 8
    assert (tmp_path / board.uid_text / "otp.bin").read_bytes()[64:96] == hashlib.sha256(
        raw_public_key(keys.app.public_key())
    ).digest()


def _refused(keys: Keys, image: bytes, digest: bytes | None = None) -> tuple[Board, m.Reply]:
    board, isp = ready_board(keys)
    write_app_hash(keys, isp)
    return board, download(keys, isp, image, digest)


def test_tampered_image_is_refused_and_not_booted(keys: Keys) -> None:
    image = bytearray(signed(os.urandom(5000), keys.app, "application", full=True))
    image[0x500] ^= 1
    board, reply = _refused(keys, bytes(image))
    assert reply.status is Status.ERR_DL_SIGNATURE
    assert board.booted == "bootloader"
    assert board.events[-1]["reason"] == "SHA256 TLV does not match the image"


def test_image_signed_with_another_key_is_refused(keys: Keys) -> None:
    other = Keys.make().app
    board, reply = _refused(keys, signed(os.urandom(5000), other, "application", full=True))
    assert reply.status is Status.ERR_DL_KEY
    assert board.booted == "bootloader"
    assert "does not hash to OTP" in str(board.events[-1]["reason"])


def test_digest_mismatch_and_garbage_are_refused(keys: Keys) -> None:
    image = signed(os.urandom(500), keys.app, "application", full=True)
    board, reply = _refused(keys, image, digest=bytes(32))
    assert reply.status is Status.ERR_DL_DIGEST
    board, reply = _refused(keys, os.urandom(480))
    assert reply.status is Status.ERR_DL_FORMAT
    assert board.booted == "bootloader"


def test_rom_refuses_second_otp_write_and_reboot_without_bootloader(keys: Keys) -> None:
    board = Board(M2354, UID)
    board.reset("power on")
    assert not board.bootloader_valid
    assert board.events[-1]["reason"] == "no bootloader key in OTP"
    isp = BoardIsp(board, keys.isp)
    rom = host(Role.ROM, keys)
    connect(rom, isp)
    assert exchange(rom, isp, rom.send(m.WriteOtp(8, 1, 2))).ok
    exchange(rom, isp, rom.send(m.GetId()))
    assert exchange(rom, isp, rom.send(m.WriteOtp(8, 1, 2))).status is Status.ERR_ISP_WRITE
    assert board.otp_program_counts[16:18] == [1, 1]  # the ROM checks before it programs
    assert exchange(rom, isp, rom.send(m.RebootToBootloader())).status is Status.ERR_NO_BOOTLOADER
    assert board.booted == "rom"
    assert board.events[-1]["status"] == "ERR_NO_BOOTLOADER"


def test_bootloader_refuses_download_without_key_hash(keys: Keys) -> None:
    board, isp = ready_board(keys)
    rom = host(Role.ROM, keys)
    connect(rom, isp)
    assert exchange(rom, isp, rom.send(m.RebootToBootloader())).ok
    boot = host(Role.BOOTLOADER, keys)
    connect(boot, isp)
    reply = exchange(boot, isp, boot.send(m.DlBegin(M2354.application_slot.base, 100, bytes(32))))
    assert reply.status is Status.ERR_DL_NO_KEY
    assert board.events[-1]["reason"] == "OTP entries 8..11 hold no application key hash"


def test_corrupted_packet_is_refused_and_recorded(keys: Keys) -> None:
    board, isp = ready_board(keys)
    rom = host(Role.ROM, keys)
    connect(rom, isp)
    raw = bytearray(rom.send(m.GetId()))
    raw[33] ^= 0x10
    assert exchange(rom, isp, bytes(raw)).status is Status.ERR_CMD_CHECKSUM
    assert board.events[-1]["status"] == "ERR_CMD_CHECKSUM"
    assert exchange(rom, isp, rom.resend()).ok
