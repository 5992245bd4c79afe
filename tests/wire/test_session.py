"""The host's SecureISP session against the simulator's model of Nuvoton's target."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from boardsim.board import Board
from boardsim.isp import BoardChip
from boardsim.secureisp import SecureIspTarget
from boardsim.vendor import VendorCode
from nuwire.errors import ProtocolError, StaleReply, TransitionError
from nuwire.keys import raw_public_key
from nuwire.profiles import M2354
from nuwire.secureisp import messages as m
from nuwire.secureisp.commands import Command, Status
from nuwire.secureisp.firmware import NUVOTON_DEMO, NUVOTON_FIXEDKEY, Firmware
from nuwire.secureisp.packet import Packet, encode
from nuwire.secureisp.session import FIRST_PACKET_ID, HostSession, Kdf, _present
from nuwire.secureisp.states import Phase, Role, mermaid, next_phase


def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pair(kdf: Kdf = Kdf.RAW, firmware: Firmware = NUVOTON_DEMO) -> tuple[HostSession, SecureIspTarget]:
    target_key = key()
    chip = BoardChip(Board(M2354, (1, 2, 3)))
    target = SecureIspTarget(chip, target_key, VendorCode(chip), kdf=kdf)
    host = HostSession(Role.ROM, key(), target_key.public_key(), kdf=kdf, firmware=firmware)
    return host, target


def answer(host: HostSession, target: SecureIspTarget, raw: bytes) -> m.Reply:
    response = target.handle(raw).response
    assert response is not None
    return host.receive(response)


def handshake(host: HostSession, target: SecureIspTarget, until: Phase = Phase.READY) -> None:
    assert answer(host, target, host.resync()).ok
    assert answer(host, target, host.connect()).ok
    while host.phase is not until:
        assert answer(host, target, host.key_exchange()).ok
    assert host.encrypted or until is not Phase.READY


def forged_answer(host: HostSession, raw: bytes, payload: bytes) -> bytes:
    """An OK answer to the request ``raw`` carrying ``payload``, under the host's key."""
    pending = host._pending  # the key the answer must be under
    assert pending is not None
    reply = m.Reply(pending.command, int.from_bytes(raw[4:6], "little"), Status.OK, payload)
    return encode(Packet(reply.command, reply.packet_id, reply.to_data()), pending.cipher)


def test_handshake_and_commands_with_unique_packet_ids() -> None:
    host, target = pair()
    handshake(host, target)
    first = host.send(m.GetId())
    reply = host.receive(target.handle(first).response or b"")
    assert reply.packet_id >= FIRST_PACKET_ID
    assert m.DeviceId.from_payload(reply.payload).uid == (1, 2, 3)
    ids = {reply.packet_id}
    for entry in (10, 11):
        raw = host.send(m.ReadOtp(entry))
        value = m.OtpValue.from_reply(host.receive(target.handle(raw).response or b""), entry)
        assert value.blank
        assert value.entry == entry
        ids.add(int.from_bytes(raw[4:6], "little"))
    assert len(ids) == 3
    assert host.connect_info is not None
    assert host.connect_info.pdid == M2354.pdid
    assert "ready" in repr(host)


def test_a_late_answer_for_another_entry_is_rejected() -> None:
    """After a resend, the late answer for entry 10 arrives while entry 11 is outstanding."""
    host, target = pair()
    handshake(host, target)
    late = target.handle(host.send(m.ReadOtp(10))).response or b""
    assert m.OtpValue.from_reply(host.receive(late), 10).entry == 10
    raw = host.send(m.ReadOtp(11))
    with pytest.raises(StaleReply):
        host.receive(late)  # the duplicate of entry 10's answer: never taken for entry 11
    assert "pending" in repr(host)
    assert host.resend() == raw
    assert m.OtpValue.from_reply(host.receive(target.handle(raw).response or b""), 11).entry == 11


def test_unanswered_requests_close_the_session_and_resync_restarts_it() -> None:
    host, target = pair()
    handshake(host, target)
    handled = target.handle(host.send(m.Reset(0)))
    assert handled.reset
    assert handled.response is None
    assert host.phase is Phase.CLOSED
    assert not host.encrypted
    with pytest.raises(TransitionError):
        host.send(m.GetId())
    with pytest.raises(TransitionError):
        host.resend()


def test_resync_under_a_key_is_understood_also_a_foreign_one() -> None:
    host, target = pair()
    handshake(host, target)
    assert answer(host, target, host.resync()).ok  # answered under the session key
    assert host.phase is Phase.IDLE
    assert not host.encrypted
    handshake(host, target)
    other = HostSession(Role.ROM, key(), key().public_key())
    assert answer(other, target, other.resync()).ok  # a key this host never held
    damaged = bytearray(target.handle(host.resync()).response or b"")
    damaged[60] ^= 1  # reserved bytes: ignored
    assert host.receive(bytes(damaged)).ok
    raw = host.resync()
    broken = bytearray(target.handle(raw).response or b"")
    broken[20] ^= 1
    with pytest.raises(ProtocolError, match="crc32"):
        host.receive(bytes(broken))


def test_refusals_that_end_nuvotons_secureisp_fail_the_session() -> None:
    host, target = pair()
    handshake(host, target)
    raw = bytearray(host.send(m.GetVersion()))
    raw[30] ^= 1
    reply = host.receive(target.handle(bytes(raw)).response or b"")
    assert reply.status == Status.ERR_CMD_CHECKSUM
    assert host.phase is Phase.FAILED
    assert target.handle(host.resync()).response is None  # silent until a reset
    host, target = pair()
    handshake(host, target)
    reply = answer(host, target, host.send(m.Erase(0x20001, 1)))
    assert reply.status == Status.ERR_PAGE_ALIGN
    assert host.phase is Phase.READY


def test_static_key_is_checked_as_the_firmware_sends_it() -> None:
    host, target = pair(firmware=NUVOTON_FIXEDKEY)  # the target sends it as NUVOTON_DEMO does
    assert answer(host, target, host.resync()).ok
    assert answer(host, target, host.connect()).ok
    assert answer(host, target, host.key_exchange()).ok
    assert answer(host, target, host.key_exchange()).ok
    with pytest.raises(ProtocolError, match="as nuvoton-secureisp-fixedkey sends it"):
        answer(host, target, host.key_exchange())
    assert host.phase is Phase.FAILED
    raw = raw_public_key(key().public_key())
    assert NUVOTON_FIXEDKEY.static_key_on_wire(raw) == raw
    sent = NUVOTON_DEMO.static_key_on_wire(raw)
    assert sent[:4] == raw[28:32]
    assert sent[4:32] == raw[:28][::-1]
    with pytest.raises(ProtocolError, match="static_key_swapped"):
        Firmware("bad", 33)


def test_refused_key_exchange_fails_the_session() -> None:
    host, target = pair()
    assert answer(host, target, host.resync()).ok
    assert answer(host, target, host.connect()).ok
    bad = encode(Packet(Command.ECDH_PUB0, 1, b"\x07" * 32), None)
    host._pending = None  # a host that sent a point off the curve
    host.phase = Phase.STATIC_X_SENT
    target.handle(bad)
    assert answer(host, target, host.key_exchange()).status == Status.ERR_PARAMETER  # PUB1
    assert host.phase is Phase.FAILED


def test_random_key_and_coordinate_checks() -> None:
    host, target = pair(kdf=Kdf.HKDF_SHA256)
    handshake(host, target)
    assert answer(host, target, host.send(m.GetId())).ok
    host, target = pair()
    handshake(host, target, until=Phase.RANDOM_X_RECEIVED)
    raw = host.key_exchange()
    with pytest.raises(ProtocolError, match="target random key"):
        host.receive(forged_answer(host, raw, b"\x07" * 32))  # not a point on P-256
    assert host.phase.value == "failed"
    host, target = pair()
    handshake(host, target, until=Phase.RANDOM_SENT)
    raw = host.key_exchange()
    with pytest.raises(ProtocolError, match="reply length"):
        host.receive(forged_answer(host, raw, bytes(8)))


def test_host_refuses_illegal_steps() -> None:
    host, _target = pair()
    with pytest.raises(TransitionError):
        host.key_exchange()
    with pytest.raises(TransitionError):
        host.send(m.GetId())
    with pytest.raises(ProtocolError, match="nothing outstanding"):
        host.receive(bytes(64))
    host.connect()
    with pytest.raises(TransitionError, match="outstanding"):
        host.disconnect()
    with pytest.raises(ProtocolError, match="IV length"):
        HostSession(Role.ROM, key(), key().public_key(), iv=b"")
    with pytest.raises(TransitionError):
        _present(None, "x")
    assert next_phase(Phase.READY, 0x1234) is None
    assert "stateDiagram-v2" in mermaid()
    assert "READY" not in mermaid()
    host2, target2 = pair()
    handshake(host2, target2)
    assert answer(host2, target2, host2.disconnect()).ok
    assert host2.phase is Phase.CLOSED
