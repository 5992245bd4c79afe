"""MCUboot images: built here and checked by imgtool, signed by imgtool and checked here."""

from __future__ import annotations

import contextlib
import hashlib
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from nuwire import mcuboot
from nuwire.errors import ProtocolError
from nuwire.keys import key_hash, raw_public_key
from nuwire.mcuboot import KeyFormat, TlvType, Verdict, Version
from nuwire.pem import private_pem
from tests.conftest import venv_tool

KEY = ec.derive_private_key(0x1234567890ABCDEF, ec.SECP256R1())
OTHER = ec.derive_private_key(0xFEDCBA0987654321, ec.SECP256R1())
BODY = bytes(range(256)) * 40
PROPERTY = settings(max_examples=1000, deadline=None)


def signed(body: bytes = BODY, key_format: KeyFormat = KeyFormat.HASH, **kwargs: object) -> bytes:
    return mcuboot.build(
        body,
        signer=mcuboot.private_key_signer(KEY),
        public_key=KEY.public_key(),
        version=Version(1, 2, 3, 4),
        key_format=key_format,
        **kwargs,  # type: ignore[arg-type]  # header_size / load_addr / flags pass through
    )


def write_key(tmp_path: Path, key: ec.EllipticCurvePrivateKey = KEY) -> Path:
    path = tmp_path / "key.pem"
    path.write_bytes(private_pem(key))
    return path


def imgtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([venv_tool("imgtool"), *args], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("key_format", list(KeyFormat))
def test_images_built_here_pass_imgtool_verify(tmp_path: Path, key_format: KeyFormat) -> None:
    image = tmp_path / "image.bin"
    image.write_bytes(signed(key_format=key_format, load_addr=0x20000))
    result = imgtool("verify", "-k", str(write_key(tmp_path)), str(image))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Image was correctly validated" in result.stdout
    assert "1.2.3+4" in result.stdout
    (tmp_path / "other").mkdir()
    other = imgtool("verify", "-k", str(write_key(tmp_path / "other", OTHER)), str(image))
    assert other.returncode != 0


@pytest.mark.parametrize("key_format", ["hash", "full"])
@pytest.mark.parametrize("extra", [[], ["--pad", "-S", "0x10000"], ["--security-counter", "7"]])
def test_images_signed_by_imgtool_parse_and_verify_here(
    tmp_path: Path, key_format: str, extra: list[str]
) -> None:
    body, out = tmp_path / "body.bin", tmp_path / "signed.bin"
    body.write_bytes(BODY)
    result = imgtool(
        "sign", "-k", str(write_key(tmp_path)), "--public-key-format", key_format, "--align", "4",
        "-v", "1.2.3+9", "-H", "0x400", "--pad-header", "-S", "0x20000", *extra, str(body), str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    image = mcuboot.parse(out.read_bytes())
    assert image.body == BODY
    assert image.version == Version(1, 2, 3, 9)
    assert image.header_size == 0x400
    assert mcuboot.verify(image, KEY.public_key()) is Verdict.OK
    assert mcuboot.verify(image, OTHER.public_key()) is Verdict.KEY_MISMATCH
    if "--pad" in extra:
        assert len(image.trailer) > 0
    if "--security-counter" in extra:
        assert image.protected_tlvs
    if key_format == "full":
        assert (
            mcuboot.verify_against_key_hash(image, key_hash(raw_public_key(KEY.public_key()))) is Verdict.OK
        )


def test_imgtool_image_without_a_key_has_no_signature(tmp_path: Path) -> None:
    body, out = tmp_path / "body.bin", tmp_path / "signed.bin"
    body.write_bytes(BODY)
    result = imgtool(
        "sign", "-v", "0.0.1", "-H", "0x20", "--pad-header", "-S", "0x20000", str(body), str(out)
    )
    assert result.returncode == 0, result.stderr
    assert mcuboot.verify(mcuboot.parse(out.read_bytes()), KEY.public_key()) is Verdict.NO_SIGNATURE


def test_layout_of_a_built_image() -> None:
    raw = signed(header_size=0x400, load_addr=0x20000, flags=0x10)
    magic, load, hdr, prot, size, flags = struct.unpack_from("<IIHHII", raw)
    assert (magic, load, hdr, prot, size, flags) == (0x96F3B83D, 0x20000, 0x400, 0, len(BODY), 0x10)
    assert raw[32:0x400] == b"\xff" * (0x400 - 32)
    assert raw[0x400 : 0x400 + len(BODY)] == BODY
    info_magic, total = struct.unpack_from("<HH", raw, 0x400 + len(BODY))
    assert info_magic == 0x6907
    assert 0x400 + len(BODY) + total == len(raw)
    image = mcuboot.parse(raw)
    assert [kind for kind, _ in image.tlvs] == [TlvType.SHA256, TlvType.KEYHASH, TlvType.ECDSA_SIG]
    assert image.tlv(TlvType.SHA256) == hashlib.sha256(raw[: 0x400 + len(BODY)]).digest()
    der = KEY.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert image.tlv(TlvType.KEYHASH) == hashlib.sha256(der).digest()
    assert image.embedded_public_key() is None


def test_application_images_carry_the_full_key() -> None:
    image = mcuboot.parse(signed(key_format=KeyFormat.FULL))
    embedded = image.embedded_public_key()
    assert embedded is not None
    assert raw_public_key(embedded) == raw_public_key(KEY.public_key())
    otp_hash = key_hash(raw_public_key(KEY.public_key()))
    assert mcuboot.verify_against_key_hash(image, otp_hash) is Verdict.OK
    assert mcuboot.verify_against_key_hash(image, bytes(32)) is Verdict.KEY_MISMATCH
    assert mcuboot.verify(image, OTHER.public_key()) is Verdict.KEY_MISMATCH
    hashed_only = mcuboot.parse(signed(key_format=KeyFormat.HASH))
    assert mcuboot.verify_against_key_hash(hashed_only, otp_hash) is Verdict.KEY_MISMATCH


def test_tampering_is_caught() -> None:
    raw = bytearray(signed())
    raw[0x500] ^= 1
    assert mcuboot.verify(mcuboot.parse(bytes(raw)), KEY.public_key()) is Verdict.INVALID_HASH

    def wrong_digest(digest: bytes) -> bytes:
        return mcuboot.private_key_signer(KEY)(hashlib.sha256(digest).digest())

    forged = mcuboot.build(BODY, signer=wrong_digest, public_key=KEY.public_key(), version=Version())
    assert mcuboot.verify(mcuboot.parse(forged), KEY.public_key()) is Verdict.INVALID_SIGNATURE

    def garbage(_: bytes) -> bytes:
        return b"\x30\x02\x00\x00"

    junk = mcuboot.build(BODY, signer=garbage, public_key=KEY.public_key(), version=Version())
    assert mcuboot.verify(mcuboot.parse(junk), KEY.public_key()) is Verdict.INVALID_SIGNATURE


def _tlv_image(tlvs: list[tuple[int, bytes]]) -> bytes:
    header = struct.pack("<IIHHIIBBHII", 0x96F3B83D, 0, 32, 0, 4, 0, 0, 0, 0, 0, 0) + b"body"
    area = b"".join(struct.pack("<HH", kind, len(value)) + value for kind, value in tlvs)
    return header + struct.pack("<HH", 0x6907, 4 + len(area)) + area


def test_pubkey_tlv_must_be_a_p256_key() -> None:
    with pytest.raises(ProtocolError, match="PUBKEY TLV: expected SubjectPublicKeyInfo"):
        mcuboot.parse(_tlv_image([(TlvType.PUBKEY, b"not der")])).embedded_public_key()
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = p384.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ProtocolError, match="a P-256 key"):
        mcuboot.parse(_tlv_image([(TlvType.PUBKEY, der)])).embedded_public_key()


def _header(**fields: int) -> bytes:
    values = {"magic": 0x96F3B83D, "load": 0, "hdr": 32, "prot": 0, "size": 4, "flags": 0}
    values.update(fields)
    return struct.pack(
        "<IIHHIIBBHII", values["magic"], values["load"], values["hdr"], values["prot"], values["size"],
        values["flags"], 0, 0, 0, 0, 0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"\x3d\xb8", "image length"),
        (_header(magic=1) + b"body", "ih_magic"),
        (_header(hdr=16) + b"body", "ih_hdr_size"),
        (_header(size=100) + b"body", "ih_img_size"),
        (_header() + b"body", "TLV info offset"),
        (_header() + b"body" + struct.pack("<HH", 0x1234, 4), "TLV info magic"),
        (_header() + b"body" + struct.pack("<HH", 0x6907, 2), "TLV info length"),
        (_header() + b"body" + struct.pack("<HH", 0x6907, 40), "TLV info length"),
        (_header() + b"body" + struct.pack("<HH", 0x6907, 6) + b"\x10\x00", "TLV at"),
        (_header() + b"body" + struct.pack("<HHHH", 0x6907, 8, 0x10, 32), "TLV 0x10 length"),
        (_header(prot=8) + b"body" + struct.pack("<HH", 0x6907, 4), "protected TLV info magic"),
        (_header(prot=12) + b"body" + struct.pack("<HHHH", 0x6908, 8, 0x50, 0), "ih_protect_tlv_size"),
    ],
)
def test_each_malformed_field_is_named(raw: bytes, field: str) -> None:
    with pytest.raises(ProtocolError) as error:
        mcuboot.parse(raw)
    assert error.value.field.startswith(field)


def test_version_text() -> None:
    assert Version.parse("1.2.3+4") == Version(1, 2, 3, 4)
    assert Version.parse("2") == Version(2)
    assert Version.parse("2.1") == Version(2, 1)
    assert str(Version(1, 2, 3, 4)) == "1.2.3+4"
    assert Version(1, 2) < Version(1, 10)
    for bad in ("", "a.b", "1.2.3.4", "1..2", "1.2.3+x"):
        with pytest.raises(ProtocolError, match="version"):
            Version.parse(bad)
    with pytest.raises(ProtocolError, match="version major"):
        Version(256)
    with pytest.raises(ProtocolError, match="version build"):
        Version(build=-1)


def test_build_refuses_bad_settings() -> None:
    with pytest.raises(ProtocolError, match="header size"):
        signed(header_size=16)
    with pytest.raises(ProtocolError, match="image size"):
        signed(body=b"")
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ProtocolError, match="curve"):
        mcuboot.build(
            BODY, signer=lambda _: b"", public_key=p384.public_key(), version=Version()
        )  # on purpose: a P-384 key


@PROPERTY
@given(raw=st.binary(max_size=200))
def test_any_bytes_parse_or_raise_protocol_error(raw: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        mcuboot.parse(raw)


VALID = signed(body=b"0123456789abcdef", header_size=32, key_format=KeyFormat.FULL)


@PROPERTY
@given(position=st.integers(0, len(VALID) - 1), value=st.integers(0, 255), cut=st.integers(0, len(VALID)))
def test_damaged_images_parse_or_raise_and_never_verify_wrongly(position: int, value: int, cut: int) -> None:
    raw = (VALID[:position] + bytes([value]) + VALID[position + 1 :])[:cut]
    try:
        image = mcuboot.parse(raw)
        verdict = mcuboot.verify(image, KEY.public_key())
    except ProtocolError:
        return
    if verdict is Verdict.OK:
        assert image.hashed == VALID[: len(image.hashed)]


@PROPERTY
@given(
    body=st.binary(min_size=1, max_size=300),
    version=st.builds(
        Version, st.integers(0, 255), st.integers(0, 255), st.integers(0, 65535), st.integers(0, 2**32 - 1)
    ),
    header_size=st.integers(32, 64),
    load_addr=st.integers(0, 2**32 - 1),
)
def test_build_then_parse_is_identity(
    body: bytes, version: Version, header_size: int, load_addr: int
) -> None:
    image = mcuboot.parse(
        mcuboot.build(
            body,
            signer=lambda digest: digest,  # any bytes: parsing does not look at the signature
            public_key=KEY.public_key(),
            version=version,
            header_size=header_size,
            load_addr=load_addr,
        )
    )
    assert (image.body, image.version, image.header_size, image.load_addr) == (
        body,
        version,
        header_size,
        load_addr,
    )


def test_image_digest_is_what_build_signs_whatever_the_key() -> None:
    seen: list[bytes] = []

    def signer(digest: bytes) -> bytes:
        seen.append(digest)
        return mcuboot.private_key_signer(KEY)(digest)

    other = ec.derive_private_key(0xFEDCBA, ec.SECP256R1()).public_key()
    for public_key in (KEY.public_key(), other):
        image = mcuboot.build(
            BODY, signer=signer, public_key=public_key, version=Version(1, 2, 3, 4), load_addr=8
        )
        assert mcuboot.parse(image).digest == seen[-1]
    expected = mcuboot.image_digest(BODY, version=Version(1, 2, 3, 4), load_addr=8)
    assert seen == [expected, expected]
    assert mcuboot.image_digest(BODY, version=Version(1, 2, 3, 5), load_addr=8) != expected
