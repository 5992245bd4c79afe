"""Nuvoton's own SecureISP target (../shared/nuvoton-ref) built with firmware/, as a board for tests.

``build_nuref(tmp)`` compiles it into a temporary folder (shared/ is read-only in CI). ``NurefBoard``
runs one binary in stdin/stdout mode behind a pseudo-terminal that stays put, as a board's UART does:
when the target resets (RESET, the vendor reboot: exit 10-12) or the test pulses nRESET (SIGTERM, exit
0), it starts again from its own dumps (OTP, flash, program counts), as a chip keeps them over a reset.
``damage_packet(n)`` flips a bit in the n-th packet the host sends from now on.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading
import tty
from pathlib import Path

from tests.conftest import system_tool

NUREF = Path(__file__).resolve().parents[2] / "shared" / "nuvoton-ref"
FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"
RESET_STATUSES = (0, 10, 11, 12)


def nuref_source() -> Path:
    source = Path(os.environ.get("NUPROV_NUREF", NUREF))
    if not (source / "Makefile").exists():
        system_tool("missing-nuvoton-ref", f"../shared/nuvoton-ref (not found at {source})")
    return source


def build_nuref(build: Path) -> Path:
    """The four nuref binaries with firmware/ as the vendor code, in ``build``."""
    system_tool("gcc", "gcc")
    system_tool("make", "make")
    if not Path("/usr/include/openssl/ec.h").exists():
        system_tool("missing-openssl-headers", "libssl-dev")
    result = subprocess.run(
        ["make", "-s", "-C", str(FIRMWARE), "host", f"NUREF={nuref_source()}", f"BUILD={build}"],  # noqa: S607  # make from the system package
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return build


class NurefBoard:
    """One nuref binary as a board: a stable UART device, resets, state kept over resets."""

    def __init__(self, binary: Path, state: Path, link: Path) -> None:
        self.binary, self.state, self.link = binary, state, link
        state.mkdir(parents=True, exist_ok=True)
        self._master, slave = os.openpty()
        tty.setraw(slave)
        self._slave = slave
        link.unlink(missing_ok=True)
        link.symlink_to(os.ttyname(slave))
        self.exits: list[int] = []
        self._damage: int | None = None
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self._start()
        self._thread = threading.Thread(target=self._forward, daemon=True)
        self._thread.start()

    def _files(self) -> dict[str, str]:
        names = {"FLASH": "flash.bin", "OTP": "otp.bin", "OTP_LOCK": "otp-lock.bin"}
        env = {f"NUREF_{key}_DUMP": str(self.state / name) for key, name in names.items()}
        env["NUREF_OTP_COUNTS"] = str(self.state / "counts.json")
        for key, name in names.items():
            if (self.state / name).exists():
                env[f"NUREF_{key}_LOAD"] = str(self.state / name)
        if (self.state / "counts.json").exists():
            env["NUREF_OTP_COUNTS_LOAD"] = str(self.state / "counts.json")
        return env

    def _start(self) -> None:
        env = {**os.environ, **self._files(), "NUREF_CONNECT_LOOPS": str(10**9)}
        self._process = subprocess.Popen(  # our own build of the reference
            [str(self.binary)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.state / "stderr.log", "ab"),  # noqa: SIM115  # the child keeps it
            env=env,
        )

    def _forward(self) -> None:
        """Host bytes to the target's stdin, its answers back; a reset starts the target again."""
        while not self._stopped:
            process = self._process
            assert process is not None
            assert process.stdin is not None
            assert process.stdout is not None
            out = process.stdout.fileno()
            ready, _, _ = select.select([self._master, out], [], [], 0.05)
            if out in ready:
                answer = os.read(out, 64)
                if answer:
                    os.write(self._master, answer)
                    continue
            if process.poll() is not None:
                with self._lock:
                    self.exits.append(process.returncode)
                    if not self._stopped:
                        self._start()
                continue
            if self._master in ready:
                data = bytearray(os.read(self._master, 64))
                with self._lock:
                    if self._damage is not None:
                        if self._damage < len(data):
                            data[self._damage] ^= 0x10
                            self._damage = None
                        else:
                            self._damage -= len(data)
                try:
                    process.stdin.write(bytes(data))
                    process.stdin.flush()
                except BrokenPipeError:
                    continue

    def damage_byte(self, offset: int) -> None:
        """Flip a bit ``offset`` bytes into what the host sends next."""
        with self._lock:
            self._damage = offset

    async def reset(self) -> None:
        """nRESET: the target stops (its state dumped) and starts again."""
        process = self._process
        assert process is not None
        process.send_signal(signal.SIGTERM)

    def counts(self) -> list[int]:
        return list(json.loads((self.state / "counts.json").read_text()))

    def flash(self) -> bytes:
        return (self.state / "flash.bin").read_bytes()

    def close(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._thread.join()
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait()
        os.close(self._master)
        os.close(self._slave)
        self.link.unlink(missing_ok=True)
