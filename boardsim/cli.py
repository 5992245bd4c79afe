"""``boardsim``: the simulator's command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence

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
    print(json.dumps(_plain(as_dicts), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    top, commands = parser("boardsim", "Simulated NuLink3 probes and NuMicro boards.")
    cmd = commands.add_parser("profile", help="print a target profile (memory map, OTP layout, slots)")
    cmd.add_argument("name", nargs="?", default="M2354", choices=sorted(PROFILES))
    cmd.set_defaults(handler=show_profile)
    return run(top, argv)
