"""``orchestrator init DIR``: a new line's folder, complete and checked, from what the cloud's
administrator hands over (URL, job, CA, a station certificate and its key).

DIR gets stations.yaml (every path in it relative to DIR), pki/ (the CA, the certificate, the key
at mode 0600), station-isp-key.pem (the line's SecureISP static key, new, 0600) and api-token (the
dashboard's control token, new, 0600). The stations come from a file (``boardsim serve
--write-stations``, or any YAML with a ``stations:`` list) or from the probes pyOCD sees, each
paired with the UART of the same USB serial number. Nothing is ever overwritten.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from nuwire.keys import public_key_from_raw
from nuwire.pem import private_pem
from orchestrator.config import ConfigError, load, probe_key
from orchestrator.credentials import examine

BY_ID = Path("/dev/serial/by-id")
"""udev's stable names for serial ports: a station's UART should not move when another is plugged."""


class InitError(Exception):
    """What stops ``init``, naming the option or file."""


def _stable(device: str, by_id: Path = BY_ID) -> str:
    """/dev/serial/by-id/... for a device when udev made one, else the device itself."""
    if by_id.is_dir():
        for link in sorted(by_id.iterdir()):
            if os.path.realpath(link) == os.path.realpath(device):
                return str(link)
    return device


def pair(
    probes: list[tuple[str, str]], ports: list[Any], baud: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """Stations from (unique id, description) of each probe and pyserial's ports: a probe's UART is
    the port with its USB serial number (a Nu-Link's virtual COM port). (stations, why each probe
    left out was left out)."""
    by_serial = {probe_key(str(port.serial_number)): port for port in ports if port.serial_number}
    stations: list[dict[str, Any]] = []
    left: list[str] = []
    for unique_id, description in probes:
        port = by_serial.get(probe_key(unique_id))
        if port is None:
            left.append(
                f"probe {unique_id} ({description}): no UART with its serial number; add its uart by hand"
            )
            continue
        name = f"station-{len(stations) + 1:02d}"
        stations.append({"name": name, "probe": unique_id, "uart": _stable(port.device), "baud": baud})
    return stations, left


def discover(baud: int) -> tuple[list[dict[str, Any]], list[str]]:  # pragma: no cover - needs USB
    """:func:`pair` over what pyOCD and pyserial see on this machine (``pyocd list``)."""
    from pyocd.core.helpers import ConnectHelper  # noqa: PLC0415
    from serial.tools import list_ports  # noqa: PLC0415

    probes = ConnectHelper.get_all_connected_probes(blocking=False, print_wait_message=False)
    return pair([(p.unique_id, p.description) for p in probes], list(list_ports.comports()), baud)


def _from_file(path: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(stations, SecureISP public keys if it has them) from a stations file."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise InitError(f"--stations {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise InitError(f"--stations {path}: not valid YAML: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("stations"), list) or not data["stations"]:
        raise InitError(f"--stations {path}: no 'stations:' list")
    keys: dict[str, Any] = data["secureisp"] if isinstance(data.get("secureisp"), dict) else {}
    stations = []
    for station in data["stations"]:
        entry = dict(station)
        uart = Path(str(entry.get("uart", "")))
        if str(uart) and not uart.is_absolute():  # relative to the file it came from
            entry["uart"] = str((path.parent / uart).absolute())
        stations.append(entry)
    wanted = ("rom_public_key", "bootloader_public_key")
    return stations, {name: str(keys[name]) for name in wanted if name in keys}


def _secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _public_keys(args: argparse.Namespace, found: dict[str, str]) -> dict[str, str]:
    keys = dict(found)
    for name in ("rom_public_key", "bootloader_public_key"):
        given = getattr(args, name)
        if given:
            keys[name] = given
        if name not in keys:
            option = "--" + name.replace("_", "-")
            raise InitError(
                f"{option}: needed (raw X||Y hex from the firmware), or a --stations file that has it"
            )
        try:
            public_key_from_raw(bytes.fromhex(keys[name]))
        except ValueError as error:
            raise InitError(f"--{name.replace('_', '-')}: not a P-256 public key: {error}") from None
    return keys


def init(args: argparse.Namespace) -> Path:
    """Write the line's folder; the stations.yaml written, checked by loading it."""
    folder: Path = args.dir
    config_file = folder / "stations.yaml"
    if config_file.exists():
        raise InitError(f"{config_file} exists; init never overwrites")
    if not args.cloud.startswith("https://"):
        raise InitError(f"--cloud {args.cloud}: the cloud is reached over https://")
    who, problems = examine(args.certificate, args.key, args.ca)
    if problems:
        raise InitError("; ".join(problems))
    assert who is not None  # noqa: S101  # no problems: the certificate was read
    if args.stations:
        stations, found = _from_file(args.stations)
    else:
        stations, left = discover(args.baud)
        for why in left:
            print(f"orchestrator init: {why}", file=sys.stderr)
        if not stations:
            raise InitError("no probe with a UART found (pyocd list); give --stations FILE")
        found = {}
    keys = _public_keys(args, found)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pki").mkdir(exist_ok=True)
    for source, name in ((args.ca, "ca.crt"), (args.certificate, "station.crt")):
        shutil.copyfile(source, folder / "pki" / name)
    for path, data in (
        (folder / "pki" / "station.key", args.key.read_bytes()),
        (folder / "station-isp-key.pem", private_pem(ec.generate_private_key(ec.SECP256R1()))),
        (folder / "api-token", secrets.token_urlsafe(32).encode() + b"\n"),
    ):
        if not path.exists():  # a second init after a refused one keeps the first secrets
            _secret(path, data)
    config = {
        "line": args.line or who.line,
        "target_profile": args.profile,
        "cloud": {
            "url": args.cloud,
            "client_certificate": "pki/station.crt",
            "client_key": "pki/station.key",
            "ca": "pki/ca.crt",
        },
        "job_id": args.job,
        "secureisp": {**keys, "station_key": "station-isp-key.pem"},
        "api": {"listen": args.api_listen, "token_file": "api-token"},
        "stations": stations,
    }
    header = (
        f"# Written by orchestrator init for line {config['line']} (certificate {who.subject}).\n"
        "# Paths are relative to this file. Check it: orchestrator doctor --config THIS_FILE\n"
    )
    partial = config_file.with_suffix(".yaml.new")
    partial.write_text(header + yaml.safe_dump(config, sort_keys=False))
    try:
        load(partial)
    except ConfigError as error:
        raise InitError(f"the stations would not make a valid stations.yaml: {error}") from None
    partial.rename(config_file)
    return config_file


def init_command(args: argparse.Namespace) -> int:
    try:
        written = init(args)
    except InitError as error:
        print(f"orchestrator init: error: {error}", file=sys.stderr)
        return 2
    config = load(written)
    print(f"wrote {written}: line {config.line}, {len(config.stations)} stations, job {config.job_id}")
    print(f"next: orchestrator doctor --config {written}")
    return 0


def add_parser(commands: Any) -> None:
    cmd = commands.add_parser("init", help="a new line's folder: stations.yaml, keys, token, certificate")
    cmd.add_argument("dir", type=Path, help="the folder to make (stations.yaml and the files it names)")
    cmd.add_argument("--cloud", required=True, help="the cloud's URL, e.g. https://cloud.example:8443")
    cmd.add_argument("--job", required=True, help="the job id (cloudserver job create)")
    cmd.add_argument("--ca", type=Path, required=True, help="the cloud's CA certificate (PEM)")
    cmd.add_argument("--certificate", type=Path, required=True, help="this line's station certificate")
    cmd.add_argument("--key", type=Path, required=True, help="the certificate's private key")
    cmd.add_argument("--stations", type=Path, help="stations from a file (boardsim serve --write-stations)")
    cmd.add_argument("--line", help="the line's name (default: the certificate's L=)")
    cmd.add_argument("--rom-public-key", help="the ROM's SecureISP public key, X||Y hex")
    cmd.add_argument("--bootloader-public-key", help="the bootloader's SecureISP public key, X||Y hex")
    cmd.add_argument("--profile", default="M2354", help="the target profile")
    cmd.add_argument("--baud", type=int, default=115_200, help="UART speed of discovered stations")
    cmd.add_argument("--api-listen", default="127.0.0.1:8470", help="the dashboard's host:port")
    cmd.set_defaults(handler=init_command)
