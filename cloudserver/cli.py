"""``cloudserver``: the provisioning cloud's command line."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from cryptography.hazmat.primitives.asymmetric import ec

from nuwire import mcuboot
from nuwire.cli import parser, run
from nuwire.pem import load_private_key, private_pem
from nuwire.profiles import PROFILES, profile


def keygen(args: argparse.Namespace) -> int:
    out: Path = args.out
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem(ec.generate_private_key(ec.SECP256R1())))
    print(f"wrote a new P-256 development key to {out}")
    return 0


def sign(args: argparse.Namespace) -> int:
    key = load_private_key(args.key)
    slot = getattr(profile(args.profile), f"{args.slot}_slot")
    key_format = mcuboot.KeyFormat(args.key_format or ("full" if args.slot == "application" else "hash"))
    image = mcuboot.build(
        args.body.read_bytes(),
        signer=mcuboot.private_key_signer(key),
        public_key=key.public_key(),
        version=mcuboot.Version.parse(args.version),
        key_format=key_format,
        header_size=slot.header_size,
        load_addr=slot.base,
    )
    if len(image) > slot.size:
        print(
            f"cloudserver: error: signed image is {len(image)} bytes, slot {slot.name} holds {slot.size}",
            file=sys.stderr,
        )
        return 2
    args.out.write_bytes(image)
    print(f"wrote {args.out}: {len(image)} bytes, version {args.version}, key {key_format.value}")
    return 0


def init(args: argparse.Namespace) -> int:
    from cloudserver.pki import init_pki  # noqa: PLC0415  # keeps --help fast
    from cloudserver.settings import write_default  # noqa: PLC0415

    data: Path = args.data
    if (data / "settings.json").exists():
        print(f"cloudserver: error: {data / 'settings.json'} exists; init never overwrites", file=sys.stderr)
        return 2
    ca_keys: Path = args.ca or data.parent / f"{data.name}-ca"
    if ca_keys.resolve().is_relative_to(data.resolve()):
        print(f"cloudserver: error: --ca {ca_keys} is inside {data}; keep the CA key apart", file=sys.stderr)
        return 2
    data.mkdir(parents=True, exist_ok=True)
    written = init_pki(data / "pki", args.stations, ca_key_folder=ca_keys, line=args.line)
    write_default(data, args.port)
    print(
        f"initialised {data}: settings.json, master.key, {len(written)} certificates in {data / 'pki'} "
        f"(stations of line {args.line}); the CA key is {ca_keys / 'ca.key'}: keep it offline"
    )
    return 0


def _logging() -> None:
    import logging  # noqa: PLC0415

    import structlog  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a migration at start says what it did once
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ],
    )


def serve_command(args: argparse.Namespace) -> int:
    from cloudserver.server import serve_until_signal  # noqa: PLC0415
    from cloudserver.settings import load  # noqa: PLC0415

    def serve() -> None:
        settings = load(args.data)
        if args.port is not None:
            settings.listen.port = args.port
        _logging()
        # uvloop: its TLS and sockets in C cost the server 10-15% less CPU per call (bench/cloud_load.py)
        anyio.run(serve_until_signal, settings, args.data, backend_options={"use_uvloop": True})

    return _unless_unusable(serve)


def _unless_unusable(run: Callable[[], object]) -> int:
    """``run()``; a setting that cannot be used (a file, the database, the port) is one line
    naming it and exit 2, not a traceback."""
    from cloudserver.settings import SettingsError  # noqa: PLC0415

    try:
        run()
    except Exception as error:  # anyio wraps what a task raised in exception groups
        cause: BaseException = error
        while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
            cause = cause.exceptions[0]
        if not isinstance(cause, SettingsError):
            raise
        print(f"cloudserver: error: {cause}", file=sys.stderr)
        return 2
    return 0


def _admin(args: argparse.Namespace) -> Any:
    from cloudserver.client import CloudClient, client_context  # noqa: PLC0415

    pki = args.data / "pki"
    url = args.url or json.loads((args.data / "serve.json").read_text())["url"]
    return CloudClient(url, client_context(pki / "admin.crt", pki / "admin.key", pki / "ca.crt"))


def _print(value: object) -> None:
    print(json.dumps(value, indent=2))


def _admin_call(
    args: argparse.Namespace, action: Callable[[Any], Awaitable[Any]], show: Callable[[Any], None] = _print
) -> int:
    """Run one admin call against the server and show its answer (JSON); cloud errors are one line, exit 1."""
    from cloudserver.client import CloudError  # noqa: PLC0415

    async def act() -> object:
        async with _admin(args) as cloud:
            return await action(cloud)

    try:
        show(anyio.run(act))
    except CloudError as error:
        print(f"cloudserver: error: {error}", file=sys.stderr)
        return 1
    return 0


def job_command(args: argparse.Namespace) -> int:
    async def action(cloud: Any) -> object:
        if args.action == "create":
            return await cloud.create_job(
                pdid=int(args.pdid, 0),
                bootloader=args.bootloader.read_bytes(),
                bootloader_version=args.bootloader_version,
                application=args.application.read_bytes(),
                application_version=args.application_version,
                quantity=args.quantity,
                lines=[line for line in args.lines.split(",") if line],
            )
        if args.action == "list":
            return await cloud.jobs()
        if args.action == "show":
            return await cloud.job(args.job_id)
        return await cloud.close_job(args.job_id)

    if getattr(args, "id_only", False):
        return _admin_call(args, action, lambda job: print(job["id"]))
    return _admin_call(args, action)


def device_command(args: argparse.Namespace) -> int:
    async def action(cloud: Any) -> object:
        return await cloud.device(args.uid)

    return _admin_call(args, action)


def audit_command(args: argparse.Namespace) -> int:
    from cloudserver.server import open_service  # noqa: PLC0415
    from cloudserver.settings import load  # noqa: PLC0415

    async def read() -> Any:
        service = await open_service(load(args.data), args.data)
        try:
            return await (service.verify_audit() if args.action == "verify" else service.audit_rows())
        finally:
            await service.close()

    if args.action == "verify":
        count, head, broken = anyio.run(read)
        if broken is not None:
            print(f"cloudserver: audit log {args.data}: {broken} (the {count} rows before it hold)")
            return 1
        print(f"ok: {count} rows chained; the last row's hash is {head}")
        return 0
    for row in anyio.run(read):
        print(
            json.dumps(row)
            if args.json
            else f"{row['id']:>6} {row['time']} {row['action']:<12} {row['outcome']:<8} "
            f"{row['uid'] or '-':<24} {row['job_id'] or '-':<16} {row['subject']}  {row['detail']}"
        )
    return 0


def cert_command(args: argparse.Namespace) -> int:
    """``cert revoke``: by serial, or by a certificate file (its serial and subject)."""
    from cryptography import x509  # noqa: PLC0415

    from cloudserver.pki import serial_text  # noqa: PLC0415
    from cloudserver.server import open_service  # noqa: PLC0415
    from cloudserver.settings import load  # noqa: PLC0415

    target, subject = args.serial, ""
    if Path(target).is_file():
        certificate = x509.load_pem_x509_certificate(Path(target).read_bytes())
        target, subject = certificate.serial_number, certificate.subject.rfc4514_string()
    try:
        serial = serial_text(target)
    except ValueError:
        print(
            f"cloudserver: error: {args.serial!r} is neither a hex serial nor a certificate file",
            file=sys.stderr,
        )
        return 2

    async def revoke() -> bool:
        service = await open_service(load(args.data), args.data)
        try:
            return await service.revoke(f"cli:{getpass.getuser()}", serial, subject, args.reason)
        finally:
            await service.close()

    fresh = anyio.run(revoke)
    print(f"{'revoked' if fresh else 'already revoked'}: serial {serial} {subject}".rstrip())
    return 0


def issue_command(args: argparse.Namespace) -> int:
    from cloudserver.pki import issue_client  # noqa: PLC0415

    pki = args.data / "pki"
    if args.role == "station" and not args.line:
        print("cloudserver: error: --line: a station certificate names its line", file=sys.stderr)
        return 2
    try:
        written = issue_client(pki, args.ca_key, args.name, role=args.role, line=args.line)
    except (OSError, ValueError) as error:
        print(f"cloudserver: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {written} and its key ({args.role}{' of line ' + args.line if args.line else ''})")
    return 0


def db_command(args: argparse.Namespace) -> int:
    from cloudserver.db import engine_for, migrate  # noqa: PLC0415
    from cloudserver.settings import load  # noqa: PLC0415

    async def upgrade() -> str:
        engine = engine_for(load(args.data).database_url(args.data))
        try:
            return await migrate(engine, args.revision)
        finally:
            await engine.dispose()

    return _unless_unusable(lambda: print(f"database at revision {anyio.run(upgrade)}"))


def _cert_commands(commands: Any) -> None:
    cmd = commands.add_parser("db", help="bring the database to the newest schema (serve does it too)")
    dbs = cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub = dbs.add_parser("upgrade")
    sub.add_argument("--data", type=Path, required=True)
    sub.add_argument("revision", nargs="?", default="head")
    sub.set_defaults(handler=db_command)
    cmd = commands.add_parser("cert", help="issue a client certificate, or revoke one")
    certs = cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub = certs.add_parser("issue", help="a new admin or station certificate in DATA/pki")
    sub.add_argument("--data", type=Path, required=True)
    sub.add_argument("--ca-key", type=Path, required=True, help="the CA's private key (kept apart from DATA)")
    sub.add_argument("--role", choices=("station", "admin", "monitor"), default="station")
    sub.add_argument("--line", default="", help="the station's line")
    sub.add_argument("name", help="the certificate's CN and file name, e.g. station-05")
    sub.set_defaults(handler=issue_command)
    sub = certs.add_parser("revoke")
    sub.add_argument("--data", type=Path, required=True)
    sub.add_argument("--reason", default="")
    sub.add_argument("serial", help="hex serial (openssl x509 -serial), or the certificate's PEM file")
    sub.set_defaults(handler=cert_command)


def _job_commands(commands: Any) -> None:
    cmd = commands.add_parser("job", help="create, list, show or close jobs (admin certificate)")
    jobs = cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action in ("create", "list", "show", "close"):
        sub = jobs.add_parser(action)
        sub.add_argument("--data", type=Path, required=True)
        sub.add_argument("--url", help="default: the URL in DATA/serve.json")
        if action in ("show", "close"):
            sub.add_argument("job_id")
        if action == "create":
            sub.add_argument("--pdid", required=True, help="product id, e.g. 0xA1735440")
            sub.add_argument("--bootloader", type=Path, required=True, help="unsigned bootloader body")
            sub.add_argument("--bootloader-version", required=True)
            sub.add_argument("--application", type=Path, required=True, help="unsigned application body")
            sub.add_argument("--application-version", required=True)
            sub.add_argument("--quantity", type=int, required=True)
            sub.add_argument(
                "--lines", default="", help="comma-separated lines that may draw on it (default: every line)"
            )
            sub.add_argument("--id-only", action="store_true", help="print only the new job's id")
        sub.set_defaults(handler=job_command)


def main(argv: Sequence[str] | None = None) -> int:
    top, commands = parser("cloudserver", "The provisioning cloud server.")
    cmd = commands.add_parser("init", help="create DATA: development PKI, settings.json, master key")
    cmd.add_argument("--data", type=Path, required=True)
    cmd.add_argument("--stations", type=int, default=4, help="station certificates to issue")
    cmd.add_argument("--port", type=int, default=8443)
    cmd.add_argument("--line", default="line-1", help="the line the station certificates belong to")
    cmd.add_argument("--ca", type=Path, help="where the CA key goes (default: DATA-ca beside DATA)")
    cmd.set_defaults(handler=init)
    cmd = commands.add_parser("serve", help="serve the HTTPS API (mutual TLS) until SIGTERM")
    cmd.add_argument("--data", type=Path, required=True)
    cmd.add_argument("--port", type=int, help="override settings.json (0: any free port)")
    cmd.set_defaults(handler=serve_command)
    _job_commands(commands)
    cmd = commands.add_parser("device", help="show a device with its keys, results and history")
    devices = cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub = devices.add_parser("show")
    sub.add_argument("--data", type=Path, required=True)
    sub.add_argument("--url")
    sub.add_argument("uid")
    sub.set_defaults(handler=device_command)
    cmd = commands.add_parser("audit", help="print the audit log, or verify its hash chain")
    cmd.add_argument("action", nargs="?", choices=("show", "verify"), default="show")
    cmd.add_argument("--data", type=Path, required=True)
    cmd.add_argument("--json", action="store_true", help="one JSON object per line")
    cmd.set_defaults(handler=audit_command)
    _cert_commands(commands)
    cmd = commands.add_parser("keygen", help="write a new P-256 development signing key (PEM)")
    cmd.add_argument("out", type=Path)
    cmd.set_defaults(handler=keygen)
    cmd = commands.add_parser("sign", help="sign a firmware body as an MCUboot image with a key file")
    cmd.add_argument("--key", type=Path, required=True, help="PEM private key")
    cmd.add_argument("--version", required=True, help="major.minor.revision[+build]")
    cmd.add_argument("--slot", choices=("bootloader", "application"), required=True)
    cmd.add_argument("--profile", default="M2354", choices=sorted(PROFILES))
    cmd.add_argument("--key-format", choices=("hash", "full"), help="default: full for application")
    cmd.add_argument("body", type=Path)
    cmd.add_argument("out", type=Path)
    cmd.set_defaults(handler=sign)
    return run(top, argv)
