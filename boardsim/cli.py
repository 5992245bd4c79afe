"""``boardsim``: the simulator's command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
import yaml

from nuwire.cli import parser, run
from nuwire.profiles import PROFILES, profile


def _plain(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"0x{value:X}"
    if isinstance(value, range):
        return [value.start, value.stop - 1]
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def show_profile(args: argparse.Namespace) -> int:
    target = profile(args.name)
    fields = {f.name: getattr(target, f.name) for f in dataclasses.fields(target)}
    as_dicts = {
        key: dataclasses.asdict(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type)
        else value
        for key, value in fields.items()
    }
    print(json.dumps(_plain(as_dicts), indent=2, default=lambda value: value.hex()))
    return 0


def serve_command(args: argparse.Namespace) -> int:
    from boardsim.serve import ServeSettings, serve  # noqa: PLC0415  # pyOCD's import is slow; only serve needs it
    from boardsim.station import BOARD_KINDS, OperatorSettings  # noqa: PLC0415

    faults: dict[str, dict[str, object]] = {}
    if args.faults is not None:
        loaded = yaml.safe_load(args.faults.read_text()) or {}
        if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
            print(
                f"boardsim: error: {args.faults}: expected a mapping of station name to faults",
                file=sys.stderr,
            )
            return 2
        faults = loaded
    if args.board_kind not in BOARD_KINDS:
        print(f"boardsim: error: --board-kind: one of {', '.join(BOARD_KINDS)}", file=sys.stderr)
        return 2
    settings = ServeSettings(
        stations=args.stations,
        state_dir=args.state_dir,
        boards_per_station=args.boards_per_station,
        board_kind=args.board_kind,
        baud=args.baud,
        profile=args.profile,
        write_stations=args.write_stations,
        faults=faults,
        timing=not args.no_timing,
        operator=OperatorSettings(
            handling_delay_s=args.handling_delay,
            idle_removal_s=args.idle_removal,
            acknowledge_from=args.acknowledge_from,
        ),
    )
    anyio.run(serve, settings)
    return 0


def control(args: argparse.Namespace) -> int:
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(10)
        connection.connect(str(args.state_dir / "control.sock"))
        connection.sendall(args.request.encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    print(answer.decode().strip())
    return 0 if json.loads(answer).get("ok") else 1


def main(argv: Sequence[str] | None = None) -> int:
    top, commands = parser("boardsim", "Simulated NuLink3 probes and NuMicro boards.")
    cmd = commands.add_parser("serve", help="serve simulated stations (probes and UARTs) until SIGTERM")
    cmd.add_argument("--stations", type=int, required=True)
    cmd.add_argument("--state-dir", type=Path, required=True)
    cmd.add_argument("--boards-per-station", type=int, default=1)
    cmd.add_argument("--board-kind", default="blank", help="blank, objid, foreign-key or half")
    cmd.add_argument("--baud", type=int, default=115_200)
    cmd.add_argument("--profile", default="M2354", choices=sorted(PROFILES))
    cmd.add_argument("--write-stations", type=Path, help="write the stations part of a stations.yaml here")
    cmd.add_argument("--faults", type=Path, help="YAML or JSON: station name -> faults at start")
    cmd.add_argument("--no-timing", action="store_true", help="answer at once instead of at hardware speed")
    cmd.add_argument(
        "--handling-delay", type=float, default=0.5, help="seconds between removal and insertion"
    )
    cmd.add_argument("--idle-removal", type=float, default=60.0, help="remove a board after this idle time")
    cmd.add_argument(
        "--acknowledge-from",
        type=Path,
        help="a daemon's api.json: remove a board only once the daemon's station shows its result",
    )
    cmd.set_defaults(handler=serve_command)
    cmd = commands.add_parser("ctl", help="send a control command (JSON) to a running serve")
    cmd.add_argument("--state-dir", type=Path, required=True)
    cmd.add_argument(
        "request", help='e.g. {"op": "status"} or {"op": "faults", "station": "station-01", "set": {...}}'
    )
    cmd.set_defaults(handler=control)
    cmd = commands.add_parser("profile", help="print a target profile (memory map, OTP layout, slots)")
    cmd.add_argument("name", nargs="?", default="M2354", choices=sorted(PROFILES))
    cmd.set_defaults(handler=show_profile)
    return run(top, argv)
