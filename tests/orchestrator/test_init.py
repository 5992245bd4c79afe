"""``orchestrator init`` and ``doctor`` on what goes wrong (the whole way through, with a cloud and
a simulated line, is tests/test_readme.py): credentials checked before they are copied, nothing
overwritten, stations from a file or paired from USB serial numbers, and doctor's rows naming the
fix for each broken part."""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import pytest
import yaml
from serial.tools.list_ports_common import ListPortInfo

from cloudserver.pki import init_pki, issue_client
from orchestrator.cli import main
from orchestrator.credentials import examine
from orchestrator.init import pair
from tests.pg import free_port

KEY = (  # Nuvoton's published demo key (a test vector)
    "755b3819f05a3e9f32d4d599062834aac5220f75955378414a8f63716a152ce2"
    "91c413f1915ed7b47473fd797647ba3d83e8224377909af5b30c530eaad79fd7"
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    init_pki(folder / "pki", 2, ca_key_folder=folder / "ca", line="line-7")
    init_pki(folder / "other", 1, ca_key_folder=folder / "other-ca")  # another cloud's CA
    return folder


def stations_file(folder: Path, uart: str = "uart/station-01") -> Path:
    path = folder / "sim.yaml"
    stations = [{"name": "station-01", "probe": "boardsim:NULINK3-SIM-01", "uart": uart, "baud": 115200}]
    path.write_text(
        yaml.safe_dump(
            {"secureisp": {"rom_public_key": KEY, "bootloader_public_key": KEY}, "stations": stations}
        )
    )
    return path


def init_args(pki: Path, target: Path, **changes: str) -> list[str]:
    options = {
        "--cloud": f"https://127.0.0.1:{free_port()}",
        "--job": "job-000000000001",
        "--ca": str(pki / "pki" / "ca.crt"),
        "--certificate": str(pki / "pki" / "station-01.crt"),
        "--key": str(pki / "pki" / "station-01.key"),
        "--stations": str(stations_file(target.parent)),
        "--api-listen": "127.0.0.1:0",
        **changes,
    }
    return ["init", str(target), *[part for pair in options.items() for part in pair if pair[1]]]


def test_init_writes_a_folder_whose_paths_are_its_own(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(init_args(pki, tmp_path / "line")) == 0
    config = yaml.safe_load((tmp_path / "line" / "stations.yaml").read_text())
    assert config["line"] == "line-7"  # from the certificate's L=
    assert config["cloud"]["client_key"] == "pki/station.key"
    assert config["stations"][0]["uart"] == str(tmp_path / "uart" / "station-01")  # relative to sim.yaml
    for secret in ("api-token", "station-isp-key.pem", "pki/station.key"):
        assert (tmp_path / "line" / secret).stat().st_mode & 0o777 == 0o600
    token = (tmp_path / "line" / "api-token").read_text()
    assert main(init_args(pki, tmp_path / "line")) == 2  # never overwrites
    assert "exists; init never overwrites" in capsys.readouterr().err
    assert (tmp_path / "line" / "api-token").read_text() == token


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"--key": "pki/station-02.key"}, "is not the key of certificate"),
        ({"--ca": "other/ca.crt"}, "is not signed by the CA"),
        ({"--certificate": "pki/admin.crt", "--key": "pki/admin.key"}, "is not a station's"),
        ({"--certificate": "pki/ca.key"}, "expected a PEM certificate"),
        ({"--cloud": "http://127.0.0.1:1"}, "--cloud http://127.0.0.1:1: the cloud is reached over https://"),
        ({"--stations": ""}, "no probe with a UART found"),
    ],
)
def test_init_refuses_what_would_not_work_and_writes_nothing(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, str], said: str
) -> None:
    changes = {
        k: str(pki / v) if v and k in ("--key", "--ca", "--certificate") else v for k, v in changes.items()
    }
    if changes.get("--certificate", "").endswith("ca.key"):
        changes["--certificate"] = str(pki / "ca" / "ca.key")
    assert main(init_args(pki, tmp_path / "line", **changes)) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "line" / "stations.yaml").exists()


def test_init_needs_the_secureisp_keys_when_the_stations_file_has_none(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"stations": [{"name": "s1", "probe": "p1", "uart": "/dev/ttyACM0"}]}))
    assert main(init_args(pki, tmp_path / "line", **{"--stations": str(bare)})) == 2
    assert "--rom-public-key: needed" in capsys.readouterr().err
    given = {"--stations": str(bare), "--rom-public-key": KEY, "--bootloader-public-key": KEY[:-2]}
    assert main(init_args(pki, tmp_path / "line", **given)) == 2
    assert "--bootloader-public-key: not a P-256 public key" in capsys.readouterr().err
    given["--bootloader-public-key"] = KEY
    assert main(init_args(pki, tmp_path / "line", **given)) == 0


def test_discovered_probes_are_paired_with_the_uart_of_their_usb_serial() -> None:
    ports = []
    for device, serial in (
        ("/dev/ttyACM1", "13010000AAAA"),
        ("/dev/ttyACM0", "13010000BBBB"),
        ("/dev/ttyUSB0", None),
    ):
        port = ListPortInfo(device, skip_link_detection=True)
        port.serial_number = serial
        ports.append(port)
    probes = [
        ("13010000bbbb", "Nu-Link3"),
        ("cmsisdap:13010000AAAA", "Nu-Link3"),
        ("0669FF000000", "ST-Link"),
    ]
    stations, left = pair(probes, ports, 921_600)
    assert [(s["probe"], s["uart"], s["baud"]) for s in stations] == [
        ("13010000bbbb", "/dev/ttyACM0", 921_600),
        ("cmsisdap:13010000AAAA", "/dev/ttyACM1", 921_600),
    ]
    assert [s["name"] for s in stations] == ["station-01", "station-02"]
    assert left == ["probe 0669FF000000 (ST-Link): no UART with its serial number; add its uart by hand"]


def test_a_certificate_near_or_past_its_end_is_reported(pki: Path) -> None:
    files = [pki / "pki" / name for name in ("station-01.crt", "station-01.key", "ca.crt")]
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=810)
    assert "renew it" in examine(*files, now=later)[1][0]
    assert "expired on" in examine(*files, now=later + datetime.timedelta(days=30))[1][0]
    issue_client(pki / "pki", pki / "ca" / "ca.key", "nowhere", role="station")
    problems = examine(pki / "pki" / "nowhere.crt", pki / "pki" / "nowhere.key", files[2])[1]
    assert problems == [f"certificate {pki / 'pki' / 'nowhere.crt'} names no line (L=): the cloud refuses it"]


def doctor_rows(line: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, list[dict[str, object]]]:
    assert (
        main(["doctor", "--config", str(line / "stations.yaml"), "--journal", str(line / "j.db"), "--json"])
        == 1
    )
    rows: dict[str, list[dict[str, object]]] = {}
    for row in json.loads(capsys.readouterr().out):
        rows.setdefault(row["check"], []).append(row)
    return rows


def test_doctor_names_each_broken_part_with_its_fix(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = tmp_path / "line"
    assert main(init_args(pki, line)) == 0  # its UART does not exist, no cloud listens
    capsys.readouterr()
    (line / "station-isp-key.pem").chmod(0o644)
    rows = doctor_rows(line, capsys)
    assert {check for check, found in rows.items() if not any(row["ok"] for row in found)} == {
        "config", "cloud", "probe", "uart"
    }  # fmt: skip
    config = (line / "stations.yaml").read_text().splitlines()
    at = {
        key: next(n for n, text in enumerate(config, 1) if f"{key}:" in text)
        for key in ("uart", "station_key")
    }
    assert [row["detail"] for row in rows["config"]] == [
        f"{line}/stations.yaml:{at['station_key']}: secureisp.station_key: {line}/station-isp-key.pem: "
        f"mode 0644, others can read it: chmod 600 {line}/station-isp-key.pem",
        f"{line}/stations.yaml:{at['uart']}: stations.0.uart: {tmp_path}/uart/station-01: no such device",
    ]
    assert str(rows["cloud"][0]["detail"]).startswith("the cloud does not answer")
    assert [(row["detail"], "pyocd list" in str(row["fix"])) for row in rows["probe"]] == [
        ("not connected", True)
    ]
    assert "No such file or directory" in str(rows["uart"][0]["detail"])
    assert all(rows[check][0]["ok"] for check in ("certificate", "station key", "api", "journal"))
    shutil.copyfile(pki / "pki" / "station-02.crt", line / "pki" / "station.crt")  # another station's
    rows = doctor_rows(line, capsys)
    assert "is not the key of certificate" in str(rows["certificate"][0]["detail"])
    assert "cloudserver cert issue" in str(rows["certificate"][0]["fix"])
    assert rows["cloud"][0]["fix"] == "mend the certificate row first"


def test_doctor_on_an_unreadable_configuration_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "stations.yaml").write_text("line: [unclosed\n")
    assert main(["doctor", "--config", str(tmp_path / "stations.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().out
