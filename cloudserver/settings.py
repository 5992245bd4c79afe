"""DATA_DIR/settings.json: where the server listens, its TLS files, database and key store.

Relative paths are relative to DATA_DIR; ``{credentials}`` in a path is systemd's credentials
folder ($CREDENTIALS_DIRECTORY, from LoadCredential= in the unit), so secrets (the PKCS#11 PIN, the
file key store's master key) need not live in the data folder. ``cloudserver init`` writes a
working development file; production edits it to point at its own PKI, PostgreSQL URL and token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloudserver.keystore import FileKeyStore, KeyStore, KeyStoreError, Pkcs11KeyStore


class SettingsError(Exception):
    """settings.json is missing or wrong, or what it names cannot be used; the message names the
    file, the setting and what is wrong, in one line (``cloudserver serve`` exits 2 with it)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Listen(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)


class Tls(_Strict):
    certificate: str = "pki/server.crt"
    key: str = "pki/server.key"
    client_ca: str = "pki/ca.crt"


class FileStore(_Strict):
    type: Literal["file"] = "file"
    master_key_file: str = "master.key"


class Pkcs11Store(_Strict):
    type: Literal["pkcs11"]
    library: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str
    pin_file: str
    kek_label: str = "nuprov-kek"


class Limits(_Strict):
    """Requests per station certificate (a token bucket per certificate, per replica): past it,
    429 with Retry-After. A line's stations make a few requests a board each."""

    station_rate_per_s: float = Field(default=200.0, gt=0)
    station_burst: int = Field(default=400, ge=1)


class Settings(_Strict):
    listen: Listen = Listen()
    limits: Limits = Limits()
    tls: Tls = Tls()
    database: str = "sqlite+aiosqlite:///{data}/cloud.db"
    keystore: FileStore | Pkcs11Store = Field(default_factory=FileStore, discriminator="type")
    profile: str = "M2354"

    def path(self, data: Path, value: str) -> Path:
        if "{credentials}" in value:
            folder = os.environ.get("CREDENTIALS_DIRECTORY")
            if not folder:
                raise SettingsError(
                    f"{data / 'settings.json'}: {value!r} names {{credentials}}, but CREDENTIALS_DIRECTORY "
                    "is not set (LoadCredential= in the unit sets it)"
                )
            value = value.replace("{credentials}", folder)
        candidate = Path(value)
        return candidate if candidate.is_absolute() else data / candidate

    def database_url(self, data: Path) -> str:
        return self.database.replace("{data}", str(data.resolve()))

    def read(self, data: Path, setting: str, value: str) -> bytes:
        """The file a setting names; a SettingsError naming the setting when it cannot be read."""
        path = self.path(data, value)
        try:
            return path.read_bytes()
        except OSError as error:
            raise SettingsError(f"{data / 'settings.json'}: {setting}: {path}: {error.strerror}") from None

    def tls_files(self, data: Path) -> tuple[Path, Path, Path]:
        """The server certificate, its key and the client CA, each checked readable."""
        for setting in ("certificate", "key", "client_ca"):
            self.read(data, f"tls.{setting}", getattr(self.tls, setting))
        tls = self.tls
        return self.path(data, tls.certificate), self.path(data, tls.key), self.path(data, tls.client_ca)

    def open_keystore(self, data: Path) -> KeyStore:
        store = self.keystore
        try:
            if isinstance(store, FileStore):
                return FileKeyStore(self.read(data, "keystore.master_key_file", store.master_key_file))
            pin = self.read(data, "keystore.pin_file", store.pin_file).decode().strip()
            return Pkcs11KeyStore(store.library, store.token_label, pin, store.kek_label)
        except KeyStoreError as error:
            raise SettingsError(f"{data / 'settings.json'}: keystore: {error}") from None


def load(data: Path) -> Settings:
    path = data / "settings.json"
    try:
        return Settings.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise SettingsError(f"{path}: not found; run cloudserver init --data {data}") from None
    except ValueError as error:
        if isinstance(error, ValidationError):
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise SettingsError(f"{path}: {where}: {first['msg']}") from None
        raise SettingsError(f"{path}: not JSON: {error}") from None


def write_default(data: Path, port: int) -> Settings:
    settings = Settings(listen=Listen(port=port))
    (data / "settings.json").write_text(settings.model_dump_json(indent=1))
    key_file = data / "master.key"
    if not key_file.exists():
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32))
    return settings
