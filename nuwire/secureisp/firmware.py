"""What the target's SecureISP firmware does that the wire format alone does not say.

Nuvoton's SecureISP.c (M55M1BSP SecureISPDemo, and the handler M2354BSP ships compiled) stores its
static public key reversed and meant to turn it big-endian with ``BytesSwap(pub0, sizeof(pub0))``;
``pub0`` is a ``uint32_t *``, so on the 32-bit MCU only the first 4 of the 32 bytes are reversed.
The host still checks the key GET_PUB0/GET_PUB1 return, against the bytes such firmware sends.

After a damaged or refused request Nuvoton's target leaves SecureISP and answers nothing until the
chip resets: a resend is never answered. ``keeps_session`` is True only for firmware known to
answer a resend; otherwise the host recovers by resetting the board and opening a new session.
"""

from __future__ import annotations

from dataclasses import dataclass

from nuwire.errors import ProtocolError


@dataclass(frozen=True, slots=True)
class Firmware:
    name: str
    static_key_swapped: int
    """Bytes BytesSwap reverses in each stored 32-byte coordinate (``sizeof(pub0)`` on the part)."""
    keeps_session: bool = False
    published_key: bytes = b""
    """The static public key X||Y compiled into the published code (a test vector), if any."""

    def __post_init__(self) -> None:
        if not 0 <= self.static_key_swapped <= 32:
            raise ProtocolError("static_key_swapped", "0..32", self.static_key_swapped)

    def static_key_on_wire(self, raw: bytes) -> bytes:
        """The 64 bytes GET_PUB0 + GET_PUB1 carry for the big-endian key X||Y ``raw``.

        SetClientPublicKey stores each coordinate reversed (Hex2Reg), then reverses its first
        ``static_key_swapped`` bytes: 32 gives the big-endian coordinate back.
        """
        out = b""
        for half in (raw[:32], raw[32:]):
            stored = half[::-1]
            n = self.static_key_swapped
            out += stored[:n][::-1] + stored[n:]
        return out


DEMO_KEY = bytes.fromhex(  # SecureISP.c gacPubKey0, gacPubKey1 (private key gacPrivKey d0ab2cb9...)
    "d32438a1b4428541c564eeed79669b4bd3bf601c758469545e013c8fe8af7ef6"
    "476de8f3c6e6c48a8bacf1e1827cfb82501833c2bb816344f996533b1b031706"
)
NUVOTON_DEMO = Firmware("nuvoton-secureisp", static_key_swapped=4, published_key=DEMO_KEY)
"""Nuvoton's SecureISP target code as published and as it runs on the 32-bit part."""
NUVOTON_FIXEDKEY = Firmware("nuvoton-secureisp-fixedkey", static_key_swapped=32, published_key=DEMO_KEY)
"""The same code with the swap over the whole coordinate (nuvoton-ref's ``fixedkey`` build)."""
FIRMWARES: dict[str, Firmware] = {f.name: f for f in (NUVOTON_DEMO, NUVOTON_FIXEDKEY)}
