"""SecureISP packets: layout, every malformed field, and properties over arbitrary bytes."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nuwire.crc import crc16_ccitt_false, crc32
from nuwire.errors import ProtocolError
from nuwire.secureisp.commands import STATUS_MEANING, Command, Status, status_of
from nuwire.secureisp.packet import (
    PACKET_SIZE,
    Packet,
    PacketAssembler,
    SessionCipher,
    decode,
    encode,
    peek_command,
)

KEY = bytes(range(32))
IV = bytes(range(100, 116))
PROPERTY = settings(max_examples=1000, deadline=None)

packets = st.builds(
    Packet,
    command=st.integers(0, 0xFFFF),
    packet_id=st.integers(0, 0xFFFF),
    data=st.binary(max_size=48),
)
ciphers = st.one_of(st.none(), st.just(SessionCipher(KEY, IV)))


def test_layout_of_a_plaintext_packet() -> None:
    raw = encode(Packet(Command.CONNECT, 7, b"\x01\x02\x03\x04"), None)
    assert len(raw) == PACKET_SIZE
    crc16, command, packet_id, length = struct.unpack_from("<HHHH", raw)
    assert (command, packet_id, length) == (0x80, 7, 4)
    assert raw[8:12] == b"\x01\x02\x03\x04"
    assert raw[12:56] == bytes(44)
    assert crc16 == crc16_ccitt_false(raw[2:56])
    assert struct.unpack_from("<II", raw, 56) == (crc32(raw[:56]), 0)


def test_encryption_covers_only_the_data_and_crc16_is_over_plaintext() -> None:
    cipher = SessionCipher(KEY, IV)
    packet = Packet(Command.GET_ID, 0, b"abcd" * 12)
    plain, secret = encode(packet, None), encode(packet, cipher)
    assert plain[:8] == secret[:8]
    assert plain[8:56] != secret[8:56]
    assert cipher.decrypt(secret[8:56]) == plain[8:56]
    assert decode(secret, cipher) == packet
    assert "hidden" in repr(cipher)


def test_same_iv_for_every_packet_is_wire_compatible() -> None:
    cipher = SessionCipher(KEY, IV)
    first = encode(Packet(0x85, 0, b"same"), cipher)
    second = encode(Packet(0x85, 0, b"same"), cipher)
    assert first == second  # the known weakness, reproduced on purpose (docs/protocols.md)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"\0" * 63, "packet size"),
        (b"\0" * 65, "packet size"),
    ],
)
def test_wrong_size_is_rejected(raw: bytes, field: str) -> None:
    with pytest.raises(ProtocolError) as error:
        decode(raw, None)
    assert error.value.field == field
    assert error.value.expected == 64
    assert error.value.actual == len(raw)


def test_each_corrupted_field_names_itself() -> None:
    raw = bytearray(encode(Packet(Command.GET_ID, 1, b"xyzw"), None))
    raw[20] ^= 1
    with pytest.raises(ProtocolError, match="crc32") as error:
        decode(bytes(raw), None)
    assert error.value.detail == "packet corrupted in transit"

    body = bytearray(encode(Packet(Command.GET_ID, 1, b"xyzw"), None))
    body[0] ^= 0xFF
    body[56:60] = crc32(bytes(body[:56])).to_bytes(4, "little")
    with pytest.raises(ProtocolError, match="crc16"):
        decode(bytes(body), None)

    long = bytearray(encode(Packet(Command.GET_ID, 1, b""), None))
    long[6:8] = (49).to_bytes(2, "little")
    long[0:2] = crc16_ccitt_false(bytes(long[2:56])).to_bytes(2, "little")
    long[56:60] = crc32(bytes(long[:56])).to_bytes(4, "little")
    with pytest.raises(ProtocolError, match="length: expected <= 48, got 49"):
        decode(bytes(long), None)


def test_wrong_key_is_reported_as_crc16() -> None:
    raw = encode(Packet(Command.GET_ID, 0, b"data"), SessionCipher(KEY, IV))
    with pytest.raises(ProtocolError) as error:
        decode(raw, SessionCipher(bytes(32), IV))
    assert error.value.field == "crc16"


def test_packet_fields_are_bounded() -> None:
    with pytest.raises(ProtocolError, match="command"):
        Packet(0x10000, 0)
    with pytest.raises(ProtocolError, match="packet_id"):
        Packet(0, -1)
    with pytest.raises(ProtocolError, match="length"):
        Packet(0, 0, bytes(49))
    with pytest.raises(ProtocolError, match="session key length"):
        SessionCipher(bytes(16), IV)
    with pytest.raises(ProtocolError, match="session IV length"):
        SessionCipher(KEY, bytes(8))


def test_words_and_command_peek() -> None:
    packet = Packet(0x8000, 0, b"\x01\0\0\0\x02")
    assert packet.word(0) == 1
    assert packet.word(1) == 2
    assert packet.word(5) == 0
    assert peek_command(encode(packet, None)) == 0x8000


def test_status_table() -> None:
    assert status_of(0x7D) is Status.ERR_CMD_CHECKSUM
    assert status_of(0x1234) == 0x1234
    assert set(STATUS_MEANING) == set(Status)


@PROPERTY
@given(raw=st.binary(min_size=0, max_size=80), cipher=ciphers)
def test_any_bytes_decode_or_raise_protocol_error(raw: bytes, cipher: SessionCipher | None) -> None:
    try:
        packet = decode(raw, cipher)
    except ProtocolError:
        return
    assert len(raw) == PACKET_SIZE
    assert len(packet.data) <= 48


@PROPERTY
@given(raw=st.binary(min_size=64, max_size=64), cipher=ciphers)
def test_any_64_bytes_with_valid_crc32_decode_or_raise(raw: bytes, cipher: SessionCipher | None) -> None:
    fixed = raw[:56] + crc32(raw[:56]).to_bytes(4, "little") + raw[60:]
    outcome: ProtocolError | Packet
    try:
        outcome = decode(fixed, cipher)
    except ProtocolError as error:
        outcome = error
    assert isinstance(outcome, Packet) or outcome.field in {"crc16", "length"}


@PROPERTY
@given(packet=packets, cipher=ciphers)
def test_encode_then_decode_is_identity(packet: Packet, cipher: SessionCipher | None) -> None:
    assert decode(encode(packet, cipher), cipher) == packet


@PROPERTY
@given(
    stream=st.lists(packets, max_size=6),
    cuts=st.lists(st.integers(0, 400), max_size=12),
)
def test_assembler_gives_the_same_packets_whatever_the_chunking(
    stream: list[Packet], cuts: list[int]
) -> None:
    wire = b"".join(encode(packet, None) for packet in stream) + b"\x55" * 10
    whole = PacketAssembler().feed(wire)
    bytewise = PacketAssembler()
    one_at_a_time = [raw for i in range(len(wire)) for raw in bytewise.feed(wire[i : i + 1])]
    chunked = PacketAssembler()
    edges = sorted({0, len(wire), *(c for c in cuts if c < len(wire))})
    pieces = [raw for a, b in itertools.pairwise(edges) for raw in chunked.feed(wire[a:b])]
    assert whole == one_at_a_time == pieces
    assert [decode(raw, None) for raw in whole] == stream
    assert bytewise.pending == chunked.pending == 10


def test_assembler_reset_drops_a_partial_packet_and_counts_it() -> None:
    assembler = PacketAssembler()
    good = encode(Packet(Command.GET_ID, 0), None)
    assert assembler.feed(good[:30]) == []
    assembler.reset()
    assert assembler.dropped_bytes == 30
    assert assembler.feed(good) == [good]
    assert "dropped=30" in repr(assembler)
