"""A real cloud server on 127.0.0.1 (mutual TLS, a port chosen at run time) for each test."""

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
from tests.conftest import system_tool

SOFTHSM_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"


@dataclass
class Cloud:
    url: str
    data: Path
    portal: BlockingPortal

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


def _data(tmp_path: Path) -> Path:
    data = tmp_path / "cloud"
    data.mkdir()
    init_pki(data / "pki", 2)
    write_default(data, 0)
    return data


def _serve(data: Path) -> Iterator[Cloud]:
    settings = load(data)
    with start_blocking_portal() as portal:
        url = portal.start_task(run, settings, data)[1]
        yield Cloud(str(url), data, portal)
        portal.call(portal.stop, True)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    yield from _serve(_data(tmp_path))


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
    init_pki(other, 1)
    return other
