"""``boardsim serve``: the simulated line, one process, until SIGTERM.

Layout under STATE_DIR: ``probes/<serial>.sock`` (CMSIS-DAP), ``uart/station-NN`` (links to the
pseudo-terminals), ``<UID>/`` per board, ``isp-keys.json`` (the ROM's and bootloader's static public
keys, which stations need for SecureISP), ``control.sock`` (commands while running, see
:func:`control`), and ``serve.json`` (what is being served, written once everything listens).
"""

from __future__ import annotations

import gc
import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import yaml
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from cryptography.hazmat.primitives.asymmetric import ec

from boardsim.board import Timing
from boardsim.cortex import m2354_algorithms
from boardsim.isp import IspKeys
from boardsim.links import probe_directory
from boardsim.probe_server import LinkTiming
from boardsim.state import StateStore, write_atomically
from boardsim.station import DaemonResults, OperatorSettings, Station, StationFaults
from nuwire.keys import raw_public_key
from nuwire.pem import private_pem
from nuwire.profiles import profile

# Figures for a NuLink3 on USB 2.0 high speed and an M2354 (estimates, not confirmed against the
# datasheet; each is a setting): a CMSIS-DAP bulk round trip of 0.25 ms, flash page erase 10 ms,
# word program 40 us, a P-256 ECDH on the target's crypto engine 30 ms, and 0.2 ms to check, decrypt
# and answer one SecureISP packet.
REAL_TIMING = Timing(page_erase=0.010, word_program=0.000_040, ecdh=0.030, aes_packet=0.000_2)
REAL_LINK = LinkTiming(usb_round_trip=0.000_25)


@dataclass
class ServeSettings:
    stations: int
    state_dir: Path
    boards_per_station: int = 1
    board_kind: str = "blank"
    baud: int = 115_200
    profile: str = "M2354"
    write_stations: Path | None = None
    faults: dict[str, dict[str, object]] = field(default_factory=dict)
    timing: bool = True
    operator: OperatorSettings = field(default_factory=OperatorSettings)


class Simulator:
    def __init__(self, settings: ServeSettings) -> None:
        settings.state_dir = settings.state_dir.absolute()  # links and sockets must not depend on the cwd
        self.settings = settings
        root = settings.state_dir
        for folder in (root, root / "probes", root / "uart"):
            folder.mkdir(parents=True, exist_ok=True)
        self.store = StateStore(root)
        self.keys = self._isp_keys(root)
        target = profile(settings.profile)
        algorithms = m2354_algorithms() if target.pyocd_target == "m2354kjfae" else ()
        self.stations = []
        for index in range(1, settings.stations + 1):
            faults = StationFaults()
            faults.uart.rng.seed(index)  # the same faults on the same station, run after run
            faults.update(dict(settings.faults.get(f"station-{index:02d}", {})))
            station = Station(
                index,
                target,
                self.store,
                self.keys,
                probe_dir=root / "probes",
                uart_dir=root / "uart",
                baud=settings.baud,
                algorithms=algorithms,
                timing=REAL_TIMING if settings.timing else Timing.instant(),
                link_timing=REAL_LINK if settings.timing else LinkTiming(),
                operator=settings.operator,
                faults=faults,
            )
            if not station.restore():  # a simulator killed on this state folder: its line goes on
                station.enqueue(settings.boards_per_station, settings.board_kind)
            self.stations.append(station)

    def station(self, name: str) -> Station:
        for station in self.stations:
            if name in (station.name, station.serial):
                return station
        raise KeyError(f"no station {name!r}")

    @staticmethod
    def _isp_keys(root: Path) -> IspKeys:
        keys = {}
        for name in ("rom", "bootloader"):
            path = root / f"isp-{name}-key.pem"
            if path.exists():
                from nuwire.pem import load_private_key  # noqa: PLC0415  # only on a restart

                keys[name] = load_private_key(path)
            else:
                keys[name] = ec.generate_private_key(ec.SECP256R1())
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(private_pem(keys[name]))
        public = {f"{name}_public_key": raw_public_key(key.public_key()).hex() for name, key in keys.items()}
        write_atomically(root / "isp-keys.json", json.dumps(public, indent=1).encode())
        return IspKeys(rom=keys["rom"], bootloader=keys["bootloader"])

    def describe(self) -> dict[str, Any]:
        public = json.loads((self.settings.state_dir / "isp-keys.json").read_text())
        return {
            "secureisp": public,
            "stations": [
                {
                    "name": s.name,
                    "probe": f"boardsim:{s.serial}",
                    "usb_port": f"sim-{s.index}",
                    "uart": os.path.abspath(s.uart.link),  # the file may live anywhere
                    "baud": s.uart.baud,
                    "enabled": True,
                }
                for s in self.stations
            ],
        }

    def status(self) -> dict[str, Any]:
        return {
            s.name: {
                "board": None if s.board is None else s.board.uid_text,
                "booted": None if s.board is None else s.board.booted,
                "queued": len(s.queue),
                "done": s.done,
                "probe_packets": s.probe_server.packets,
                "uart": vars(s.uart.stats),
            }
            for s in self.stations
        }

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        published = probe_directory()
        published.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            async with anyio.create_task_group() as group:
                if self.settings.operator.acknowledge_from is not None:
                    results = DaemonResults(self.settings.operator.acknowledge_from)
                    group.start_soon(results.run)
                    for station in self.stations:
                        station.results = results
                for station in self.stations:
                    await group.start(station.probe_server.serve)
                    (published / f"{station.serial}.sock").unlink(missing_ok=True)
                    (published / f"{station.serial}.sock").symlink_to(station.probe_server.path)
                    group.start_soon(station.uart.serve)
                    group.start_soon(station.run_operator)
                    if station.faults.unplugged:
                        await station.probe_server.unplug()
                await group.start(self._control)
                group.start_soon(self._flush)
                self._announce()
                task_status.started()
        finally:
            for station in self.stations:
                (published / f"{station.serial}.sock").unlink(missing_ok=True)
                station.probe_server.path.unlink(missing_ok=True)
                station.uart.close()
            self.store.flush()

    def _announce(self) -> None:
        description = self.describe()
        write_atomically(self.settings.state_dir / "serve.json", json.dumps(description, indent=1).encode())
        if self.settings.write_stations is not None:
            write_atomically(self.settings.write_stations, _stations_yaml(description).encode())

    async def _flush(self) -> None:
        while True:
            await anyio.sleep(0.05)
            self.store.flush()

    async def _control(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        path = self.settings.state_dir / "control.sock"
        path.unlink(missing_ok=True)
        listener = await anyio.create_unix_listener(path)
        async with listener:
            task_status.started()
            await listener.serve(self._control_connection)

    async def _control_connection(self, stream: SocketStream) -> None:
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            try:
                line = await reader.receive_until(b"\n", 65536)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound):
                return
            try:
                answer = await self.command(json.loads(line))
            except (ValueError, KeyError, TypeError) as error:
                answer = {"ok": False, "error": str(error)}
            await stream.send(json.dumps(answer).encode() + b"\n")

    async def command(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one control command: status, faults, insert, remove, put-aside, power-cut, unplug, plug."""
        op = request["op"]
        if op == "status":
            return {"ok": True, "stations": self.status()}
        station = self.station(str(request["station"]))
        if op == "faults":
            settings = dict(request["set"])
            station.faults.update(settings)
            station.apply_faults()
            if "unplugged" in settings:
                await (station.probe_server.unplug() if settings["unplugged"] else _plug(station))
        elif op == "insert":
            station.enqueue(1, str(request.get("kind", "blank")))
            station.insert(station.queue.pop())
        elif op == "remove":
            station.remove()
        elif op == "put-aside":
            station.put_aside()
        elif op == "power-cut":
            station.power_cut()
        elif op == "unplug":
            await station.probe_server.unplug()
        elif op == "plug":
            station.probe_server.plug()
        else:
            raise ValueError(f"unknown op {op!r}")
        return {"ok": True}


async def _plug(station: Station) -> None:
    station.probe_server.plug()


def _stations_yaml(description: dict[str, Any]) -> str:
    header = "# Written by boardsim serve: the simulated line's stations and SecureISP keys.\n"
    return header + yaml.safe_dump(description, sort_keys=False)


async def serve(settings: ServeSettings) -> None:
    """Serve until SIGTERM or SIGINT."""
    simulator = Simulator(settings)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as group:
            await group.start(simulator.run)
            gc.freeze()  # what start-up made lives as long as the simulator: no collection walks it
            async for _ in signals:
                group.cancel_scope.cancel()
                break
