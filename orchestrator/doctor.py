"""``orchestrator doctor --config F``: the line's preflight, one row per check with what to do.

The checks, in order: the configuration (:func:`orchestrator.config.check`), the station
certificate with its key and CA (:func:`orchestrator.credentials.examine`), the SecureISP station
key, the cloud (mutual TLS handshake, the job open with quota left: the daemon's own
:class:`~orchestrator.preflight.JobCheck`), every enabled station's probe (as pyOCD sees it, once
for all) and UART (opened at its baud, DTR and RTS set low), the dashboard's port, the journal's
folder. On a running line (its daemon answers at ``api.listen``, or for port 0 at the address
in api.json beside the journal) the stations are the daemon's:
their state as it sees them, their devices not touched. Nothing is written to a board, the cloud
or the journal. Exit 0 when every check passes, 1 when one fails,
2 when the configuration cannot be read at all.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import ssl
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio

from nuwire.errors import ProtocolError
from nuwire.pem import load_private_key
from orchestrator.config import ConfigError, LineConfig, check, load, probe_key
from orchestrator.credentials import examine


@dataclass(frozen=True)
class Row:
    check: str
    subject: str
    ok: bool
    detail: str
    fix: str = ""


def _config_rows(path: Path) -> tuple[LineConfig | None, list[Row]]:
    problems = check(path)
    rows = [Row("config", str(path), False, problem, f"edit {path} where it says") for problem in problems]
    try:
        config = load(path)
    except ConfigError:
        return None, rows
    if not rows:
        rows.append(Row("config", str(path), True, f"line {config.line}, {len(config.stations)} stations"))
    return config, rows


def _certificate_row(config: LineConfig) -> Row:
    cloud = config.cloud
    who, problems = examine(cloud.client_certificate, cloud.client_key, cloud.ca)
    if problems or who is None:
        fix = (
            "ask the cloud's administrator for a station certificate: cloudserver cert issue --line LINE NAME"
        )
        return Row("certificate", str(cloud.client_certificate), False, "; ".join(problems), fix)
    return Row("certificate", str(cloud.client_certificate), True, f"{who.subject}, serial {who.serial}")


def _station_key_row(config: LineConfig) -> Row:
    path = config.secureisp.station_key
    try:
        load_private_key(path)
    except (OSError, ProtocolError) as error:
        fix = "orchestrator init makes one; or restore this line's key from its backup"
        return Row("station key", str(path), False, getattr(error, "strerror", None) or str(error), fix)
    return Row("station key", str(path), True, "a P-256 private key")


async def _cloud_row(config: LineConfig) -> Row:
    from orchestrator.cloud import LineCloud  # noqa: PLC0415
    from orchestrator.preflight import JobCheck  # noqa: PLC0415

    try:
        cloud = LineCloud.for_line(config, lambda *_: None)
    except (ssl.SSLError, OSError) as error:
        fix = "mend the certificate row first"
        return Row(
            "cloud", config.cloud.url, False, f"no TLS context from the certificate, key and CA: {error}", fix
        )
    try:
        job_check = JobCheck(cloud, config.job_id)
        problem = await job_check.problem(new_board=True)
    finally:
        await cloud.aclose()
    if problem is not None:
        fix = (
            "the production manager creates or reopens the job (cloudserver job create)"
            if "job" in problem.split(":")[0]
            else f"check {config.cloud.url}, the network, the CA and the certificate"
        )
        return Row("cloud", config.cloud.url, False, problem, fix)
    job = job_check.job or {}
    return Row(
        "cloud",
        config.cloud.url,
        True,
        f"job {config.job_id} open: {job.get('used')} of {job.get('quantity')} used",
    )


def _probes() -> dict[str, str] | str:
    """:func:`probe_key` of every probe pyOCD sees -> its description, or why it could not look."""
    try:
        from pyocd.core.helpers import ConnectHelper  # noqa: PLC0415

        found = ConnectHelper.get_all_connected_probes(blocking=False, print_wait_message=False)
    except Exception as error:  # any pyOCD or USB failure is this check's answer
        return f"pyOCD could not list probes: {error}"
    return {probe_key(str(p.unique_id)): str(p.description) for p in found}


def _open_uart(path: str, baud: int) -> None:
    """Open and close a UART without raising DTR or RTS (on many fixtures they reset the board)."""
    import serial  # noqa: PLC0415

    port = serial.Serial(timeout=0)
    port.port, port.baudrate, port.dtr, port.rts = path, baud, False, False
    port.open()
    port.close()


def _station_rows(config: LineConfig) -> list[Row]:
    import serial  # noqa: PLC0415

    stations = [station for station in config.stations if station.enabled]
    probes = _probes() if stations else {}
    rows = []
    for station in stations:
        subject = f"{station.name} {station.probe}"
        if isinstance(probes, str):
            rows.append(Row("probe", subject, False, probes, "check libusb and the udev rules (pyocd list)"))
        elif (description := probes.get(probe_key(station.probe))) is None:
            fix = "check the probe's USB cable; pyocd list shows the probes this PC sees"
            rows.append(Row("probe", subject, False, "not connected", fix))
        else:
            rows.append(Row("probe", subject, True, description))
        subject = f"{station.name} {station.uart}"
        try:
            _open_uart(station.uart, station.baud)
        except (serial.SerialException, OSError, ValueError) as error:
            fix = (
                "check the UART adapter (ls -l /dev/serial/by-id/); the daemon's user needs the dialout group"
            )
            rows.append(Row("uart", subject, False, str(error), fix))
        else:
            rows.append(Row("uart", subject, True, f"opens at {station.baud} baud"))
    if not stations:
        rows.append(
            Row("stations", "", False, "no station is enabled", "add one under stations: (enabled: true)")
        )
    return rows


def _running_rows(snapshot: dict[str, Any]) -> list[Row]:
    """A running line's stations as its daemon sees them (their devices are not touched)."""
    rows = []
    for station in snapshot.get("stations", []):
        state, error = str(station.get("state")), str(station.get("last_error") or "")
        ok = state not in ("blocked", "crashed")
        detail = f"the daemon has it: {state}" + (f" ({error})" if error and not ok else "")
        fix = "" if ok else "mend what it names; the station tries again by itself"
        rows.append(Row("station", f"{station.get('name')} {station.get('probe')}", ok, detail, fix))
    return rows


def _daemon(config: LineConfig, beside: list[Path]) -> dict[str, Any] | None:
    """The status of this line's daemon when one answers at api.listen (for port 0: at the
    address in an api.json ``beside`` the journal or the configuration), else None."""
    import httpx  # noqa: PLC0415

    from orchestrator.api import daemon_url  # noqa: PLC0415

    url = daemon_url(config.api.listen, beside)
    try:
        answer = httpx.get(f"{url}/api/v1/status", timeout=5).json() if url else None
    except (httpx.HTTPError, ValueError):
        return None
    return answer if isinstance(answer, dict) and answer.get("line") == config.line else None


def _api_row(config: LineConfig, running: bool) -> Row:
    host, port = config.api.listen.rsplit(":", 1)
    if running:
        return Row("api", config.api.listen, True, "this line's daemon is running here")
    if port == "0":
        return Row("api", config.api.listen, True, "any free port (written to api.json beside the journal)")
    try:
        with socket.create_server((host.strip("[]"), int(port))):
            pass
    except OSError as error:
        why = "in use by something else" if error.errno == errno.EADDRINUSE else error.strerror
        return Row(
            "api", config.api.listen, False, str(why), "stop what holds it, or choose another api.listen"
        )
    return Row("api", config.api.listen, True, "free")


def _journal_row(journal: Path) -> Row:
    folder = journal.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the daemon makes the missing folders
    if not os.access(folder, os.W_OK | os.X_OK):
        return Row(
            "journal", str(journal), False, f"{folder} is not writable", f"give the daemon's user {folder}"
        )
    return Row("journal", str(journal), True, "exists" if journal.exists() else "will be made")


def doctor(config_path: Path, journal: Path) -> tuple[list[Row], bool]:
    """(every row, whether the configuration could be read)."""
    config, rows = _config_rows(config_path)
    if config is None:
        return rows, False
    rows += [_certificate_row(config), _station_key_row(config), anyio.run(_cloud_row, config)]
    running = _daemon(config, [journal.parent, config_path.parent])
    rows += _running_rows(running) if running is not None else _station_rows(config)
    rows += [_api_row(config, running is not None), _journal_row(journal)]
    return rows, True


def doctor_command(args: argparse.Namespace) -> int:
    rows, readable = doctor(args.config, args.journal)
    if args.json:
        print(json.dumps([asdict(row) for row in rows], indent=1))
    else:
        from rich.console import Console  # noqa: PLC0415
        from rich.table import Table  # noqa: PLC0415

        failed = sum(not row.ok for row in rows)
        title = (
            f"{args.config}: {'all ' + str(len(rows)) + ' checks pass' if not failed else f'{failed} failed'}"
        )
        table = Table(title=title)
        for column in ("check", "what", "", "detail", "fix"):
            table.add_column(column, overflow="fold")
        for row in rows:
            mark = "[green]ok[/]" if row.ok else "[red]FAIL[/]"
            table.add_row(row.check, row.subject, mark, row.detail, row.fix)
        Console(width=None if sys.stdout.isatty() else 200).print(table)
    if not readable:
        return 2
    return 0 if all(row.ok for row in rows) else 1


def add_parser(commands: Any) -> None:
    cmd = commands.add_parser(
        "doctor", help="the line's preflight: config, certificate, cloud, probes, UARTs"
    )
    cmd.add_argument("--config", type=Path, default=Path("stations.yaml"))
    cmd.add_argument("--journal", type=Path, default=Path("journal.db"), help="where the daemon will keep it")
    cmd.add_argument("--json", action="store_true", help="the rows as JSON")
    cmd.set_defaults(handler=doctor_command)
