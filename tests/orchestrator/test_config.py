"""stations.yaml validation: every error names the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from nuwire.keys import raw_public_key
from orchestrator.cli import main
from orchestrator.config import ConfigError, load

KEY = raw_public_key(ec.generate_private_key(ec.SECP256R1()).public_key()).hex()
GOOD = f"""\
line: line-a
cloud:
  url: https://127.0.0.1:8443
  client_certificate: pki/station.crt
  client_key: pki/station.key
  ca: pki/ca.crt
job_id: job-0123456789ab
secureisp:
  rom_public_key: {KEY}
  bootloader_public_key: {KEY}
  station_key: station.pem
stations:
  - name: s1
    probe: "boardsim:A"
    uart: /dev/ttyACM0
  - name: s2
    probe: "boardsim:B"
    uart: /dev/ttyACM1
    baud: 921600
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stations.yaml"
    path.write_text(text)
    return path


def test_a_good_file_loads_with_paths_relative_to_it(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD))
    assert [s.name for s in config.stations] == ["s1", "s2"]
    assert config.cloud.ca == tmp_path / "pki" / "ca.crt"
    assert config.defaults.uart.timeout_s == 2


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("    baud: 921600", "    baud: fast"), ":19: stations.1.baud: Input should be a valid integer"),
        (
            ("    uart: /dev/ttyACM1", "    uart: /dev/ttyACM0"),
            ":18: stations.1.uart: '/dev/ttyACM0' is already used by station 0",
        ),
        (
            ('    probe: "boardsim:B"', '    probe: "boardsim:A"'),
            ":17: stations.1.probe: 'boardsim:A' is already used",
        ),
        (  # one probe in another spelling (issue 10, finding 8)
            ('    probe: "boardsim:B"', '    probe: "BOARDSIM:a"'),
            ":17: stations.1.probe: 'BOARDSIM:a' is already used by station 0",
        ),
        (  # one probe under another probe type: the same serial
            ('    probe: "boardsim:B"', '    probe: "cmsisdap:a"'),
            ":17: stations.1.probe: 'cmsisdap:a' is already used by station 0",
        ),
        (  # one UART by another path to the same device
            ("    uart: /dev/ttyACM1", "    uart: /dev/../dev/ttyACM0"),
            ":18: stations.1.uart: '/dev/../dev/ttyACM0' is already used by station 0",
        ),
        (
            ("  - name: s1", "  - name: s1\n    colour: red"),
            ":14: stations.0.colour: Extra inputs are not permitted",
        ),
        (
            ("  url: https://127.0.0.1:8443", "  url: http://127.0.0.1:8443"),
            ":3: cloud.url: String should match pattern",
        ),
        (
            (f"  rom_public_key: {KEY}", "  rom_public_key: 'abcd'"),
            ":9: secureisp.rom_public_key: not a P-256 public key",
        ),
        (("line: line-a", "line: [oops"), ": not valid YAML"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ConfigError) as error:
        load(path)
    assert str(error.value).startswith(str(path))
    assert expected in str(error.value)


def _files_it_names(tmp_path: Path) -> str:
    """GOOD with every file it names in place (secrets 0600) and UARTs that exist (ptys)."""
    import os  # noqa: PLC0415
    import pty  # noqa: PLC0415

    (tmp_path / "pki").mkdir(exist_ok=True)
    for name, mode in (("pki/station.crt", 0o644), ("pki/station.key", 0o600), ("pki/ca.crt", 0o644),
                       ("station.pem", 0o600)):  # fmt: skip
        (tmp_path / name).write_text("x")
        (tmp_path / name).chmod(mode)
    text = GOOD
    for device in ("/dev/ttyACM0", "/dev/ttyACM1"):
        _, follower = pty.openpty()
        text = text.replace(device, os.ttyname(follower))
    return text


def test_check_config_reports_every_mistake_at_once_with_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Five distinct mistakes: a bad field, a duplicate UART, a missing certificate, a station key
    others can read, a UART that is not there; each reported as file:line: field."""
    text = _files_it_names(tmp_path)
    (tmp_path / "station.pem").chmod(0o644)
    (tmp_path / "pki" / "ca.crt").unlink()
    s1_uart, s2_uart = (line.split(": ")[1] for line in text.splitlines() if "uart:" in line)
    text = text.replace(s2_uart, s1_uart)  # s2 on s1's UART
    text = text.replace('  - name: s1\n    probe: "boardsim:A"\n', '  - name: s1\n    probe: ""\n')
    text += '  - name: s3\n    probe: "boardsim:C"\n    uart: /dev/no-such-uart\n'
    path = write(tmp_path, text)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    problems = [
        line.removeprefix("orchestrator: error: ") for line in err if line.startswith("orchestrator: error: ")
    ]
    assert len(problems) == 5, err
    expected_lines = (":14: stations.0.probe:", ":18: stations.1.uart:", ":6: cloud.ca:",
                      ":11: secureisp.station_key:", ":22: stations.2.uart:")  # fmt: skip
    for expected in expected_lines:
        assert any(p.startswith(str(path)) and expected in p for p in problems), (expected, problems)
    assert err[-1] == f"{path}: 5 problems"


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(write(tmp_path, _files_it_names(tmp_path)))]) == 0
    assert "2 stations" in capsys.readouterr().out
    assert main(["check-config", str(write(tmp_path, GOOD.replace("job_id", "job")))]) == 2
    assert "stations.yaml" in capsys.readouterr().err
    assert main(["check-config", str(tmp_path / "missing.yaml")]) == 2


def test_the_shipped_stations_yaml_is_valid() -> None:
    load(Path(__file__).parent.parent.parent / "stations.yaml")


def test_an_unusable_token_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(
        tmp_path, GOOD.replace("stations:\n", "api:\n  token_file: secret/api-token\nstations:\n", 1)
    )
    assert main(["station", "pause", "s1", "--config", str(config)]) == 2
    assert f"api.token_file {tmp_path / 'secret' / 'api-token'}: No such file" in capsys.readouterr().err
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "api-token").write_text("short\n")
    assert main(["station", "pause", "s1", "--config", str(config)]) == 2
    assert "at least 16 characters" in capsys.readouterr().err


def test_every_path_is_relative_to_the_file_uarts_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "line"
    folder.mkdir()
    path = write(folder, GOOD.replace("uart: /dev/ttyACM0", "uart: uart/station-01"))
    monkeypatch.chdir(tmp_path)  # not the file's folder
    config = load(Path("line") / "stations.yaml")
    assert config.stations[0].uart == str(Path("line") / "uart" / "station-01")
    assert config.stations[1].uart == "/dev/ttyACM1"
    assert config.secureisp.station_key == Path("line") / "station.pem"
    assert path.exists()
