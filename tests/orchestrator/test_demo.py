"""A demo run, checked from the outside: every board's state on disk, the report, and that no
secret reached a log or the journal."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from nuwire import mcuboot
from nuwire.keys import from_otp_entries, key_hash, public_key_from_raw, raw_public_key, to_otp_entries
from nuwire.pem import load_private_key
from nuwire.profiles import M2354
from tests.conftest import venv_tool

STATIONS, BOARDS = 2, 2


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("demo") / "run"
    result = subprocess.run(
        [
            venv_tool("orchestrator"),
            "demo",
            "--workdir",
            str(workdir),
            "--stations",
            str(STATIONS),
            "--boards",
            str(BOARDS),
            "--app-size",
            "6000",
            "--api-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


def boards(workdir: Path) -> list[tuple[dict[str, Any], Path]]:
    return [
        (json.loads((folder / "state.json").read_text()), folder)
        for folder in sorted((workdir / "boards").glob("53494D*"))
    ]


def test_report_says_every_board_passed(run: Path) -> None:
    report = json.loads((run / "report.json").read_text())
    assert report["totals"]["pass"] == STATIONS * BOARDS
    assert report["totals"]["fail"] == report["totals"]["quarantine"] == 0
    assert all(
        b["outcome"] == "PASS" and sorted(b["steps"], key=int) == [str(n) for n in range(1, 14)]
        for b in report["boards"]
    )
    for board in report["boards"]:  # what a traceability record needs (issue 14, build 4)
        assert board["started"].endswith("Z")
        assert board["finished"] > board["started"]
        for image in ("bootloader", "application"):
            assert len(board[image]["sha256"]) == 64, board[image]
            assert board[image]["version"].count(".") == 2
        assert all(step["attempts"] >= 1 for step in board["steps"].values())


def test_every_board_is_provisioned_exactly_as_specified(run: Path) -> None:
    found = boards(run)
    assert len(found) == STATIONS * BOARDS
    firmware = run / "firmware"
    seen_keys: set[bytes] = set()
    for state, folder in found:
        assert state["booted"] == "application"
        assert state["debug_locked"] is True
        otp = (folder / "otp.bin").read_bytes()
        entries = to_otp_entries(otp)
        boot_key = from_otp_entries(entries[0:8])
        app_hash = from_otp_entries(entries[8:12])
        aprom = (folder / "aprom.bin").read_bytes()
        bootloader = mcuboot.parse(
            aprom[M2354.bootloader_slot.base : M2354.bootloader_slot.base + M2354.bootloader_slot.size]
        )
        assert mcuboot.verify(bootloader, public_key_from_raw(boot_key)) is mcuboot.Verdict.OK
        assert bootloader.body == (firmware / "bootloader.bin").read_bytes()
        slot = M2354.application_slot
        application = mcuboot.parse(aprom[slot.base : slot.base + slot.size])
        embedded = application.embedded_public_key()
        assert embedded is not None
        assert key_hash(raw_public_key(embedded)) == app_hash
        assert mcuboot.verify_against_key_hash(application, app_hash) is mcuboot.Verdict.OK
        assert application.body == (firmware / "app.bin").read_bytes()
        counts = state["otp_program_counts"]
        assert counts[:24] == [1] * 24  # each word of entries 0..11 programmed exactly once
        assert not any(counts[24:])  # and no other OTP word touched
        assert otp[96:] == b"\xff" * (len(otp) - 96)
        for key in (boot_key, raw_public_key(embedded)):
            assert key not in seen_keys
            seen_keys.add(key)


def test_no_secret_in_logs_or_journal(run: Path) -> None:
    haystack = b"".join(path.read_bytes() for path in [*(run / "logs").glob("*"), *run.glob("journal.db*")])
    station_key = load_private_key(run / "station-isp-key.pem")
    secrets = [
        station_key.private_numbers().private_value.to_bytes(32, "big"),
        station_key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption()),
        (run / "cloud" / "master.key").read_bytes(),
    ]
    for secret in secrets:
        assert secret not in haystack
        assert secret.hex().encode() not in haystack
    application = (run / "firmware" / "app.bin").read_bytes()
    for offset in range(0, len(application) - 32, 512):
        chunk = application[offset : offset + 32]
        assert chunk not in haystack
        assert chunk.hex().encode() not in haystack
    logged = [json.loads(line) for line in (run / "logs" / "orchestrator.jsonl").read_text().splitlines()]
    assert {"step.start", "step.end", "board.done"} <= {entry["event"] for entry in logged}
    done = [entry for entry in logged if entry["event"] == "board.done"]
    assert len(done) == STATIONS * BOARDS
    assert all({"line", "station", "uid", "job", "outcome", "duration_ms"} <= set(entry) for entry in done)
