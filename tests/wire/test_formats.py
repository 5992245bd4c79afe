"""Keys and OTP words, identities and the OBJ_ID record, target profiles, command payloads."""

from __future__ import annotations

import contextlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from nuwire import ids, keys
from nuwire.errors import ProtocolError
from nuwire.profiles import M2354, FmcCommand, profile
from nuwire.secureisp import messages as m
from nuwire.secureisp.commands import Command, Status, Vendor
from tests.wire.vectors import host_key

PROPERTY = settings(max_examples=1000, deadline=None)
words = st.integers(0, 0xFFFFFFFF)


def test_raw_public_key_round_trip_and_refusals() -> None:
    public = host_key().public_key()
    raw = keys.raw_public_key(public)
    assert keys.raw_public_key(keys.public_key_from_raw(raw)) == raw
    with pytest.raises(ProtocolError, match="public key length"):
        keys.public_key_from_raw(raw[:10])
    with pytest.raises(ProtocolError, match="a point on P-256"):
        keys.public_key_from_raw(bytes(64))
    with pytest.raises(ProtocolError, match="curve"):
        keys.raw_public_key(ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(ProtocolError, match="public key length"):
        keys.key_hash(b"short")
    assert keys.public_key_der(public).startswith(b"\x30")


def test_otp_entry_conversion_refusals() -> None:
    with pytest.raises(ProtocolError, match="OTP data length"):
        keys.to_otp_entries(b"1234567")
    with pytest.raises(ProtocolError, match="OTP data length"):
        keys.to_otp_entries(b"")
    with pytest.raises(ProtocolError, match="OTP entry 1 high word"):
        keys.from_otp_entries([(0, 0), (0, 1 << 32)])


@PROPERTY
@given(data=st.binary(min_size=8, max_size=128).filter(lambda b: len(b) % 8 == 0))
def test_otp_entries_round_trip(data: bytes) -> None:
    assert keys.from_otp_entries(keys.to_otp_entries(data)) == data


def test_uid_text() -> None:
    assert ids.format_uid((0x12345678, 0x9ABCDEF0, 1)) == "123456789ABCDEF000000001"
    assert ids.parse_uid("123456789ABCDEF000000001") == (0x12345678, 0x9ABCDEF0, 1)
    for bad in ("123", "123456789abcdef000000001", "G23456789ABCDEF000000001"):
        with pytest.raises(ProtocolError, match="UID"):
            ids.parse_uid(bad)
    with pytest.raises(ProtocolError, match="UID words"):
        ids.format_uid([1, 2])
    with pytest.raises(ProtocolError, match="UID2"):
        ids.format_uid((1, 2, -1))


def test_obj_id_text_and_record() -> None:
    obj_id = bytes(range(16))
    text = ids.format_obj_id(obj_id)
    assert text == "000102030405060708090a0b0c0d0e0f"
    assert ids.parse_obj_id(text) == obj_id
    with pytest.raises(ProtocolError, match="OBJ_ID"):
        ids.parse_obj_id(text.upper())
    with pytest.raises(ProtocolError, match="OBJ_ID length"):
        ids.format_obj_id(b"short")
    record = ids.encode_obj_id_record(obj_id)
    assert len(record) == ids.RECORD_SIZE
    assert record[:4] == b"OBJI"
    assert ids.decode_obj_id_record(record) == obj_id
    assert ids.decode_obj_id_record(b"\xff" * ids.RECORD_SIZE) is None


@pytest.mark.parametrize(
    ("offset", "field"),
    [(0, "magic"), (4, "version"), (6, "length"), (10, "crc32"), (25, "crc32")],
)
def test_obj_id_record_damage_is_named(offset: int, field: str) -> None:
    record = bytearray(ids.encode_obj_id_record(bytes(16)))
    record[offset] ^= 0x01
    with pytest.raises(ProtocolError, match=f"OBJ_ID record {field}"):
        ids.decode_obj_id_record(bytes(record))


@PROPERTY
@given(raw=st.binary(min_size=28, max_size=28) | st.binary(max_size=40))
def test_any_bytes_decode_as_a_record_or_raise(raw: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        ids.decode_obj_id_record(raw)


@PROPERTY
@given(obj_id=st.binary(min_size=16, max_size=16))
def test_record_round_trip(obj_id: bytes) -> None:
    assert ids.decode_obj_id_record(ids.encode_obj_id_record(obj_id)) == obj_id


def test_m2354_profile() -> None:
    assert profile("M2354") is M2354
    with pytest.raises(ProtocolError, match="target profile"):
        profile("M9999")
    assert M2354.reglctl == 0x40000100
    assert M2354.otp.entry_address(8) == 0x00310040
    assert M2354.otp.lock_address(1) == 0x00310804
    with pytest.raises(ProtocolError, match="OTP entry"):
        M2354.otp.entry_address(256)
    assert M2354.aprom.contains(M2354.application_slot.base, M2354.application_slot.size)
    assert not M2354.aprom.contains(0x000FFFFC, 8)
    assert M2354.aprom.end == 0x100000
    assert M2354.bootloader_slot.base + M2354.bootloader_slot.size == M2354.application_slot.base
    assert M2354.data_flash.contains(M2354.objid_record, ids.RECORD_SIZE)
    assert M2354.debug_lock.mask == 1 << 11
    assert M2354.debug_lock.is_locked(0xFFFFF7FF)
    assert not M2354.debug_lock.is_locked(0xFFFFFFFF)
    assert M2354.fmc.base + M2354.fmc.ispcmd == 0x4000C00C
    assert int(FmcCommand.READ_64) == 0x40


def test_request_payloads_follow_nuvotons_layouts() -> None:
    assert m.GetId().to_payload() == b""
    assert m.GetId().index is None
    assert m.Erase(0x20000, 2).to_payload() == struct.pack("<II", 0x20000, 2)
    assert m.Write(4, b"abcd").to_payload() == struct.pack("<II", 4, 4) + b"abcd"
    assert m.SetMassWrite(0x20000, 96).to_payload() == struct.pack("<II", 0x20000, 96)
    assert m.MassWrite(5, bytes(4)).to_payload() == bytes(4)
    assert m.MassWrite(5, bytes(4)).index == 5
    assert m.Reset(1).to_payload() == struct.pack("<I", 1)
    assert not m.Reset.ANSWERED
    assert m.ReadOtp(8).to_payload() == struct.pack("<III", 0, Vendor.READ_OTP, 8)
    assert m.WriteOtp(8, 1, 2).to_payload() == struct.pack("<IIIII", 0, Vendor.WRITE_OTP, 8, 1, 2)
    assert m.RebootToBootloader().to_payload() == struct.pack("<II", 0, Vendor.REBOOT_TO_BOOTLOADER)
    assert not m.RebootToBootloader.ANSWERED
    assert m.VerifyImage(0x20000).to_payload() == struct.pack("<III", 0, Vendor.VERIFY_IMAGE, 0x20000)
    assert m.Disconnect().COMMAND == Command.DISCONNECT
    assert m.ReadConfig().COMMAND == Command.READ_CONFIG


def test_request_refusals() -> None:
    with pytest.raises(ProtocolError, match="WRITE byte count"):
        m.Write(0, b"abc")
    with pytest.raises(ProtocolError, match="MASS_WRITE packet id"):
        m.MassWrite(70000, bytes(4))
    with pytest.raises(ProtocolError, match="MASS_WRITE byte count"):
        m.MassWrite(0, bytes(50))
    with pytest.raises(ProtocolError, match="RESET mode"):
        m.Reset(3)
    with pytest.raises(ProtocolError, match="data word"):
        m.ReadOtp(-1).to_payload()


def test_reply_payloads_round_trip() -> None:
    info = m.ConnectInfo(0xA1735440, bytes(range(16)), 3)
    assert m.ConnectInfo.from_payload(info.to_payload()) == info
    device = m.DeviceId(1, (2, 3, 4), (5, 6, 7, 8), 0xDA)
    assert m.DeviceId.from_payload(device.to_payload()) == device
    with pytest.raises(ProtocolError, match="GET_ID reply data length"):
        m.DeviceId.from_payload(bytes(8))
    with pytest.raises(ProtocolError, match="VERIFY_IMAGE data length"):
        m.single_word(b"", "VERIFY_IMAGE")
    otp = m.Reply.from_data(Command.VENDOR, 0x8001, m.vendor_reply(Status.OK, 10, 1, 2))
    assert m.OtpValue.from_reply(otp, 10) == m.OtpValue(10, 1, 2)
    assert not m.OtpValue(10, 1, 2).blank
    assert m.OtpValue(1, 0xFFFFFFFF, 0xFFFFFFFF).blank
    with pytest.raises(ProtocolError, match="an answer for another entry"):
        m.OtpValue.from_reply(otp, 11)
    with pytest.raises(ProtocolError, match="vendor reply byte count"):
        m.Reply.from_data(Command.VENDOR, 1, struct.pack("<III", 0, 8, 1)).vendor_data()
    with pytest.raises(ProtocolError, match="vendor reply length"):
        m.Reply.from_data(Command.VENDOR, 1, struct.pack("<I", 0)).vendor_data()
    reply = m.Reply.from_data(0x85, 1, bytes([0x7B, 0, 0, 0, 9]))
    assert (reply.status, reply.payload, reply.ok) == (Status.ERR_ISP_WRITE, b"\x09", False)


def test_short_replies_are_refused() -> None:
    with pytest.raises(ProtocolError, match="reply data length"):
        m.Reply.from_data(0x85, 1, b"\0")
    with pytest.raises(ProtocolError, match="CONNECT reply length"):
        m.ConnectInfo.from_payload(bytes(8))
    assert m.single_word(b"\x01\0\0\0", "GET_VERSION") == 1
