"""Benchmark: an encrypted application download over the simulated UART, measured against the
simulator's own time model. Prints one JSON object.

    python bench/uart_download.py [--baud 115200] [--app-size 16384]

The model: every request and answer is 64 bytes at 10 bit times a byte; the target adds its packet
time, 12 word programs per MASS_WRITE, the page erases of ERASE and two ECDH computations in the
handshake; SET_MASS_WRITE and VERIFY_IMAGE cost one exchange each. ``ratio`` = measured / model;
1.0 means the host and the simulator add nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import serial
from anyio.from_thread import start_blocking_portal
from cryptography.hazmat.primitives.asymmetric import ec

from boardsim.board import Board
from boardsim.isp import BoardIsp, IspKeys
from boardsim.serve import REAL_TIMING
from boardsim.uart import UartPort
from nuwire import mcuboot
from nuwire.keys import raw_public_key
from nuwire.profiles import M2354
from nuwire.secureisp import messages as m
from nuwire.secureisp.packet import PACKET_SIZE
from nuwire.secureisp.session import HostSession
from nuwire.secureisp.states import Phase, Role


def prepared_board(app_key: ec.EllipticCurvePrivateKey) -> Board:
    """A board after step 9: bootloader verified, application key hash in OTP, bootloader running."""
    board = Board(M2354, (1, 2, 3), timing=REAL_TIMING)
    for entry, (low, high) in M2354.app_key_hash_entries(raw_public_key(app_key.public_key())).items():
        board.otp[8 * entry : 8 * entry + 8] = low.to_bytes(4, "little") + high.to_bytes(4, "little")
    board.booted = "bootloader"
    return board


def exchange(device: serial.Serial, session: HostSession, raw: bytes) -> m.Reply:
    """One exchange on a clean line; Nuvoton's target answers nothing after a damaged packet."""
    device.write(raw)
    answer = device.read(PACKET_SIZE)
    if len(answer) != PACKET_SIZE:
        raise TimeoutError("no answer")
    return session.receive(answer)


def run(baud: int, app_size: int) -> dict[str, object]:
    app_key, station = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    keys = IspKeys(
        rom=ec.generate_private_key(ec.SECP256R1()), bootloader=ec.generate_private_key(ec.SECP256R1())
    )
    image = mcuboot.build(
        os.urandom(app_size), signer=mcuboot.private_key_signer(app_key), public_key=app_key.public_key(),
        version=mcuboot.Version(1), key_format=mcuboot.KeyFormat.FULL,
        header_size=M2354.application_slot.header_size, load_addr=M2354.application_slot.base,
    )  # fmt: skip
    padded = image + b"\xff" * (-len(image) % 4)
    board = prepared_board(app_key)
    isp = BoardIsp(board, keys)
    with tempfile.TemporaryDirectory() as folder, start_blocking_portal() as portal:
        port = UartPort(Path(folder) / "uart", baud, lambda: isp)
        portal.start_task_soon(port.serve)
        with serial.Serial(str(port.link), baud, timeout=2.0) as device:
            session = HostSession(Role.BOOTLOADER, station, keys.bootloader.public_key())
            started = time.monotonic()
            exchange(device, session, session.connect())
            while session.phase is not Phase.READY:
                exchange(device, session, session.key_exchange())
            handshake = time.monotonic() - started
            slot = M2354.application_slot
            pages = -(-len(padded) // M2354.aprom.page_size)
            exchange(device, session, session.send(m.Erase(slot.base, pages)))
            exchange(device, session, session.send(m.SetMassWrite(slot.base, len(padded))))
            for offset in range(0, len(padded), 48):
                exchange(
                    device, session, session.send(m.MassWrite(offset // 48, padded[offset : offset + 48]))
                )
            finished = exchange(device, session, session.send(m.VerifyImage(slot.base)))
            measured = time.monotonic() - started
        portal.call(portal.stop, True)
        port.close()
    if not finished.ok:
        raise SystemExit(f"download refused: {finished.status}")
    chunks = len(padded) // 48 + (len(padded) % 48 > 0)
    packets = 9 + 3 + chunks  # handshake, ERASE, SET_MASS_WRITE, VERIFY_IMAGE, MASS_WRITEs
    t = REAL_TIMING
    wire = 2 * PACKET_SIZE * 10 / baud
    model = (
        packets * (wire + t.aes_packet)
        + 2 * t.ecdh
        + pages * t.page_erase
        + len(padded) // 4 * t.word_program
    )
    return {
        "benchmark": "uart_download",
        "baud": baud,
        "image_bytes": len(image),
        "packets": packets,
        "handshake_s": round(handshake, 4),
        "measured_s": round(measured, 4),
        "model_s": round(model, 4),
        "ratio": round(measured / model, 3),
        "payload_bytes_per_s": round(len(image) / measured),
        "protocol_ceiling_bytes_per_s": round(48 / wire),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baud", type=int, default=115_200)
    parser.add_argument("--app-size", type=int, default=16_384)
    args = parser.parse_args()
    print(json.dumps(run(args.baud, args.app_size)))


if __name__ == "__main__":
    main()
