"""MCUboot images: build (signing through a callback that receives the digest), parse, verify.

Layout (little-endian; MCUboot docs/design.md and imgtool/image.py, checked by `imgtool verify`):

    header   32 bytes, padded with 0xFF to ih_hdr_size:
             u32 magic 0x96F3B83D, u32 load_addr, u16 hdr_size, u16 protect_tlv_size, u32 img_size,
             u32 flags, u8 major, u8 minor, u16 revision, u32 build, u32 pad
    body     img_size bytes at hdr_size
    [protected TLV area: u16 magic 0x6908, u16 total length, TLVs]   (parsed, never built here)
    TLV area: u16 magic 0x6907, u16 total length (with these 4 bytes), then TLVs:
             u16 type, u16 length, value.  SHA256 (0x10) over header + body + protected TLVs;
             KEYHASH (0x01, SHA-256 of the SubjectPublicKeyInfo DER) or PUBKEY (0x02, the DER);
             ECDSA_SIG (0x22, DER SEQUENCE r, s over the SHA256 digest).
    trailer  anything after the TLV area (imgtool --pad) is kept as ``trailer`` and not checked.

The signer callback receives the 32-byte digest and returns the DER signature, so an HSM that signs
digests (PKCS#11 CKM_ECDSA) signs without the image leaving the server.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import load_der_public_key

from nuwire.errors import ProtocolError
from nuwire.keys import key_hash, public_key_der, raw_public_key

IMAGE_MAGIC = 0x96F3B83D
TLV_INFO_MAGIC = 0x6907
TLV_PROT_INFO_MAGIC = 0x6908
HEADER = struct.Struct("<IIHHIIBBHII")
TLV_HEAD = struct.Struct("<HH")
ERASED = 0xFF

Signer = Callable[[bytes], bytes]
"""Receives the image's SHA-256 digest, returns an ECDSA P-256 signature in DER."""


class TlvType(IntEnum):
    KEYHASH = 0x01
    PUBKEY = 0x02
    SHA256 = 0x10
    ECDSA_SIG = 0x22


class KeyFormat(Enum):
    HASH = "hash"
    FULL = "full"


class Verdict(Enum):
    OK = "ok"
    INVALID_HASH = "SHA256 TLV does not match the image"
    KEY_MISMATCH = "the image names another public key"
    NO_SIGNATURE = "no ECDSA_SIG TLV"
    INVALID_SIGNATURE = "ECDSA signature does not verify"


@dataclass(frozen=True, slots=True, order=True)
class Version:
    major: int = 0
    minor: int = 0
    revision: int = 0
    build: int = 0

    def __post_init__(self) -> None:
        for name, value, bits in (
            ("major", self.major, 8),
            ("minor", self.minor, 8),
            ("revision", self.revision, 16),
            ("build", self.build, 32),
        ):
            if not 0 <= value < 1 << bits:
                raise ProtocolError(f"version {name}", f"0..{(1 << bits) - 1}", value)

    @classmethod
    def parse(cls, text: str) -> Version:
        """``major.minor.revision[+build]``, as imgtool's ``-v`` takes it."""
        core, _, build = text.partition("+")
        parts = core.split(".")
        if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
            raise ProtocolError("version", "major.minor.revision[+build]", text)
        if build and not build.isdigit():
            raise ProtocolError("version build", "digits", build)
        numbers = [int(p) for p in parts] + [0] * (3 - len(parts))
        return cls(numbers[0], numbers[1], numbers[2], int(build or 0))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.revision}+{self.build}"


@dataclass(frozen=True, slots=True)
class Image:
    load_addr: int
    header_size: int
    flags: int
    version: Version
    body: bytes
    protected_tlvs: tuple[tuple[int, bytes], ...]
    tlvs: tuple[tuple[int, bytes], ...]
    hashed: bytes
    """Header, body and protected TLV area: what SHA256 covers and ECDSA_SIG signs."""
    trailer: bytes = b""

    def tlv(self, kind: TlvType) -> bytes | None:
        return next((value for t, value in self.tlvs if t == kind), None)

    def embedded_public_key(self) -> ec.EllipticCurvePublicKey | None:
        """The PUBKEY TLV as a key; ProtocolError when it is not a P-256 SubjectPublicKeyInfo."""
        der = self.tlv(TlvType.PUBKEY)
        if der is None:
            return None
        try:
            key = load_der_public_key(der)
        except ValueError:
            raise ProtocolError("PUBKEY TLV", "SubjectPublicKeyInfo DER", der) from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ProtocolError("PUBKEY TLV", "a P-256 key", type(key).__name__)
        return key

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.hashed).digest()


def private_key_signer(key: ec.EllipticCurvePrivateKey) -> Signer:
    """A signer for a key held in this process (tests, the file key store)."""

    def sign(digest: bytes) -> bytes:
        return key.sign(digest, ec.ECDSA(Prehashed(SHA256())))

    return sign


def _hashed(body: bytes, version: Version, header_size: int, load_addr: int, flags: int) -> bytes:
    """The header (padded to ``header_size``) and the body: what the image's SHA256 covers."""
    if not HEADER.size <= header_size <= 0xFFFF:
        raise ProtocolError("header size", f"{HEADER.size}..0xFFFF", header_size)
    if not 0 < len(body) <= 0xFFFFFFFF:
        raise ProtocolError("image size", "1..0xFFFFFFFF", len(body))
    header = HEADER.pack(
        IMAGE_MAGIC,
        load_addr,
        header_size,
        0,
        len(body),
        flags,
        version.major,
        version.minor,
        version.revision,
        version.build,
        0,
    )
    return header + bytes([ERASED]) * (header_size - HEADER.size) + body


def image_digest(
    body: bytes, *, version: Version, header_size: int = 0x400, load_addr: int = 0, flags: int = 0
) -> bytes:
    """The digest :func:`build` signs for these arguments (it does not depend on the key)."""
    return hashlib.sha256(_hashed(body, version, header_size, load_addr, flags)).digest()


def build(
    body: bytes,
    *,
    signer: Signer,
    public_key: ec.EllipticCurvePublicKey,
    version: Version,
    key_format: KeyFormat = KeyFormat.HASH,
    header_size: int = 0x400,
    load_addr: int = 0,
    flags: int = 0,
) -> bytes:
    """A signed MCUboot image of ``body``; the public key goes in as KEYHASH or PUBKEY."""
    hashed = _hashed(body, version, header_size, load_addr, flags)
    raw_public_key(public_key)  # refuses anything but P-256
    digest = hashlib.sha256(hashed).digest()
    der = public_key_der(public_key)
    key_tlv = (
        (TlvType.KEYHASH, hashlib.sha256(der).digest())
        if key_format is KeyFormat.HASH
        else (TlvType.PUBKEY, der)
    )
    tlvs = [(TlvType.SHA256, digest), key_tlv, (TlvType.ECDSA_SIG, signer(digest))]
    area = b"".join(TLV_HEAD.pack(kind, len(value)) + value for kind, value in tlvs)
    return hashed + TLV_HEAD.pack(TLV_INFO_MAGIC, TLV_HEAD.size + len(area)) + area


def parse(raw: bytes) -> Image:
    """Decode an image; ProtocolError names the first field that is wrong."""
    if len(raw) < HEADER.size:
        raise ProtocolError("image length", f">= {HEADER.size}", len(raw))
    (magic, load_addr, hdr_size, prot_size, img_size, flags, major, minor, revision, build_num, _) = (
        HEADER.unpack_from(raw)
    )
    if magic != IMAGE_MAGIC:
        raise ProtocolError("ih_magic", IMAGE_MAGIC, magic)
    if hdr_size < HEADER.size:
        raise ProtocolError("ih_hdr_size", f">= {HEADER.size}", hdr_size)
    tlv_start = hdr_size + img_size
    if tlv_start > len(raw):
        raise ProtocolError("ih_img_size", f"<= {len(raw) - hdr_size}", img_size, "image truncated")
    protected: tuple[tuple[int, bytes], ...] = ()
    if prot_size:
        protected, end = _tlv_area(raw, tlv_start, TLV_PROT_INFO_MAGIC, "protected TLV info")
        if end - tlv_start != prot_size:
            raise ProtocolError("ih_protect_tlv_size", end - tlv_start, prot_size)
    hashed_end = tlv_start + prot_size
    tlvs, end = _tlv_area(raw, hashed_end, TLV_INFO_MAGIC, "TLV info")
    return Image(
        load_addr=load_addr,
        header_size=hdr_size,
        flags=flags,
        version=Version(major, minor, revision, build_num),
        body=raw[hdr_size:tlv_start],
        protected_tlvs=protected,
        tlvs=tlvs,
        hashed=raw[:hashed_end],
        trailer=raw[end:],
    )


def _tlv_area(raw: bytes, start: int, magic: int, name: str) -> tuple[tuple[tuple[int, bytes], ...], int]:
    if start + TLV_HEAD.size > len(raw):
        raise ProtocolError(f"{name} offset", f"<= {len(raw) - TLV_HEAD.size}", start, "truncated")
    found, total = TLV_HEAD.unpack_from(raw, start)
    if found != magic:
        raise ProtocolError(f"{name} magic", magic, found)
    end = start + total
    if total < TLV_HEAD.size or end > len(raw):
        raise ProtocolError(f"{name} length", f"{TLV_HEAD.size}..{len(raw) - start}", total)
    tlvs: list[tuple[int, bytes]] = []
    offset = start + TLV_HEAD.size
    while offset < end:
        if offset + TLV_HEAD.size > end:
            raise ProtocolError(f"TLV at {offset:#x}", "a 4-byte TLV header", end - offset)
        kind, length = TLV_HEAD.unpack_from(raw, offset)
        value_end = offset + TLV_HEAD.size + length
        if value_end > end:
            raise ProtocolError(f"TLV 0x{kind:02X} length", f"<= {end - offset - 4}", length)
        tlvs.append((kind, raw[offset + TLV_HEAD.size : value_end]))
        offset = value_end
    return tuple(tlvs), end


def verify(image: Image, key: ec.EllipticCurvePublicKey) -> Verdict:
    """Check the SHA256 TLV, that any KEYHASH/PUBKEY names ``key``, and the signature."""
    if image.tlv(TlvType.SHA256) != image.digest:
        return Verdict.INVALID_HASH
    der = public_key_der(key)
    named = image.tlv(TlvType.KEYHASH)
    if named is not None and named != hashlib.sha256(der).digest():
        return Verdict.KEY_MISMATCH
    embedded = image.tlv(TlvType.PUBKEY)
    if embedded is not None and embedded != der:
        return Verdict.KEY_MISMATCH
    signature = image.tlv(TlvType.ECDSA_SIG)
    if signature is None:
        return Verdict.NO_SIGNATURE
    try:
        key.verify(signature, image.digest, ec.ECDSA(Prehashed(SHA256())))
    except (InvalidSignature, ValueError):
        return Verdict.INVALID_SIGNATURE
    return Verdict.OK


def verify_against_key_hash(image: Image, otp_key_hash: bytes) -> Verdict:
    """What the bootloader checks: the embedded PUBKEY hashes (raw X||Y) to the OTP value, and
    the image verifies with it."""
    key = image.embedded_public_key()
    if key is None or key_hash(raw_public_key(key)) != otp_key_hash:
        return Verdict.KEY_MISMATCH
    return verify(image, key)
