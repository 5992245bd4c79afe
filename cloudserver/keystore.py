"""Key stores: where per-device private keys are made and used, and never leave.

One interface, two implementations, one contract test suite (tests/cloudserver/test_keystore.py):

- :class:`FileKeyStore`, the embedded default: keys made in this process, stored as blobs encrypted
  with AES-256-GCM under a master key from the settings file (mode 0600).
- :class:`FileKeyStore` is for development: whoever reads its master key and the database has
  every device key.
- :class:`Pkcs11KeyStore`: keys made in a PKCS#11 token (SoftHSM2 in tests), through PyKCS11. The
  private key is sensitive; it leaves the token only wrapped (AES key wrap with padding) under a
  token-resident, sensitive, non-extractable key-encryption key (KEK), and the blob goes to the
  database, so the fleet is not capped by the token's object count. The KEK carries an unwrap
  template (CKA_UNWRAP_TEMPLATE: sensitive, not extractable), which the token adds to every key it
  unwraps and which refuses an unwrap asking otherwise: with the PIN and the database, a key can be
  used to sign but never read in clear. The KEK cannot encrypt or decrypt, so it cannot be used to
  open a blob outside an unwrap either. To sign, the blob is unwrapped into a session key, used,
  and destroyed; a key made for an image signs its digest before it is wrapped (no unwrap).
  PKCS#11 calls are serialised in the process (one session).

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

PREHASHED = ec.ECDSA(Prehashed(SHA256()))
"""ECDSA over a SHA-256 digest (made once: constructing it costs a tenth of a signature)."""


class KeyStoreError(Exception):
    """The key store could not make or use a key (a 5xx-class failure, retryable)."""


@dataclass(frozen=True, slots=True)
class NewKey:
    public_key: bytes
    """Raw X||Y of the P-256 public key."""
    handle: bytes
    """The private key as only this key store can use it (wrapped or encrypted)."""
    signature: bytes | None = None
    """The DER signature of :attr:`digest`, made with the new key before it was wrapped (so the
    first image needs no unwrap)."""
    digest: bytes | None = None
    """The digest asked for at generation."""


class KeyStore(Protocol):
    name: str
    quick: bool
    """Its calls are a fraction of a millisecond of CPU (no device, no lock): the server makes
    them on its event loop, where a hand-off to a thread would cost more than the work."""

    def generate(self, digest: bytes | None = None) -> NewKey:
        """A new P-256 key; with ``digest``, also its signature of it (:attr:`NewKey.signature`)."""
        ...

    def sign_digest(self, handle: bytes, digest: bytes) -> bytes:
        """ECDSA P-256 over a SHA-256 digest; the DER signature."""
        ...


class FileKeyStore:
    name = "file"
    quick = True  # 0.1 ms to make a key, 0.2 ms to sign, measured

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise KeyStoreError("the file key store's master key must be 32 bytes")
        self._aead = AESGCM(master_key)

    def __repr__(self) -> str:
        return "<FileKeyStore master_key=<hidden>>"

    def generate(self, digest: bytes | None = None) -> NewKey:
        key = ec.generate_private_key(ec.SECP256R1())
        secret = key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        nonce = os.urandom(12)
        return NewKey(
            raw_public_key(key.public_key()),
            nonce + self._aead.encrypt(nonce, secret, b"nuprov key v1"),
            None if digest is None else key.sign(digest, PREHASHED),
            digest,
        )

    def sign_digest(self, handle: bytes, digest: bytes) -> bytes:
        try:
            secret = self._aead.decrypt(handle[:12], handle[12:], b"nuprov key v1")
        except Exception as error:
            raise KeyStoreError("key blob does not decrypt under this master key") from error
        key = load_der_private_key(secret, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeyStoreError("key blob is not a P-256 key")
        return key.sign(digest, PREHASHED)


P256 = bytes.fromhex("06082a8648ce3d030107")
"""DER of the OID prime256v1: the EC parameters of every device key."""


class Pkcs11KeyStore:
    name = "pkcs11"
    quick = False  # a device behind a lock, in worker threads

    def __init__(self, library: str, token_label: str, pin: str, kek_label: str = "nuprov-kek") -> None:
        import PyKCS11  # noqa: PLC0415  # only deployments with an HSM load it

        self._p = PyKCS11
        self._lock = threading.Lock()
        self._wrap = PyKCS11.Mechanism(PyKCS11.CKM_AES_KEY_WRAP_PAD)
        try:
            lib = PyKCS11.PyKCS11Lib()
            lib.load(library)
            self._lib = lib  # the session needs the library loaded for its life
            slots = [
                s
                for s in lib.getSlotList(tokenPresent=True)
                if lib.getTokenInfo(s).label.strip() == token_label
            ]
            if not slots:
                raise KeyStoreError(f"PKCS#11 token {token_label!r}: not found in {library}")
            self._session = lib.openSession(slots[0], PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
            try:
                self._session.login(pin)
            except PyKCS11.PyKCS11Error as error:
                if error.value != PyKCS11.CKR_USER_ALREADY_LOGGED_IN:  # login is per process
                    raise
        except PyKCS11.PyKCS11Error as error:
            raise KeyStoreError(f"PKCS#11 token {token_label!r}: {_name(error)}") from error
        self._kek = self._key_encryption_key(kek_label)

    def __repr__(self) -> str:
        return "<Pkcs11KeyStore pin=<hidden>>"

    def _key_encryption_key(self, label: str) -> Any:
        p = self._p
        found = self._session.findObjects([(p.CKA_CLASS, p.CKO_SECRET_KEY), (p.CKA_LABEL, label)])
        if found:
            (template,) = self._session.getAttributeValue(found[0], [p.CKA_UNWRAP_TEMPLATE], allAsBinary=True)
            if not template:
                raise KeyStoreError(
                    f"PKCS#11 key {label!r} has no unwrap template: with the PIN, its blobs unwrap as "
                    "extractable keys; make a new KEK (another kek_label) and new device keys"
                )
            return found[0]
        return self._session.generateKey(
            [
                (p.CKA_CLASS, p.CKO_SECRET_KEY),
                (p.CKA_KEY_TYPE, p.CKK_AES),
                (p.CKA_VALUE_LEN, 32),
                (p.CKA_LABEL, label),
                (p.CKA_TOKEN, True),
                (p.CKA_PRIVATE, True),
                (p.CKA_SENSITIVE, True),
                (p.CKA_EXTRACTABLE, False),
                (p.CKA_MODIFIABLE, False),
                (p.CKA_WRAP, True),
                (p.CKA_UNWRAP, True),
                (p.CKA_ENCRYPT, False),
                (p.CKA_DECRYPT, False),
                (p.CKA_UNWRAP_TEMPLATE, [(p.CKA_SENSITIVE, True), (p.CKA_EXTRACTABLE, False)]),
            ],
            p.MechanismAESGENERATEKEY,
        )

    def generate(self, digest: bytes | None = None) -> NewKey:
        p = self._p
        signature = None
        with self._lock:
            public = private = None
            try:
                public, private = self._session.generateKeyPair(
                    [
                        (p.CKA_CLASS, p.CKO_PUBLIC_KEY), (p.CKA_KEY_TYPE, p.CKK_EC), (p.CKA_TOKEN, False),
                        (p.CKA_EC_PARAMS, P256), (p.CKA_VERIFY, True),
                    ],
                    [
                        (p.CKA_CLASS, p.CKO_PRIVATE_KEY), (p.CKA_KEY_TYPE, p.CKK_EC), (p.CKA_TOKEN, False),
                        (p.CKA_PRIVATE, True), (p.CKA_SENSITIVE, True), (p.CKA_EXTRACTABLE, True),
                        (p.CKA_SIGN, True), (p.CKA_DERIVE, False),
                    ],
                    p.MechanismECGENERATEKEYPAIR,
                )  # fmt: skip
                wrapped = bytes(self._session.wrapKey(self._kek, private, self._wrap))
                (point,) = self._session.getAttributeValue(public, [p.CKA_EC_POINT])
                if digest is not None:
                    signature = self._sign(private, digest)
            except p.PyKCS11Error as error:
                raise KeyStoreError(f"PKCS#11 key generation failed: {_name(error)}") from error
            finally:
                for made in (private, public):
                    if made is not None:
                        self._session.destroyObject(made)
        return NewKey(_raw_from_ec_point(bytes(point)), wrapped, signature, digest)

    def _sign(self, key: Any, digest: bytes) -> bytes:
        raw = bytes(self._session.sign(key, digest, self._p.Mechanism(self._p.CKM_ECDSA)))
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def sign_digest(self, handle: bytes, digest: bytes) -> bytes:
        p = self._p
        with self._lock:
            try:
                key = self._session.unwrapKey(
                    self._kek,
                    handle,
                    [
                        (p.CKA_CLASS, p.CKO_PRIVATE_KEY), (p.CKA_KEY_TYPE, p.CKK_EC), (p.CKA_TOKEN, False),
                        (p.CKA_SIGN, True), (p.CKA_SENSITIVE, True), (p.CKA_EXTRACTABLE, False),
                    ],
                    self._wrap,
                )  # fmt: skip
                try:
                    return self._sign(key, digest)
                finally:
                    self._session.destroyObject(key)
            except p.PyKCS11Error as error:
                raise KeyStoreError(f"PKCS#11 signing failed: {_name(error)}") from error


def _name(error: Exception) -> str:
    """A PKCS#11 error's CKR_ name (never a value that came from the token)."""
    return str(error).split(" ")[0] or type(error).__name__


def _raw_from_ec_point(point: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the X9.62 point (SoftHSM), or the bare point."""
    if point[0] == 0x04 and len(point) == 67 and point[2] == 0x04:
        point = point[2:]
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    return raw_public_key(key)
