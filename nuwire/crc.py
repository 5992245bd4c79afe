"""The two checksums of SecureISP, both computed in C by the standard library."""

from __future__ import annotations

import binascii
import zlib


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor)."""
    return binascii.crc_hqx(data, 0xFFFF)


def crc32(data: bytes) -> int:
    """The standard (zlib, IEEE 802.3) CRC-32."""
    return zlib.crc32(data)
