"""One contract for every key store: the file store here, the PKCS#11 store on SoftHSM2."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

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


def test_a_key_made_for_a_digest_comes_with_its_signature(store: KeyStore) -> None:
    made = store.generate(DIGEST)
    assert made.signature is not None
    assert verifies(made.public_key, made.signature)
    assert verifies(made.public_key, store.sign_digest(made.handle, DIGEST))  # the wrapped key is the same
    assert store.generate().signature is None


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


ATTACKER = """
import json, sys
import PyKCS11 as p

library, label, pin, handle = sys.argv[1], sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4])
lib = p.PyKCS11Lib()
lib.load(library)
slot = next(s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == label)
session = lib.openSession(slot, p.CKF_SERIAL_SESSION | p.CKF_RW_SESSION)
session.login(pin)
kek = session.findObjects([(p.CKA_CLASS, p.CKO_SECRET_KEY), (p.CKA_LABEL, "nuprov-kek")])[0]
wrap = p.Mechanism(p.CKM_AES_KEY_WRAP_PAD)
base = [(p.CKA_CLASS, p.CKO_PRIVATE_KEY), (p.CKA_KEY_TYPE, p.CKK_EC), (p.CKA_TOKEN, False)]
found = {}

def attempt(name, work):
    try:
        got = work()
    except p.PyKCS11Error as error:
        found[name] = "refused: " + str(error).split(" ")[0]
        return
    if isinstance(got, list) and None in got:  # PyKCS11's answer to CKR_ATTRIBUTE_SENSITIVE
        found[name] = "refused: CKR_ATTRIBUTE_SENSITIVE"
    else:
        found[name] = "done: " + repr(got)[:80]

def unwrap(*extra):
    return session.unwrapKey(kek, handle, [*base, *extra], wrap)

attempt("unwrap extractable", lambda: unwrap((p.CKA_EXTRACTABLE, True)))
attempt("unwrap not sensitive", lambda: unwrap((p.CKA_SENSITIVE, False)))
attempt("decrypt the blob with the KEK", lambda: session.decrypt(kek, handle, wrap))
attempt("read the KEK", lambda: session.getAttributeValue(kek, [p.CKA_VALUE]))
allowed = [*base, (p.CKA_SIGN, True), (p.CKA_SENSITIVE, True), (p.CKA_EXTRACTABLE, False)]
key = unwrap(*allowed[3:])  # the only way the token allows
found["unwrapped as"] = repr(session.getAttributeValue(key, [p.CKA_SENSITIVE, p.CKA_EXTRACTABLE]))
attempt("read the unwrapped key", lambda: session.getAttributeValue(key, [p.CKA_VALUE], True))
own = session.generateKey([(p.CKA_CLASS, p.CKO_SECRET_KEY), (p.CKA_KEY_TYPE, p.CKK_AES),
    (p.CKA_VALUE_LEN, 32), (p.CKA_TOKEN, False), (p.CKA_SENSITIVE, False), (p.CKA_EXTRACTABLE, True),
    (p.CKA_WRAP, True)],
    p.MechanismAESGENERATEKEY)
attempt("wrap it under a key of ours", lambda: session.wrapKey(own, key, wrap))
attempt("wrap it under the KEK", lambda: session.wrapKey(kek, key, wrap))
print(json.dumps(found))
"""


def test_with_the_pin_and_the_database_no_device_key_can_be_read_in_clear(softhsm: SoftHsm) -> None:
    """An attacker with the PIN and a device key's blob from the database, in a process of their
    own: every way to the key in clear is refused by the token; it can only be used to sign."""
    import json  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    store = Pkcs11KeyStore(SOFTHSM_LIBRARY, softhsm.token, softhsm.pin)
    made = store.generate()
    done = subprocess.run(
        [sys.executable, "-c", ATTACKER, SOFTHSM_LIBRARY, softhsm.token, softhsm.pin, made.handle.hex()],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found.pop("unwrapped as") == "[True, False]"  # sensitive, not extractable
    assert all(outcome.startswith("refused: CKR_") for outcome in found.values()), found
    assert len(found) == 7
    assert verifies(made.public_key, store.sign_digest(made.handle, DIGEST))


def test_a_missing_token_is_a_key_store_error(softhsm: SoftHsm) -> None:
    with pytest.raises(KeyStoreError, match="no-such-token"):
        Pkcs11KeyStore(SOFTHSM_LIBRARY, "no-such-token", softhsm.pin)


def test_secrets_come_from_systemds_credentials_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudserver.settings import FileStore, Settings, SettingsError  # noqa: PLC0415

    settings = Settings(keystore=FileStore(master_key_file="{credentials}/master.key"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(SettingsError, match="CREDENTIALS_DIRECTORY is not set"):
        settings.open_keystore(tmp_path)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "master.key").write_bytes(os.urandom(32))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    store = settings.open_keystore(tmp_path / "data")  # not in the data folder
    made = store.generate()
    assert verifies(made.public_key, store.sign_digest(made.handle, DIGEST))
