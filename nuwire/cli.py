"""Shared plumbing for the three console scripts: argparse with subcommands, errors as one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from nuwire.errors import ProtocolError

Handler = Callable[[argparse.Namespace], int]


def parser(
    prog: str, description: str
) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]]:
    top = argparse.ArgumentParser(prog=prog, description=description)
    commands = top.add_subparsers(title="subcommands", metavar="COMMAND", required=True)
    return top, commands


def run(top: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, call the subcommand's handler, and turn expected failures into a one-line error."""
    args = top.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (ProtocolError, OSError) as error:
        print(f"{top.prog}: error: {error}", file=sys.stderr)
        return 2
