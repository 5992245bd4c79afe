"""``make demo`` until the whole line runs: the formats of one board's provisioning, end to end.

Makes development keys, signs a bootloader and an application as MCUboot images for the M2354
profile, verifies both the way the ROM and the bootloader will, and prints the OTP words a station
would burn. Output goes to ./demo-out (or the directory given as the first argument).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from nuwire import mcuboot
from nuwire.keys import key_hash, raw_public_key
from nuwire.pem import private_pem
from nuwire.profiles import M2354


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "demo-out")
    out.mkdir(parents=True, exist_ok=True)
    boot_key = ec.generate_private_key(ec.SECP256R1())
    app_key = ec.generate_private_key(ec.SECP256R1())
    for name, key in (("bootloader-key.pem", boot_key), ("app-key.pem", app_key)):
        path = out / name
        path.write_bytes(private_pem(key))
        os.chmod(path, 0o600)
    images = {}
    for slot, key, key_format, body in (
        (M2354.bootloader_slot, boot_key, mcuboot.KeyFormat.HASH, os.urandom(24 * 1024)),
        (M2354.application_slot, app_key, mcuboot.KeyFormat.FULL, os.urandom(64 * 1024)),
    ):
        image = mcuboot.build(
            body,
            signer=mcuboot.private_key_signer(key),
            public_key=key.public_key(),
            version=mcuboot.Version(1, 0, 0),
            key_format=key_format,
            header_size=slot.header_size,
            load_addr=slot.base,
        )
        (out / f"{slot.name}.signed.bin").write_bytes(image)
        images[slot.name] = mcuboot.parse(image)
        digest = images[slot.name].digest.hex()
        print(f"signed {slot.name}: {len(image)} bytes at 0x{slot.base:08X}, sha256 {digest}")

    boot_raw = raw_public_key(boot_key.public_key())
    app_raw = raw_public_key(app_key.public_key())
    print(
        "ROM check of the bootloader with the OTP key:",
        mcuboot.verify(images["bootloader"], boot_key.public_key()).value,
    )
    print(
        "bootloader check of the application against the OTP hash:",
        mcuboot.verify_against_key_hash(images["application"], key_hash(app_raw)).value,
    )
    print("OTP words a station burns (entry: low high):")
    for purpose, entries in (
        ("bootloader key", M2354.bootloader_key_entries(boot_raw)),
        ("application key hash", M2354.app_key_hash_entries(app_raw)),
    ):
        for entry, (low, high) in entries.items():
            print(f"  OTP{entry:<3} {purpose:<21} 0x{low:08X} 0x{high:08X}")
    print(f"keys and images are in {out}/; check one with:")
    print(f"  imgtool verify -k {out}/app-key.pem {out}/application.signed.bin")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
