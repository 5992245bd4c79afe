"""Known answers from Nuvoton's published values: CRCs, the key -> hash -> OTP vector, ECDH."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from nuwire.crc import crc16_ccitt_false, crc32
from nuwire.keys import from_otp_entries, key_hash, raw_public_key, to_otp_entries
from nuwire.pem import private_pem
from nuwire.profiles import M2354
from tests.conftest import system_tool
from tests.wire.vectors import (
    DEMO_HOST_KEY_HASH,
    DEMO_HOST_OTP0,
    DEMO_HOST_X,
    DEMO_HOST_Y,
    host_key,
    target_key,
)


def test_crc16_ccitt_false_check_value() -> None:
    assert crc16_ccitt_false(b"12345678") == 0xA12B
    assert crc16_ccitt_false(b"123456789") == 0x29B1  # the catalogue's check value


def test_crc32_of_erased_pages_matches_nuvoton() -> None:
    assert crc32(b"\xff" * 2048) == 0x3F55D17F
    assert crc32(b"\xff" * 8192) == 0xB4293435  # ALL_ONE_2PAGE_CHKS in CommandHandler.c


def test_m2351_key_hash_and_otp_words() -> None:
    raw = raw_public_key(host_key().public_key())
    assert raw == DEMO_HOST_X + DEMO_HOST_Y
    digest = key_hash(raw)
    assert digest == DEMO_HOST_KEY_HASH
    entries = to_otp_entries(digest)
    assert entries[0] == DEMO_HOST_OTP0
    assert from_otp_entries(entries) == digest
    assert M2354.app_key_hash_entries(raw)[8] == DEMO_HOST_OTP0
    assert list(M2354.bootloader_key_entries(raw)) == list(range(8))


def test_ecdh_between_published_demo_keys_agrees_both_ways() -> None:
    host, target = host_key(), target_key()
    one = host.exchange(ec.ECDH(), target.public_key())
    other = target.exchange(ec.ECDH(), host.public_key())
    assert one == other
    assert len(one) == 32


def test_ecdh_agrees_with_openssl(tmp_path: Path) -> None:
    openssl = system_tool("openssl", "openssl")
    host, target = host_key(), target_key()
    (tmp_path / "host.pem").write_bytes(private_pem(host))
    (tmp_path / "target.pub").write_bytes(
        target.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    derived = subprocess.run(
        [
            openssl,
            "pkeyutl",
            "-derive",
            "-inkey",
            str(tmp_path / "host.pem"),
            "-peerkey",
            str(tmp_path / "target.pub"),
        ],
        check=True,
        capture_output=True,
    ).stdout
    assert derived == target.exchange(ec.ECDH(), host.public_key())
