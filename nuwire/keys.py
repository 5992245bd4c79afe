"""P-256 public keys as the boards hold them, and the OTP words they become.

A board holds a public key as raw X||Y (64 bytes, each coordinate big-endian, no 0x04 prefix) and a
key hash as SHA-256 of that raw form. OTP entries are 64 bits, programmed as two 32-bit words; the
bytes sit in memory in natural order, so entry n holds bytes[8n:8n+8] with the low word read
little-endian from bytes[8n:8n+4] (Nuvoton M2351BSP SampleCode/MKROM/SecureBootDemo/NuBL2/main.c).
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from nuwire.errors import ProtocolError

RAW_PUBLIC_KEY_SIZE = 64
OtpEntry = tuple[int, int]
"""One OTP entry as (low word, high word)."""


def raw_public_key(key: ec.EllipticCurvePublicKey) -> bytes:
    """X||Y, 64 bytes, of a P-256 public key."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise ProtocolError("curve", "secp256r1", key.curve.name)
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]


def public_key_from_raw(raw: bytes, field: str = "public key") -> ec.EllipticCurvePublicKey:
    """The P-256 public key for X||Y; raise ProtocolError when it is not a point on the curve."""
    if len(raw) != RAW_PUBLIC_KEY_SIZE:
        raise ProtocolError(f"{field} length", RAW_PUBLIC_KEY_SIZE, len(raw))
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        raise ProtocolError(field, "a point on P-256", raw) from None


def public_key_der(key: ec.EllipticCurvePublicKey) -> bytes:
    """SubjectPublicKeyInfo DER, the form MCUboot's PUBKEY and KEYHASH TLVs use."""
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def key_hash(raw: bytes) -> bytes:
    """SHA-256 of a raw X||Y public key: what OTP holds for the application key."""
    if len(raw) != RAW_PUBLIC_KEY_SIZE:
        raise ProtocolError("public key length", RAW_PUBLIC_KEY_SIZE, len(raw))
    return hashlib.sha256(raw).digest()


def to_otp_entries(data: bytes) -> list[OtpEntry]:
    """Bytes (a multiple of 8) as OTP entries, low word first, each word little-endian."""
    if not data or len(data) % 8:
        raise ProtocolError("OTP data length", "a non-zero multiple of 8", len(data))
    return [
        (int.from_bytes(data[i : i + 4], "little"), int.from_bytes(data[i + 4 : i + 8], "little"))
        for i in range(0, len(data), 8)
    ]


def from_otp_entries(entries: list[OtpEntry]) -> bytes:
    """The bytes that OTP entries hold, the inverse of :func:`to_otp_entries`."""
    out = bytearray()
    for index, (low, high) in enumerate(entries):
        for name, word in (("low", low), ("high", high)):
            if not 0 <= word <= 0xFFFFFFFF:
                raise ProtocolError(f"OTP entry {index} {name} word", "0..0xFFFFFFFF", word)
        out += low.to_bytes(4, "little") + high.to_bytes(4, "little")
    return bytes(out)
