"""One contract for every key store: the file store here, the PKCS#11 store on SoftHSM2."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.hashes import SHA256

from cloudserver.keystore import FileKeyStore, KeyStore, KeyStoreError, Pkcs11KeyStore
from nuwire.keys import public_key_from_raw
from tests.cloudserver.conftest import SOFTHSM_LIBRARY, SoftHsm

DIGEST = hashlib.sha256(b"firmware").digest()


@pytest.fixture(params=["file", "pkcs11"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    if request.param == "file":
        yield FileKeyStore(os.urandom(32))
        return
    hsm: SoftHsm = request.getfixturevalue("softhsm")
    yield Pkcs11KeyStore(SOFTHSM_LIBRARY, hsm.token, hsm.pin)


def verifies(raw_public: bytes, signature: bytes, digest: bytes = DIGEST) -> bool:
    try:
        public_key_from_raw(raw_public).verify(signature, digest, ec.ECDSA(Prehashed(SHA256())))
    except InvalidSignature:
        return False
    return True


def test_made_keys_sign_digests_that_verify(store: KeyStore) -> None:
    made = store.generate()
    assert len(made.public_key) == 64
    assert verifies(made.public_key, store.sign_digest(made.handle, DIGEST))
    assert not verifies(
        made.public_key, store.sign_digest(made.handle, DIGEST), hashlib.sha256(b"other").digest()
    )


def test_every_key_is_new_and_the_handle_hides_the_key(store: KeyStore) -> None:
    first, second = store.generate(), store.generate()
    assert first.public_key != second.public_key
    assert first.handle != second.handle
    assert not verifies(first.public_key, store.sign_digest(second.handle, DIGEST))


def test_a_foreign_or_damaged_handle_is_refused(store: KeyStore) -> None:
    made = store.generate()
    damaged = made.handle[:-1] + bytes([made.handle[-1] ^ 1])
    with pytest.raises(KeyStoreError):
        store.sign_digest(damaged, DIGEST)
    assert "pin" not in repr(store).replace("pin=<hidden>", "")


def test_file_store_needs_its_own_master_key() -> None:
    made = FileKeyStore(os.urandom(32)).generate()
    with pytest.raises(KeyStoreError, match="does not decrypt"):
        FileKeyStore(os.urandom(32)).sign_digest(made.handle, DIGEST)
    with pytest.raises(KeyStoreError, match="32 bytes"):
        FileKeyStore(b"short")


def test_pkcs11_private_keys_are_sensitive_and_not_extractable(softhsm: SoftHsm) -> None:
    import pkcs11  # noqa: PLC0415
    from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass  # noqa: PLC0415

    store = Pkcs11KeyStore(SOFTHSM_LIBRARY, softhsm.token, softhsm.pin)
    made = store.generate()
    token = pkcs11.lib(SOFTHSM_LIBRARY).get_token(token_label=softhsm.token)
    with token.open(rw=True) as session:  # logged in already: PKCS#11 login is per process
        kek: Any = session.get_key(
            key_type=KeyType.AES, object_class=ObjectClass.SECRET_KEY, label="nuprov-kek"
        )
        assert kek[Attribute.SENSITIVE] is True
        assert kek[Attribute.EXTRACTABLE] is False
        assert kek[Attribute.TOKEN] is True
        with pytest.raises(pkcs11.PKCS11Error):
            kek[Attribute.VALUE]
        # The signing copy as the store makes it: unwrapped inside the token, never readable.
        key: Any = kek.unwrap_key(
            ObjectClass.PRIVATE_KEY,
            KeyType.EC,
            made.handle,
            mechanism=pkcs11.Mechanism.AES_KEY_WRAP_PAD,
            store=False,
            capabilities=MechanismFlag.SIGN,
            template={
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                **dict.fromkeys(
                    (
                        Attribute.ENCRYPT,
                        Attribute.DECRYPT,
                        Attribute.WRAP,
                        Attribute.UNWRAP,
                        Attribute.VERIFY,
                        Attribute.DERIVE,
                    ),
                    pkcs11.DEFAULT,
                ),
            },
        )
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.EXTRACTABLE] is False
        with pytest.raises(pkcs11.PKCS11Error):
            key[Attribute.VALUE]
        with pytest.raises(pkcs11.PKCS11Error):
            kek.wrap_key(key)
        # No per-device key is left in the token: the fleet lives in the database as wrapped blobs.
        assert (
            list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.TOKEN: True})) == []
        )
        key.destroy()
    assert made.handle
    assert verifies(made.public_key, store.sign_digest(made.handle, DIGEST))


def test_a_missing_token_is_a_key_store_error(softhsm: SoftHsm) -> None:
    with pytest.raises(KeyStoreError, match="no-such-token"):
        Pkcs11KeyStore(SOFTHSM_LIBRARY, "no-such-token", softhsm.pin)
