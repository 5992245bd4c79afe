"""``orchestrator``: the line daemon's command line."""

from __future__ import annotations

import argparse
import functools
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
        print(f"orchestrator: error: {error}", file=sys.stderr)
        return None


def check_config(args: argparse.Namespace) -> int:
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
    logs.configure(args.log_file)
    anyio.run(functools.partial(run, config, args.journal, config_path=args.config))
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from orchestrator.demo import demo  # noqa: PLC0415

    return demo(
        stations=args.stations,
        boards=args.boards,
        workdir=args.workdir,
        baud=args.baud,
        app_size=args.app_size,
        faults=args.faults,
        quantity=args.quantity,
    )


def main(argv: Sequence[str] | None = None) -> int:
    top, commands = parser("orchestrator", "The factory-line provisioning daemon.")
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
    cmd.add_argument("--quantity", type=int, help="the job's quota (default: stations x boards)")
    cmd.set_defaults(handler=demo_command)
    cmd = commands.add_parser("image-info", help="parse an MCUboot image, and verify it with --key")
    cmd.add_argument("image", type=Path)
    cmd.add_argument("--key", type=Path, help="PEM public or private key to verify with")
    cmd.set_defaults(handler=image_info)
    cmd = commands.add_parser("otp-words", help="the OTP entries a key becomes on the target")
    cmd.add_argument("--key", type=Path, required=True, help="PEM public or private key")
    cmd.add_argument("--purpose", choices=("bootloader", "application"), required=True)
    cmd.add_argument("--profile", default="M2354", choices=sorted(PROFILES))
    cmd.set_defaults(handler=otp_words)
    return run(top, argv)
