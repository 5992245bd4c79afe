"""Key stores: where per-device private keys are made and used, and never leave.

One interface, two implementations, one contract test suite (tests/cloudserver/test_keystore.py):

- :class:`FileKeyStore`, the embedded default: keys made in this process, stored as blobs encrypted
  with AES-256-GCM under a master key from the settings file (mode 0600).
- :class:`Pkcs11KeyStore`: keys made in a PKCS#11 token (SoftHSM2 in tests). The private key is
  sensitive; it leaves the token only wrapped (AES key wrap with padding) under a token-resident,
  sensitive, non-extractable key-encryption key, and the blob goes to the database, so the fleet is
  not capped by the token's object count. To sign, the blob is unwrapped inside the token into a
  sensitive, non-extractable session key, used, and destroyed. PKCS#11 calls are serialised in the
  process (python-pkcs11 initialises the library without locking; see the project's cloud notes).

Blobs are opaque to the rest of the server: a ``handle``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_der_private_key,
)

from nuwire.keys import raw_public_key


class KeyStoreError(Exception):
    """The key store could not make or use a key (a 5xx-class failure, retryable)."""


@dataclass(frozen=True, slots=True)
class NewKey:
    public_key: bytes
    """Raw X||Y of the P-256 public key."""
    handle: bytes
    """The private key as only this key store can use it (wrapped or encrypted)."""


class KeyStore(Protocol):
    name: str

    def generate(self) -> NewKey: ...

    def sign_digest(self, handle: bytes, digest: bytes) -> bytes:
        """ECDSA P-256 over a SHA-256 digest; the DER signature."""
        ...


class FileKeyStore:
    name = "file"

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise KeyStoreError("the file key store's master key must be 32 bytes")
        self._aead = AESGCM(master_key)

    def __repr__(self) -> str:
        return "<FileKeyStore master_key=<hidden>>"

    def generate(self) -> NewKey:
        key = ec.generate_private_key(ec.SECP256R1())
        secret = key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        nonce = os.urandom(12)
        return NewKey(
            raw_public_key(key.public_key()), nonce + self._aead.encrypt(nonce, secret, b"nuprov key v1")
        )

    def sign_digest(self, handle: bytes, digest: bytes) -> bytes:
        try:
            secret = self._aead.decrypt(handle[:12], handle[12:], b"nuprov key v1")
        except Exception as error:
            raise KeyStoreError("key blob does not decrypt under this master key") from error
        key = load_der_private_key(secret, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeyStoreError("key blob is not a P-256 key")
        return key.sign(digest, ec.ECDSA(Prehashed(SHA256())))


class Pkcs11KeyStore:
    name = "pkcs11"

    def __init__(self, library: str, token_label: str, pin: str, kek_label: str = "nuprov-kek") -> None:
        import pkcs11  # noqa: PLC0415  # only deployments with an HSM load it

        self._pkcs11 = pkcs11
        a = pkcs11.Attribute
        # python-pkcs11 fills every capability into an unwrap template; a signing key takes only SIGN.
        self._sign_only = dict.fromkeys(
            (a.ENCRYPT, a.DECRYPT, a.WRAP, a.UNWRAP, a.VERIFY, a.DERIVE), pkcs11.DEFAULT
        )
        self._lock = threading.Lock()
        try:
            lib = pkcs11.lib(library)
            token = lib.get_token(token_label=token_label)
            try:
                self._session = token.open(user_pin=pin, rw=True)
            except pkcs11.UserAlreadyLoggedIn:  # login is per process: another store in it logged in
                self._session = token.open(rw=True)
        except pkcs11.PKCS11Error as error:
            raise KeyStoreError(f"PKCS#11 token {token_label!r}: {type(error).__name__}") from error
        self._kek = self._key_encryption_key(kek_label)

    def __repr__(self) -> str:
        return "<Pkcs11KeyStore pin=<hidden>>"

    def _key_encryption_key(self, label: str) -> Any:
        p = self._pkcs11
        with self._lock:
            try:
                return self._session.get_key(
                    key_type=p.KeyType.AES, object_class=p.ObjectClass.SECRET_KEY, label=label
                )
            except p.NoSuchKey:
                return self._session.generate_key(
                    p.KeyType.AES,
                    256,
                    label=label,
                    store=True,
                    template={
                        p.Attribute.SENSITIVE: True,
                        p.Attribute.EXTRACTABLE: False,
                        p.Attribute.WRAP: True,
                        p.Attribute.UNWRAP: True,
                        p.Attribute.ENCRYPT: False,
                        p.Attribute.DECRYPT: False,
                    },
                )

    def generate(self) -> NewKey:
        p = self._pkcs11
        from pkcs11.util.ec import encode_named_curve_parameters  # noqa: PLC0415

        with self._lock:
            public = private = None
            try:
                parameters = self._session.create_domain_parameters(
                    p.KeyType.EC,
                    {p.Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                    local=True,
                )
                public, private = parameters.generate_keypair(
                    store=False,
                    private_template={
                        p.Attribute.SENSITIVE: True,
                        p.Attribute.EXTRACTABLE: True,
                        p.Attribute.SIGN: True,
                    },
                )
                wrapped = self._kek.wrap_key(private, mechanism=p.Mechanism.AES_KEY_WRAP_PAD)
                point = public[p.Attribute.EC_POINT]
            except p.PKCS11Error as error:
                raise KeyStoreError(f"PKCS#11 key generation failed: {type(error).__name__}") from error
            finally:
                for made in (private, public):
                    if made is not None:
                        made.destroy()
        return NewKey(_raw_from_ec_point(point), wrapped)

    def sign_digest(self, handle: bytes, digest: bytes) -> bytes:
        p = self._pkcs11
        with self._lock:
            try:
                key = self._kek.unwrap_key(
                    p.ObjectClass.PRIVATE_KEY,
                    p.KeyType.EC,
                    handle,
                    mechanism=p.Mechanism.AES_KEY_WRAP_PAD,
                    store=False,
                    capabilities=p.MechanismFlag.SIGN,
                    template={p.Attribute.SENSITIVE: True, p.Attribute.EXTRACTABLE: False, **self._sign_only},
                )
                try:
                    raw = key.sign(digest, mechanism=p.Mechanism.ECDSA)
                finally:
                    key.destroy()
            except p.PKCS11Error as error:
                raise KeyStoreError(f"PKCS#11 signing failed: {type(error).__name__}") from error
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


def _raw_from_ec_point(point: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the X9.62 point (SoftHSM), or the bare point."""
    if point[0] == 0x04 and len(point) == 67 and point[2] == 0x04:
        point = point[2:]
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    return raw_public_key(key)
