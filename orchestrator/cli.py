"""``orchestrator``: the line daemon's command line."""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nuwire import mcuboot
from nuwire.cli import parser, run
from nuwire.keys import raw_public_key
from nuwire.pem import load_public_key
from nuwire.profiles import PROFILES, profile
from orchestrator import doctor, init
from orchestrator.isp_info import isp_info_command


def image_info(args: argparse.Namespace) -> int:
    image = mcuboot.parse(args.image.read_bytes())
    info: dict[str, object] = {
        "version": str(image.version),
        "load_addr": f"0x{image.load_addr:08X}",
        "header_size": image.header_size,
        "body_size": len(image.body),
        "sha256": image.digest.hex(),
        "tlvs": [{"type": f"0x{kind:02X}", "length": len(value)} for kind, value in image.tlvs],
    }
    verdict = mcuboot.verify(image, load_public_key(args.key)) if args.key else None
    if verdict is not None:
        info["verify"] = verdict.value
    print(json.dumps(info, indent=2))
    return 0 if verdict in (None, mcuboot.Verdict.OK) else 1


def otp_words(args: argparse.Namespace) -> int:
    target = profile(args.profile)
    raw = raw_public_key(load_public_key(args.key))
    entries = (
        target.bootloader_key_entries(raw)
        if args.purpose == "bootloader"
        else target.app_key_hash_entries(raw)
    )
    for entry, (low, high) in entries.items():
        print(f"OTP{entry:<3} @0x{target.otp.entry_address(entry):08X}  low=0x{low:08X} high=0x{high:08X}")
    return 0


def _config(path: Path) -> Any:
    """The validated stations.yaml, or None after printing the error (file, line, field)."""
    from orchestrator.config import ConfigError, load  # noqa: PLC0415

    try:
        return load(path)
    except ConfigError as error:
        for problem in error.problems:
            print(f"orchestrator: error: {problem}", file=sys.stderr)
        return None


def check_config(args: argparse.Namespace) -> int:
    """Every problem at once (validation, files, modes, devices), one line each; exit 2 if any."""
    from orchestrator.config import check  # noqa: PLC0415

    problems = check(args.file)
    for problem in problems:
        print(f"orchestrator: error: {problem}", file=sys.stderr)
    if problems:
        print(f"{args.file}: {len(problems)} problem{'s' if len(problems) > 1 else ''}", file=sys.stderr)
        return 2
    config = _config(args.file)
    if config is None:
        return 2
    print(f"{args.file}: line {config.line}, {len(config.stations)} stations, job {config.job_id}: ok")
    return 0


def run_command(args: argparse.Namespace) -> int:
    import anyio  # noqa: PLC0415

    from orchestrator import logs  # noqa: PLC0415
    from orchestrator.daemon import run  # noqa: PLC0415

    config = _config(args.config)
    if config is None:
        return 2
    from orchestrator.api import ApiError  # noqa: PLC0415
    from orchestrator.journal import JournalBusy  # noqa: PLC0415

    logs.configure(args.log_file)
    gc.freeze()  # the imports live as long as the daemon: no collection walks them (15% of its CPU)
    try:
        anyio.run(functools.partial(run, config, args.journal, config_path=args.config))
    except Exception as error:
        failure = _first(error, ApiError) or _first(error, JournalBusy)
        if failure is None:
            raise
        print(f"orchestrator: error: {args.config}: {failure}", file=sys.stderr)
        return 2
    return 0


def _api_url(args: argparse.Namespace) -> str | None:
    """The daemon's API: --url, else api.listen from --config (for port 0: the api.json the daemon
    wrote beside its journal, looked for beside --journal, then beside the configuration)."""
    if args.url:
        return str(args.url).rstrip("/")
    config = _config(args.config)
    if config is None:
        return None
    from orchestrator.api import daemon_url  # noqa: PLC0415

    url = daemon_url(config.api.listen, [args.journal.parent, args.config.parent])
    if url is None:
        where = args.config.parent / "api.json"
        print(f"orchestrator: error: {where}: no running daemon recorded its address", file=sys.stderr)
    return url


def _request(method: str, url: str, path: str, **options: Any) -> Any:
    """An httpx response from the daemon's API, or None after printing why there is none."""
    import httpx  # noqa: PLC0415

    try:
        return httpx.request(method, url + path, timeout=10, **options)
    except httpx.HTTPError as error:
        print(f"orchestrator: error: {url}: {error}", file=sys.stderr)
        return None


def status_command(args: argparse.Namespace) -> int:
    url = _api_url(args)
    response = _request("GET", url, "/api/v1/status") if url else None
    if response is None:
        return 2
    snapshot = response.json()
    if args.json:
        print(json.dumps(snapshot, indent=1))
        return 0
    from rich.console import Console  # noqa: PLC0415

    from orchestrator.report import station_table  # noqa: PLC0415

    t = snapshot["totals"]
    shown = f"{100 * t['yield']:.1f}%" if t["yield"] is not None else "-"
    title = (
        f"{snapshot['line']} job {snapshot['job_id']}: PASS {t['pass']}  FAIL {t['fail']}  "
        f"QUARANTINE {t['quarantine']}  yield {shown}  {t['boards_per_hour']} boards/h"
    )
    table = station_table(title, snapshot["stations"])
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 0


def station_command(args: argparse.Namespace) -> int:
    from orchestrator.api import ApiError, read_token  # noqa: PLC0415

    config = _config(args.config)
    url = _api_url(args)
    if config is None or url is None:
        return 2
    try:
        token = read_token(config.api.token_file)
    except ApiError as error:
        print(f"orchestrator: error: {error}", file=sys.stderr)
        return 2
    if token is None:
        print(f"orchestrator: error: {args.config}: api.token_file is not set", file=sys.stderr)
        return 2
    body = {"uid": args.uid, "reason": args.reason}
    response = _request(
        "POST",
        url,
        f"/api/v1/stations/{args.station}/{args.action}",
        json={key: value for key, value in body.items() if value},
        headers={"Authorization": f"Bearer {token}"},
    )
    if response is None:
        return 2
    answer = response.json()
    if response.is_error:
        print(f"orchestrator: {args.action} {args.station}: {answer.get('detail')}", file=sys.stderr)
        return 1
    print(f"{args.station}: {answer['state']}{' (paused)' if answer['paused'] else ''}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from orchestrator.journal import Journal  # noqa: PLC0415
    from orchestrator.report import report, to_csv  # noqa: PLC0415

    if not args.journal.exists():
        print(f"orchestrator: error: {args.journal}: no such journal", file=sys.stderr)
        return 2
    since = None
    if args.since:
        try:
            moment = datetime.datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        except ValueError:
            print(
                f"orchestrator: error: --since {args.since!r}: not an ISO 8601 date or time", file=sys.stderr
            )
            return 2
        since = (moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)).timestamp()
    journal = Journal(args.journal)
    try:
        result = report(journal, args.job, since=since)
    finally:
        journal.close()
    text = to_csv(result) if args.format == "csv" else json.dumps(result, indent=1) + "\n"
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from orchestrator.api import ApiError  # noqa: PLC0415
    from orchestrator.demo import demo  # noqa: PLC0415
    from orchestrator.journal import JournalBusy  # noqa: PLC0415

    try:
        return demo(
            stations=args.stations,
            boards=args.boards,
            workdir=args.workdir,
            baud=args.baud,
            app_size=args.app_size,
            faults=args.faults,
            quantity=args.quantity,
            api_port=args.api_port,
            hold=args.hold,
        )
    except Exception as error:
        failure = _first(error, ApiError) or _first(error, JournalBusy)  # raised inside the task group
        if failure is None:
            raise
        hint = " (choose another with --api-port)" if isinstance(failure, ApiError) else ""
        print(f"orchestrator demo: error: {failure}{hint}", file=sys.stderr)
        return 2


def _first(error: BaseException, kind: type[Exception]) -> BaseException | None:
    """``error`` itself or the first of its kind inside an exception group."""
    if isinstance(error, kind):
        return error
    if isinstance(error, BaseExceptionGroup):
        return next((found for inner in error.exceptions if (found := _first(inner, kind))), None)
    return None


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0915  # one parser per command
    top, commands = parser("orchestrator", "The factory-line provisioning daemon.")
    init.add_parser(commands)
    doctor.add_parser(commands)
    cmd = commands.add_parser("run", help="run the line daemon until SIGTERM")
    cmd.add_argument("--config", type=Path, required=True, help="stations.yaml")
    cmd.add_argument("--journal", type=Path, default=Path("journal.db"))
    cmd.add_argument("--log-file", type=Path, default=Path("logs/orchestrator.jsonl"))
    cmd.set_defaults(handler=run_command)
    cmd = commands.add_parser(
        "check-config", help="validate a stations.yaml; errors name file, line and field"
    )
    cmd.add_argument("file", type=Path)
    cmd.set_defaults(handler=check_config)
    cmd = commands.add_parser(
        "demo", help="a whole simulated line on 127.0.0.1, with a live view and report.json"
    )
    cmd.add_argument("--stations", type=int, default=4)
    cmd.add_argument("--boards", type=int, default=2, help="boards per station")
    cmd.add_argument("--workdir", type=Path, default=Path("demo-run"))
    cmd.add_argument("--baud", type=int, default=921_600)
    cmd.add_argument("--app-size", type=int, default=16 * 1024)
    cmd.add_argument("--faults", type=Path, help="boardsim faults file (YAML): station name -> faults")
    cmd.add_argument(
        "--quantity",
        type=int,
        help="the job's quota (default: stations x boards); the demo ends once it is used",
    )
    cmd.add_argument(
        "--api-port", type=int, default=8470, help="dashboard and API port on 127.0.0.1 (0: any)"
    )
    cmd.add_argument("--hold", action="store_true", help="keep the dashboard up after the run until Ctrl-C")
    cmd.set_defaults(handler=demo_command)
    for name, text in (
        ("status", "the running line's stations and totals"),
        ("station", "pause, resume, retry or release on a station (needs api.token_file)"),
    ):
        cmd = commands.add_parser(name, help=text)
        if name == "station":
            cmd.add_argument("action", choices=("pause", "resume", "retry", "release"))
            cmd.add_argument("station", help="the station's name")
            cmd.add_argument("--uid", help="the board (default: the station's current board)")
            cmd.add_argument("--reason", help="why (required for release; goes to the journal and the log)")
        else:
            cmd.add_argument("--json", action="store_true", help="the API's JSON, as it is")
        cmd.add_argument("--config", type=Path, default=Path("stations.yaml"))
        cmd.add_argument("--journal", type=Path, default=Path("journal.db"), help="for a daemon on port 0")
        cmd.add_argument("--url", help="the daemon's API, e.g. http://127.0.0.1:8470 (instead of --config)")
        cmd.set_defaults(handler=status_command if name == "status" else station_command)
    cmd = commands.add_parser("report", help="per-board report of a job from the journal (CSV or JSON)")
    cmd.add_argument("--job", help="the job id (default: every job in the journal)")
    cmd.add_argument("--journal", type=Path, default=Path("journal.db"))
    cmd.add_argument("--format", choices=("csv", "json"), default="csv")
    cmd.add_argument(
        "--since", help="only boards finished then or later: ISO 8601, e.g. 2026-12-03T06:00Z (UTC)"
    )
    cmd.add_argument("--output", type=Path, help="a file (default: standard output)")
    cmd.set_defaults(handler=report_command)
    cmd = commands.add_parser("image-info", help="parse an MCUboot image, and verify it with --key")
    cmd.add_argument("image", type=Path)
    cmd.add_argument("--key", type=Path, help="PEM public or private key to verify with")
    cmd.set_defaults(handler=image_info)
    cmd = commands.add_parser("isp-info", help="who answers on a UART over SecureISP (writes nothing)")
    cmd.add_argument("--uart", required=True, help="the serial device")
    cmd.add_argument("--baud", type=int, default=115200)
    cmd.add_argument("--profile", default="M2354", choices=sorted(PROFILES))
    cmd.add_argument("--station-key", type=Path, required=True, help="PEM: the line's static ECDH key")
    cmd.add_argument("--target-key", help="the target's static public key X||Y hex (default: the firmware's)")
    cmd.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each answer")
    cmd.set_defaults(handler=isp_info_command)
    cmd = commands.add_parser("otp-words", help="the OTP entries a key becomes on the target")
    cmd.add_argument("--key", type=Path, required=True, help="PEM public or private key")
    cmd.add_argument("--purpose", choices=("bootloader", "application"), required=True)
    cmd.add_argument("--profile", default="M2354", choices=sorted(PROFILES))
    cmd.set_defaults(handler=otp_words)
    return run(top, argv)
