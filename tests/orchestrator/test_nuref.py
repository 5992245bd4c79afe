"""The orchestrator's own steps 8-13 (IspSteps, UartLink, HostSession) against Nuvoton's SecureISP
target code built with firmware/ (../shared/nuvoton-ref), and ``orchestrator isp-info`` against the
`faithful` and `fixedkey` builds."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cloudserver.client import SignedKey
from nuwire import mcuboot
from nuwire.ids import format_uid
from nuwire.keys import public_key_from_raw, raw_public_key
from nuwire.profiles import M2354
from nuwire.secureisp.firmware import DEMO_KEY
from orchestrator.isp_steps import HostKeys, IspSteps
from orchestrator.journal import Board, Journal
from orchestrator.uart import UartLink
from tests.conftest import venv_tool
from tests.nuref import NurefBoard, build_nuref

UID = format_uid((0x4E555245, 0x46554944, 1))  # nuref's default NUREF_UID


@pytest.fixture(scope="module")
def nuref_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_nuref(tmp_path_factory.mktemp("nuref"))


@pytest.fixture
def station_key(tmp_path: Path) -> Path:
    path = tmp_path / "station.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


@pytest.fixture
def board(nuref_build: Path, tmp_path: Path) -> Iterator[NurefBoard]:
    board = NurefBoard(nuref_build / "nuref-m2354-faithful", tmp_path / "chip", tmp_path / "uart")
    yield board
    board.close()


@pytest.mark.parametrize(("build", "profile"), [("faithful", "M2354"), ("fixedkey", "M2354-fixedkey")])
def test_isp_info_names_the_part_and_its_uid(
    nuref_build: Path, tmp_path: Path, station_key: Path, build: str, profile: str
) -> None:
    board = NurefBoard(nuref_build / f"nuref-m2354-{build}", tmp_path / "chip", tmp_path / "uart")
    try:
        command = [venv_tool("orchestrator"), "isp-info", "--uart", str(tmp_path / "uart")]
        command += ["--station-key", str(station_key), "--profile", profile]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        info = json.loads(result.stdout)
        assert info["pdid"] == "0xA1735440"
        assert info["uid"] == ["0x4E555245", "0x46554944", "0x00000001"]
        assert info["version"] == "0x23551171"
        wrong = "M2354-fixedkey" if profile == "M2354" else "M2354"  # the other firmware's setting
        command[-1] = wrong
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2
        assert "ECDH_GET_PUB0 target static key" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    finally:
        board.close()
    assert board.counts() == [0] * 512  # isp-info writes nothing


def _application() -> tuple[SignedKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    body = hashlib.sha256(b"application").digest() * 200  # 6400 bytes: 134 MASS_WRITE chunks
    image = mcuboot.build(
        body,
        signer=mcuboot.private_key_signer(key),
        public_key=key.public_key(),
        version=mcuboot.Version(1, 2, 3),
        key_format=mcuboot.KeyFormat.FULL,
    )
    raw = raw_public_key(key.public_key())
    return SignedKey(raw, image, hashlib.sha256(image).hexdigest()), raw


def _steps(
    board: NurefBoard, journal: Journal, signed: SignedKey, key: ec.EllipticCurvePrivateKey
) -> IspSteps:
    demo = public_key_from_raw(DEMO_KEY)  # the static key compiled into Nuvoton's SecureISP.c

    async def application(_: Board) -> SignedKey:
        return signed

    return IspSteps(
        M2354,
        HostKeys(key, demo, demo),
        link=lambda: UartLink(str(board.link), 115200, timeout=2),
        reset=board.reset,
        journal=journal,
        station="station-nuref",
        application=application,
    )


def test_steps_8_to_13_program_each_otp_word_once_and_recover_a_damaged_packet(
    board: NurefBoard, tmp_path: Path
) -> None:
    signed, app_key = _application()
    journal = Journal(tmp_path / "journal.db")
    record = Board(uid=UID, station="station-nuref", application_key=app_key.hex())
    journal.save(record)
    steps = _steps(board, journal, signed, ec.generate_private_key(ec.SECP256R1()))
    damaged: list[float] = []

    def progress(done: float) -> None:
        if done > 0.5 and not damaged:  # halfway through the download: the next packet is damaged
            damaged.append(done)
            board.damage_byte(20)

    steps.progress = progress
    anyio.run(steps.run, record)
    assert damaged
    anyio.run(steps.run, record)  # a second run reads OTP back and programs nothing
    board.close()

    counts = board.counts()
    assert counts[16:24] == [1] * 8, counts[16:24]  # OTP entries 8..11, low and high words
    assert sum(counts) == 8
    otp = (tmp_path / "chip" / "otp.bin").read_bytes()
    assert otp[64:96] == hashlib.sha256(app_key).digest()
    slot = M2354.application_slot.base
    assert board.flash()[slot : slot + len(signed.image)] == signed.image
    assert 0 in board.exits
    assert 12 in board.exits
    intents = [e for e in journal.steps(UID) if e["phase"] == "otp-intent"]
    assert len(intents) == 4


def test_firmware_builds_warning_free_for_the_host_and_cortex_m23(tmp_path: Path) -> None:
    from tests.conftest import system_tool  # noqa: PLC0415

    system_tool("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    firmware = Path(__file__).resolve().parents[2] / "firmware"
    for target in ("warnings", "m23"):
        result = subprocess.run(
            ["make", "-s", "-C", str(firmware), target, f"BUILD={tmp_path}"],  # noqa: S607  # system make
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "warning" not in result.stderr
    assert (tmp_path / "m23" / "vendor.o").exists()
    assert (tmp_path / "m23" / "sha256.o").exists()
