"""The three console scripts: help lists the subcommands; each subcommand works and fails cleanly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from boardsim.cli import main as boardsim
from cloudserver.cli import main as cloudserver
from orchestrator.cli import main as orchestrator
from tests.conftest import venv_tool


@pytest.mark.parametrize(
    ("script", "subcommands"),
    [
        ("orchestrator", ["image-info", "otp-words"]),
        ("cloudserver", ["keygen", "sign", "cert", "audit"]),
        ("boardsim", ["profile"]),
    ],
)
def test_help_lists_subcommands(script: str, subcommands: list[str]) -> None:
    result = subprocess.run([venv_tool(script), "--help"], capture_output=True, text=True, check=True)
    for name in subcommands:
        assert name in result.stdout


def test_sign_then_inspect_then_otp_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "key.pem"
    assert cloudserver(["keygen", str(key)]) == 0
    assert key.stat().st_mode & 0o777 == 0o600
    body = tmp_path / "app.bin"
    body.write_bytes(b"\x00\x01" * 5000)
    signed = tmp_path / "app.signed.bin"
    assert (
        cloudserver(
            [
                "sign",
                "--key",
                str(key),
                "--version",
                "1.4.0+2",
                "--slot",
                "application",
                str(body),
                str(signed),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert orchestrator(["image-info", str(signed), "--key", str(key)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == "1.4.0+2"
    assert info["load_addr"] == "0x00020000"
    assert info["verify"] == "ok"
    assert [t["type"] for t in info["tlvs"]] == ["0x10", "0x02", "0x22"]
    other = tmp_path / "other.pem"
    cloudserver(["keygen", str(other)])
    assert orchestrator(["image-info", str(signed), "--key", str(other)]) == 1
    assert orchestrator(["image-info", str(signed)]) == 0
    capsys.readouterr()
    assert orchestrator(["otp-words", "--key", str(key), "--purpose", "application"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["OTP8", "OTP9", "OTP10", "OTP11"]
    assert orchestrator(["otp-words", "--key", str(key), "--purpose", "bootloader"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 8


def test_errors_are_one_line_naming_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an image at all, long enough for a header....")
    assert orchestrator(["image-info", str(junk)]) == 2
    assert "ih_magic" in capsys.readouterr().err
    key = tmp_path / "key.pem"
    cloudserver(["keygen", str(key)])
    assert cloudserver(["keygen", str(key)]) == 2  # never overwrites a key
    assert "exists" in capsys.readouterr().err
    assert orchestrator(["otp-words", "--key", str(junk), "--purpose", "bootloader"]) == 2
    assert "unreadable key" in capsys.readouterr().err
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(0x30000))
    assert (
        cloudserver(
            [
                "sign",
                "--key",
                str(key),
                "--version",
                "1",
                "--slot",
                "bootloader",
                str(big),
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "slot bootloader holds" in capsys.readouterr().err


def test_public_key_files_and_wrong_curves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:

    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "pub.pem"
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    assert orchestrator(["otp-words", "--key", str(public), "--purpose", "application"]) == 0
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    assert orchestrator(["otp-words", "--key", str(p384), "--purpose", "application"]) == 2
    ed = tmp_path / "ed.pem"
    ed.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    assert orchestrator(["otp-words", "--key", str(ed), "--purpose", "application"]) == 2
    assert "a P-256 private key" in capsys.readouterr().err


def test_profile_is_printed_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert boardsim(["profile"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["pdid"] == "0xA1735440"
    assert shown["otp"]["app_key_hash"] == [8, 11]  # first and last entry
    assert shown["unlock_sequence"] == ["0x59", "0x16", "0x88"]
