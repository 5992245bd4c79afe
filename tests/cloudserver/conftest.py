"""A real cloud server on 127.0.0.1 (mutual TLS, a port chosen at run time) for each test, on
SQLite and on a real PostgreSQL (tests/pg.py: one server for the run, a database per test)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from cloudserver.client import CloudClient, client_context
from cloudserver.pki import init_pki
from cloudserver.server import run
from cloudserver.settings import Pkcs11Store, load, write_default
from tests import pg
from tests.conftest import system_tool

SOFTHSM_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"


@dataclass
class Cloud:
    url: str
    data: Path
    portal: BlockingPortal
    postgres: pg.Postgres | None = None
    database: str = ""
    """PostgreSQL's database name ('' on SQLite)."""

    def sql(self, statement: str) -> list[tuple[str, ...]]:
        """Run ``statement`` on the server's database as its owner would, behind the server's
        back (sqlite3 on the file, psql as PostgreSQL's superuser); the rows, as text."""
        if self.postgres is None:
            import sqlite3  # noqa: PLC0415

            try:
                with sqlite3.connect(self.data / "cloud.db") as db:
                    return [tuple(str(v) for v in row) for row in db.execute(statement)]
            except sqlite3.DatabaseError as error:
                raise RuntimeError(f"sqlite3: {error}") from None
        out = self.postgres.psql(self.database, statement)
        return [tuple(line.split("|")) for line in out.splitlines() if line]

    def client(self, who: str = "station-01", **options: object) -> CloudClient:
        pki = self.data / "pki"
        context = client_context(pki / f"{who}.crt", pki / f"{who}.key", pki / "ca.crt")
        return CloudClient(self.url, context, **options)  # type: ignore[arg-type]  # test options


@dataclass
class SoftHsm:
    config: Path
    token: str
    pin: str
    so_pin: str


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    """One SoftHSM2 token for the whole run: the library reads its configuration once per process."""
    util = system_tool("softhsm2-util", "softhsm2")
    if not Path(SOFTHSM_LIBRARY).exists():
        system_tool("missing-libsofthsm2", "softhsm2")
    folder = tmp_path_factory.mktemp("softhsm")
    tokens = folder / "tokens"
    tokens.mkdir()
    config = folder / "softhsm2.conf"
    config.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(config)
    hsm = SoftHsm(config, "nuprov-test", "87654321", "12345678")
    subprocess.run(
        [util, "--init-token", "--free", "--label", hsm.token, "--so-pin", hsm.so_pin, "--pin", hsm.pin],
        check=True,
        capture_output=True,
        env=os.environ,
    )
    return hsm


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg.Postgres]:
    server = pg.start()
    yield server
    server.stop()


def _data(tmp_path: Path, database: str = "") -> Path:
    """A cloud's data folder (``database``: the URL in settings.json, default SQLite's file)."""
    data = tmp_path / "cloud"
    data.mkdir()
    init_pki(data / "pki", 2, ca_key_folder=tmp_path / "ca")
    write_default(data, 0)
    if database:
        settings = load(data)
        settings.database = database
        (data / "settings.json").write_text(settings.model_dump_json(indent=1))
    return data


def _serve(data: Path, postgres: pg.Postgres | None = None, database: str = "") -> Iterator[Cloud]:
    settings = load(data)
    with start_blocking_portal() as portal:
        url = portal.start_task(run, settings, data)[1]
        yield Cloud(str(url), data, portal, postgres, database)
        portal.call(portal.stop, True)


@pytest.fixture(params=["sqlite", "postgres"])
def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cloud]:
    if request.param == "sqlite":
        yield from _serve(_data(tmp_path))
        return
    server: pg.Postgres = request.getfixturevalue("postgres")
    database = server.new_database()
    yield from _serve(_data(tmp_path, server.url(database)), server, database)


@pytest.fixture
def hsm_cloud(tmp_path: Path, softhsm: SoftHsm) -> Iterator[Cloud]:
    data = _data(tmp_path)
    (data / "pin").write_text(softhsm.pin)
    settings = load(data)
    settings.keystore = Pkcs11Store(
        type="pkcs11", token_label=softhsm.token, pin_file="pin", library=SOFTHSM_LIBRARY
    )
    (data / "settings.json").write_text(settings.model_dump_json(indent=1))
    yield from _serve(data)


def foreign_pki(tmp_path: Path) -> Path:
    """Certificates from another CA, with the same names."""
    other = tmp_path / "other"
    init_pki(other, 1, ca_key_folder=tmp_path / "other-ca")
    return other
