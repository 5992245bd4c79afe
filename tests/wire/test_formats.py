"""Keys and OTP words, identities and the OBJ_ID record, target profiles, command payloads."""

from __future__ import annotations

import contextlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from nuwire import ids, keys
from nuwire.errors import ProtocolError
from nuwire.profiles import M2354, FmcCommand, profile
from nuwire.secureisp import messages as m
from nuwire.secureisp.commands import Command, Status
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


request_strategy = st.one_of(
    st.builds(m.GetId),
    st.builds(m.GetVersion),
    st.builds(m.RebootToBootloader),
    st.builds(m.DlFinish),
    st.builds(m.ReadOtp, words),
    st.builds(m.WriteOtp, words, words, words),
    st.builds(m.Erase, words, words),
    st.builds(m.Write, words, st.binary(min_size=1, max_size=10).map(lambda b: b * 4)),
    st.builds(m.SetMassWrite, words, words),
    st.builds(m.Reset, st.integers(0, 2)),
    st.builds(m.DlBegin, words, words, st.binary(min_size=32, max_size=32)),
)


@PROPERTY
@given(request=request_strategy)
def test_request_payload_round_trip(request: m.Request) -> None:
    assert m.REQUESTS[request.COMMAND].from_payload(request.to_payload()) == request
    assert request.packet_id == 0


@PROPERTY
@given(command=st.sampled_from(sorted(m.REQUESTS)), data=st.binary(max_size=48))
def test_any_payload_decodes_or_raises(command: int, data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        m.REQUESTS[Command(command)].from_payload(data)


def test_request_refusals() -> None:
    with pytest.raises(ProtocolError, match="WRITE byte count"):
        m.Write(0, b"abc")
    with pytest.raises(ProtocolError, match="WRITE data length"):
        m.Write.from_payload(b"1234")
    with pytest.raises(ProtocolError, match="WRITE byte count"):
        m.Write.from_payload(bytes(8) + b"abcd")
    with pytest.raises(ProtocolError, match="MASS_WRITE packet id"):
        m.MassWrite(70000, bytes(4))
    with pytest.raises(ProtocolError, match="MASS_WRITE byte count"):
        m.MassWrite(0, bytes(50))
    with pytest.raises(ProtocolError, match="RESET mode"):
        m.Reset(3)
    with pytest.raises(ProtocolError, match="DL_BEGIN digest length"):
        m.DlBegin(0, 0, b"")
    with pytest.raises(ProtocolError, match="DL_BEGIN data length"):
        m.DlBegin.from_payload(bytes(8))
    with pytest.raises(ProtocolError, match="data word"):
        m.ReadOtp(-1).to_payload()
    mass = m.MassWrite.from_payload(bytes(8))
    assert (mass.packet_id, mass.data) == (0, bytes(8))
    assert m.MassWrite(5, bytes(4)).to_payload() == bytes(4)


def test_reply_payloads_round_trip() -> None:
    info = m.ConnectInfo(0xA1735440, bytes(range(16)), 3)
    assert m.ConnectInfo.from_payload(info.to_payload()) == info
    device = m.DeviceId(1, (2, 3, 4), (5, 6, 7, 8), 0xDA)
    assert m.DeviceId.from_payload(device.to_payload()) == device
    value = m.OtpValue(1, 2)
    assert m.OtpValue.from_payload(value.to_payload()) == value
    with pytest.raises(ProtocolError, match="GET_ID reply data length"):
        m.DeviceId.from_payload(bytes(8))
    with pytest.raises(ProtocolError, match="DL_FINISH data length"):
        m.single_word(b"", "DL_FINISH")
    reply = m.Reply.from_data(0x85, 1, bytes([0x7B, 0, 0, 0, 9]))
    assert (reply.status, reply.payload, reply.ok) == (Status.ERR_ISP_WRITE, b"\x09", False)
