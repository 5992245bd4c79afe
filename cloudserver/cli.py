"""``cloudserver``: the provisioning cloud's command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

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


def main(argv: Sequence[str] | None = None) -> int:
    top, commands = parser("cloudserver", "The provisioning cloud server.")
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
