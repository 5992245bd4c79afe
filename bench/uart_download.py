"""Benchmark: an encrypted application download over the simulated UART, measured against the
simulator's own time model. Prints one JSON object.

    python bench/uart_download.py [--baud 115200] [--app-size 16384]

The model: every request and answer is 64 bytes at 10 bit times a byte; the target adds its packet
time, 12 word programs per MASS_WRITE, the page erases of ERASE and two ECDH computations in the
handshake; SET_MASS_WRITE and VERIFY_IMAGE cost one exchange each. ``ratio`` = measured / model;
1.0 means the host and the simulator add nothing.

As on a line: the simulated board serves its pseudo-terminal from a process of its own, and the
host is the daemon's own SecureISP link (orchestrator/uart.py: pyserial-asyncio, RESYNC, CONNECT,
the ECDH rounds, then the download), so the figure includes everything the station's side costs
per packet.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import anyio
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
from nuwire.secureisp.states import Role
from orchestrator.uart import UartLink


def prepared_board(app_key: ec.EllipticCurvePrivateKey) -> Board:
    """A board after step 9: bootloader verified, application key hash in OTP, bootloader running."""
    board = Board(M2354, (1, 2, 3), timing=REAL_TIMING)
    for entry, (low, high) in M2354.app_key_hash_entries(raw_public_key(app_key.public_key())).items():
        board.otp[8 * entry : 8 * entry + 8] = low.to_bytes(4, "little") + high.to_bytes(4, "little")
    board.booted = "bootloader"
    return board


def _serve(link: Path, baud: int, board: Board, keys: IspKeys, pipe: tuple[Connection, Connection]) -> None:
    """The board's side, in a process of its own: serve the UART until the host's end of the pipe
    (``pipe[0]``) closes; its copy in this forked process is closed first."""
    pipe[0].close()
    ready = pipe[1]
    isp = BoardIsp(board, keys)

    def until_closed() -> None:
        with contextlib.suppress(EOFError):
            ready.recv_bytes()

    async def serve() -> None:
        port = UartPort(link, baud, lambda: isp)
        async with anyio.create_task_group() as group:
            group.start_soon(port.serve)
            ready.send(str(port.link))
            await anyio.to_thread.run_sync(until_closed)
            group.cancel_scope.cancel()
        port.close()

    anyio.run(serve)


async def download(
    device: str, baud: int, session: HostSession, padded: bytes
) -> tuple[float, float, m.Reply]:
    """The handshake's and the whole download's seconds, and VERIFY_IMAGE's answer."""
    slot, page = M2354.application_slot, M2354.aprom.page_size
    async with UartLink(device, baud, timeout=2.0) as link:
        started = time.monotonic()
        await link.open_session(session)
        handshake = time.monotonic() - started
        await link.send(session, m.Erase(slot.base, -(-len(padded) // page)))
        await link.send(session, m.SetMassWrite(slot.base, len(padded)))
        for offset in range(0, len(padded), 48):
            await link.send(session, m.MassWrite(offset // 48, padded[offset : offset + 48]))
        finished = await link.send(session, m.VerifyImage(slot.base))
        assert finished is not None  # noqa: S101  # VERIFY_IMAGE is answered
        return handshake, time.monotonic() - started, finished


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
    pages = -(-len(padded) // M2354.aprom.page_size)
    context = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory() as folder:
        ours, theirs = context.Pipe()
        board = context.Process(
            target=_serve, args=(Path(folder) / "uart", baud, prepared_board(app_key), keys, (ours, theirs))
        )
        board.start()
        theirs.close()
        try:
            device = ours.recv()
            session = HostSession(Role.BOOTLOADER, station, keys.bootloader.public_key())
            handshake, measured, finished = anyio.run(download, device, baud, session, padded)
        finally:
            ours.close()
            board.join(10)
    if not finished.ok:
        raise SystemExit(f"download refused: {finished.status}")
    chunks = len(padded) // 48 + (len(padded) % 48 > 0)
    packets = 9 + 3 + chunks  # RESYNC, CONNECT and the ECDH rounds; ERASE, SET_MASS_WRITE, VERIFY_IMAGE
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
