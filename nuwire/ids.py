"""Board identities: UID, OBJ_ID, and the OBJ_ID record kept in the board's protected flash.

- UID: 96 bits read with the FMC's READ_UID at ISPADDR 0, 4, 8. Text form: the three words in that
  order, eight upper-case hex digits each, 24 in all (``UID0UID1UID2``).
- OBJ_ID: assigned by the cloud when a UID is registered. Nuvoton does not publish its format; here it
  is 16 bytes, written as 32 lower-case hex digits.
- The OBJ_ID record (28 bytes, little-endian) at the profile's ``objid_record`` address:

      0-3   magic 0x494A424F ("OBJI")
      4-5   record version, 1
      6-7   OBJ_ID length, 16
      8-23  OBJ_ID
      24-27 CRC-32 over bytes 0..23

  An erased record (all 0xFF) means "no OBJ_ID yet"; anything else that does not decode is an error.
"""

from __future__ import annotations

import re
import struct

from nuwire.crc import crc32
from nuwire.errors import ProtocolError

UID_WORDS = 3
OBJ_ID_SIZE = 16
RECORD_MAGIC = 0x494A424F
RECORD_VERSION = 1
RECORD_SIZE = 28
_RECORD_HEAD = struct.Struct("<IHH")
_UID_TEXT = re.compile(r"[0-9A-F]{24}")
_OBJ_ID_TEXT = re.compile(r"[0-9a-f]{32}")


def format_uid(words: tuple[int, int, int] | list[int]) -> str:
    if len(words) != UID_WORDS:
        raise ProtocolError("UID words", UID_WORDS, len(words))
    for index, word in enumerate(words):
        if not 0 <= word <= 0xFFFFFFFF:
            raise ProtocolError(f"UID{index}", "0..0xFFFFFFFF", word)
    return "".join(f"{word:08X}" for word in words)


def parse_uid(text: str) -> tuple[int, int, int]:
    if not _UID_TEXT.fullmatch(text):
        raise ProtocolError("UID", "24 upper-case hex digits", text)
    first, second, third = (int(text[i : i + 8], 16) for i in range(0, 24, 8))
    return first, second, third


def format_obj_id(obj_id: bytes) -> str:
    if len(obj_id) != OBJ_ID_SIZE:
        raise ProtocolError("OBJ_ID length", OBJ_ID_SIZE, len(obj_id))
    return obj_id.hex()


def parse_obj_id(text: str) -> bytes:
    if not _OBJ_ID_TEXT.fullmatch(text):
        raise ProtocolError("OBJ_ID", "32 lower-case hex digits", text)
    return bytes.fromhex(text)


def encode_obj_id_record(obj_id: bytes) -> bytes:
    head = _RECORD_HEAD.pack(RECORD_MAGIC, RECORD_VERSION, OBJ_ID_SIZE) + bytes.fromhex(format_obj_id(obj_id))
    return head + crc32(head).to_bytes(4, "little")


def decode_obj_id_record(raw: bytes) -> bytes | None:
    """The OBJ_ID in a record, None for an erased record; ProtocolError for anything else."""
    if len(raw) != RECORD_SIZE:
        raise ProtocolError("OBJ_ID record size", RECORD_SIZE, len(raw))
    if raw == b"\xff" * RECORD_SIZE:
        return None
    magic, version, length = _RECORD_HEAD.unpack_from(raw)
    if magic != RECORD_MAGIC:
        raise ProtocolError("OBJ_ID record magic", RECORD_MAGIC, magic)
    if version != RECORD_VERSION:
        raise ProtocolError("OBJ_ID record version", RECORD_VERSION, version)
    if length != OBJ_ID_SIZE:
        raise ProtocolError("OBJ_ID record length", OBJ_ID_SIZE, length)
    sent = int.from_bytes(raw[24:28], "little")
    actual = crc32(raw[:24])
    if sent != actual:
        raise ProtocolError("OBJ_ID record crc32", actual, sent)
    return raw[8:24]
