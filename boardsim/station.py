"""One station of the simulated line: a probe, a serial device, a fixture and a virtual operator.

The fixture holds at most one board. The operator takes the next board from the station's queue,
inserts it (power-on reset), and removes it once it has booted its application, or after it has seen
no traffic for ``idle_removal_s``; the next one goes in after ``handling_delay_s``. With
``acknowledge_from`` (the api.json a running daemon writes) the operator waits, as a person on the
line would, until the daemon's station shows a result for that board, then removes it. Boards can also be
inserted and removed on command. With no board in the fixture the probe gets No-ACK and the UART
stays silent, as with an empty socket on a real line.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from boardsim.board import Board, Timing
from boardsim.cortex import Core, FlashAlgorithm
from boardsim.dap import DapProbe, SwdPort
from boardsim.isp import BoardIsp, IspKeys
from boardsim.probe_server import LinkTiming, ProbeServer
from boardsim.state import StateStore, load_board, write_atomically
from boardsim.uart import UartFaults, UartPort
from nuwire import mcuboot
from nuwire.ids import encode_obj_id_record, parse_uid
from nuwire.keys import raw_public_key
from nuwire.profiles import TargetProfile

BoardKind = Literal["blank", "objid", "foreign-key", "half"]
BOARD_KINDS: tuple[str, ...] = ("blank", "objid", "foreign-key", "half")
QUIET_S = 0.2
"""The operator looks for a result on the daemon's API only once the board's probe and UART have
been quiet this long (a station at work on a board talks to it): not ten requests a second from
every station throughout."""


FINAL = ("PASS", "FAIL", "QUARANTINE")


class DaemonResults:
    """The results a running daemon shows, heard on its event stream (``GET /api/v1/events?types=board``,
    one stream for the whole simulator): the operators wait for them instead of asking the API
    about their board ten times a second. The daemon's address is read from ``address`` (the
    api.json it writes) at every connection: a restarted daemon may listen elsewhere. Each new
    connection is a new ``epoch``: an operator asks once about a board the stream may have missed."""

    def __init__(self, address: Path) -> None:
        self.address = address
        self.outcomes: dict[str, str] = {}
        self.epoch = 0  # 0: not connected yet; counts the connections made
        self.connected = False

    async def run(self) -> None:
        # the daemon sends a comment every 15 s: a minute of silence is a stream gone dead
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=60.0)) as client:
            while True:
                with contextlib.suppress(OSError, ValueError, KeyError, httpx.HTTPError):
                    url = json.loads(await anyio.Path(self.address).read_text())["url"]
                    events = f"{url}/api/v1/events"
                    async with client.stream("GET", events, params={"types": "board"}) as response:
                        response.raise_for_status()
                        self.epoch, self.connected = self.epoch + 1, True
                        async for line in response.aiter_lines():
                            if line.startswith("data: "):
                                board = json.loads(line.removeprefix("data: "))
                                if board.get("outcome") in FINAL:
                                    self.outcomes[board["uid"]] = board["outcome"]
                self.connected = False
                await anyio.sleep(0.5)  # no daemon yet, or it went away


@dataclass
class OperatorSettings:
    handling_delay_s: float = 0.5
    removal_delay_s: float = 0.2
    idle_removal_s: float = 60.0
    acknowledge_from: Path | None = None


@dataclass
class StationFaults:
    """Faults of one station, settable at start and while running."""

    unplugged: bool = False
    swd_fault_rate: float = 0.0
    swd_disconnected: bool = False
    swd_lost_at_reset: bool = False
    uart: UartFaults = field(default_factory=UartFaults)

    def update(self, values: dict[str, object]) -> None:
        uart_names = {"uart_loss_rate": "loss_rate", "uart_corrupt_rate": "corrupt_rate",
                      "brownout_at_byte": "brownout_at_byte", "brownout_at_command": "brownout_at_command",
                      "slow_factor": "slow_factor",
                      "answer_lost_at_command": "answer_lost_at_command"}  # fmt: skip
        for name, value in values.items():
            if name in uart_names:
                setattr(self.uart, uart_names[name], value)
            elif name in ("unplugged", "swd_fault_rate", "swd_disconnected", "swd_lost_at_reset"):
                setattr(self, name, value)
            else:
                raise ValueError(
                    f"unknown fault {name!r}: use unplugged, swd_fault_rate, swd_disconnected, "
                    "swd_lost_at_reset or "
                    f"{', '.join(uart_names)}"
                )


def make_board(
    profile: TargetProfile, station: int, number: int, kind: str, timing: Timing, *, serial: int | None = None
) -> Board:
    """A board as it comes to the line: blank, or with an OBJ_ID, a foreign key, or half done;
    ``serial`` is its UID's last word (random unless given)."""
    serial = int.from_bytes(os.urandom(4), "little") if serial is None else serial
    uid = (0x53494D00 | station & 0xFF, number, serial)
    board = Board(profile, uid, ucid=(station, number, 0x4E55564F, 0x544F4E00), timing=timing)
    if kind == "objid":
        record = encode_obj_id_record(os.urandom(16))
        start = profile.objid_record - profile.data_flash.base
        board.data_flash[start : start + len(record)] = record
    elif kind in ("foreign-key", "half"):
        key = ec.generate_private_key(ec.SECP256R1())
        for entry, (low, high) in profile.bootloader_key_entries(raw_public_key(key.public_key())).items():
            board.otp[8 * entry : 8 * entry + 8] = low.to_bytes(4, "little") + high.to_bytes(4, "little")
        if kind == "half":
            image = mcuboot.build(
                os.urandom(4096),
                signer=mcuboot.private_key_signer(key),
                public_key=key.public_key(),
                version=mcuboot.Version(1),
                header_size=profile.bootloader_slot.header_size,
                load_addr=profile.bootloader_slot.base,
            )
            base = profile.bootloader_slot.base
            board.aprom[base : base + len(image)] = image
    elif kind != "blank":
        raise ValueError(f"unknown board kind {kind!r}: one of {', '.join(BOARD_KINDS)}")
    return board


class Station:
    def __init__(
        self,
        index: int,
        profile: TargetProfile,
        state: StateStore,
        keys: IspKeys,
        *,
        probe_dir: Path,
        uart_dir: Path,
        baud: int,
        algorithms: tuple[FlashAlgorithm, ...],
        timing: Timing,
        link_timing: LinkTiming,
        operator: OperatorSettings,
        faults: StationFaults,
    ) -> None:
        self.index = index
        self.name = f"station-{index:02d}"
        self.serial = f"NULINK3-SIM-{index:02d}"
        self.profile = profile
        self.state = state
        self.keys = keys
        self.algorithms = algorithms
        self.timing = timing
        self.operator = operator
        self.faults = faults
        self.queue: deque[Board] = deque()
        self.kinds: dict[str, str] = {}  # UID -> board kind, for the queue in the fixture file
        self.board: Board | None = None
        self.isp: BoardIsp | None = None
        self.done: list[str] = []
        self.results: DaemonResults | None = None  # set by the simulator when operators acknowledge
        self._asked: tuple[str, int] | None = None  # (UID, stream epoch) last asked about
        self.probe = DapProbe(
            self.serial,
            SwdPort(
                fault_rate=faults.swd_fault_rate,
                disconnected=faults.swd_disconnected,
                lost_at_reset=faults.swd_lost_at_reset,
                rng=random.Random(index),  # noqa: S311  # fault injection, not crypto
            ),
        )
        self.probe_server = ProbeServer(self.probe, probe_dir / f"{self.serial}.sock", link_timing)
        self.uart = UartPort(uart_dir / self.name, baud, lambda: self.isp, faults.uart)
        self._inserted_at = 0.0
        self._seen = (0, 0)
        self._last_traffic = 0.0

    def __repr__(self) -> str:
        return f"<Station {self.name} board={self.board!r} queued={len(self.queue)} done={len(self.done)}>"

    def apply_faults(self) -> None:
        self.probe.port.fault_rate = self.faults.swd_fault_rate
        self.probe.port.disconnected = self.faults.swd_disconnected
        self.probe.port.lost_at_reset = self.faults.swd_lost_at_reset
        self.probe.port.armed_at = self.board.resets if self.board is not None else 0
        self.uart.faults = self.faults.uart

    @property
    def fixture_file(self) -> Path:
        """Which board is in the fixture, which wait and which are done (a restart resumes it)."""
        return self.state.root / f"{self.name}.json"

    def _save(self) -> None:
        current = None if self.board is None else self.board.uid_text
        queue = [[board.uid_text, self.kinds.get(board.uid_text, "blank")] for board in self.queue]
        plan = {"board": current, "queue": queue, "done": self.done}
        write_atomically(self.fixture_file, json.dumps(plan, indent=1).encode())

    def enqueue(self, count: int, kind: str = "blank") -> None:
        for _ in range(count):
            number = len(self.queue) + len(self.done) + (self.board is not None) + 1
            board = make_board(self.profile, self.index, number, kind, self.timing)
            self.kinds[board.uid_text] = kind
            self.queue.append(board)
        self._save()

    def restore(self) -> bool:
        """Pick up where a killed simulator left this station (its fixture file): the board that was
        in the fixture goes back in first (from its folder: a power cycle), then the rest of the
        pile. False when there is nothing to restore."""
        if not self.fixture_file.exists():
            return False
        plan = json.loads(self.fixture_file.read_text())
        self.done = list(plan["done"])
        waiting = ([[plan["board"], "in the fixture"]] if plan["board"] else []) + plan["queue"]
        for uid, kind in waiting:
            folder = self.state.root / uid
            if (folder / "state.json").exists():
                board = load_board(folder, self.profile, self.timing)
            else:  # never inserted: made again as it came
                words = parse_uid(uid)
                board = make_board(self.profile, self.index, words[1], kind, self.timing, serial=words[2])
            self.kinds[uid] = kind
            self.queue.append(board)
        return True

    def insert(self, board: Board) -> None:
        self.remove()
        self.state.attach(board)
        core = Core(board, self.algorithms)
        board.reset("inserted (power on)")
        self.board, self.isp = board, BoardIsp(board, self.keys)
        self._save()
        self.probe.port.attach(board, core)
        self.uart.bytes_since_insert = 0
        self._inserted_at = self._last_traffic = anyio.current_time()

    def remove(self) -> None:
        if self.board is None:
            return
        self.board.event("operator", "removed", f"booted {self.board.booted}")
        self.state.flush()
        self.done.append(self.board.uid_text)
        self.board = self.isp = None
        self.probe.port.attach(None, None)
        self._save()

    def put_aside(self) -> None:
        """The operator takes the board out mid-sequence and puts it at the bottom of the pile
        (it comes back after the others); the next board goes in after ``handling_delay_s``, as
        a hand takes that long (the probe sees an empty fixture in between)."""
        if self.board is None:
            return
        board = self.board
        board.event("operator", "put aside", f"booted {board.booted}")
        self.state.flush()
        self.board = self.isp = None
        self.probe.port.attach(None, None)
        self.queue.append(board)
        self._save()

    def power_cut(self) -> None:
        """A brown-out: the board loses power and comes back through its ROM (a reset)."""
        if self.board is not None:
            self.board.reset("brown-out (power cut)")

    async def run_operator(self) -> None:
        async with httpx.AsyncClient(timeout=2) as client:  # one per station, for the daemon's API
            while True:
                if self.board is None:
                    if not self.queue:
                        await anyio.sleep(0.05)
                        continue
                    await anyio.sleep(self.operator.handling_delay_s)
                    self.insert(self.queue.popleft())
                    continue
                now = anyio.current_time()
                seen = (self.probe_server.packets, self.uart.stats.bytes_in)
                if seen != self._seen:
                    self._seen, self._last_traffic = seen, now
                if self.operator.acknowledge_from is None:
                    done = self.board.booted == "application"
                elif now - self._last_traffic < QUIET_S:
                    done = False  # the station is at work on it: no result to look for yet
                else:
                    address = self.operator.acknowledge_from
                    done = await self._result_shown(client, address, self.board.uid_text)
                if done:
                    await anyio.sleep(self.operator.removal_delay_s)
                    self.remove()
                elif now - self._last_traffic > self.operator.idle_removal_s:
                    self.remove()
                else:
                    await anyio.sleep(0.1)

    async def _result_shown(self, client: httpx.AsyncClient, address: Path, uid: str) -> bool:
        """Heard on the daemon's event stream, and asked of its API once per board and stream
        connection (the stream may have told it before it connected). No stream, no daemon to
        ask: the board stays in the fixture."""
        results = self.results
        if results is None:
            return await self._acknowledged(client, address, uid)
        if uid in results.outcomes:
            return True
        if not results.connected or self._asked == (uid, results.epoch):
            return False
        self._asked = (uid, results.epoch)
        return await self._acknowledged(client, address, uid)

    async def _acknowledged(self, client: httpx.AsyncClient, address: Path, uid: str) -> bool:
        """Whether the daemon has a result (PASS, FAIL, QUARANTINE) for this board, as the station's
        tile or the board's UID on the dashboard shows it to a person. The address is read each time:
        a restarted daemon may listen elsewhere."""
        try:
            url = json.loads(await anyio.Path(address).read_text())["url"]
            board = (await client.get(f"{url}/api/v1/boards/{uid}")).json()
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            return False  # no daemon running: keep the board until one says so
        return board.get("outcome") in ("PASS", "FAIL", "QUARANTINE")
