"""Benchmark: a whole simulated line (cloudserver, boardsim at hardware speed, the daemon as
``orchestrator run``) provisioning K boards on each of M stations. Prints one JSON object.

    python bench/line.py [--stations 16] [--boards 1] [--baud 921600] [--app-size 16384]

What it reports:
- ``makespan_s``: from the daemon's start to the last board's outcome; ``board_s`` per board.
- ``steps``: per step number, the median and the longest time of a board in it (first intent to
  last result, retries included), the step's physical ``floor_s`` from the simulator's own time
  settings, and measured/floor. The floor counts what the hardware cannot avoid: SWD transfers at
  the probe's clock and one USB round trip per CMSIS-DAP packet, flash page erases and word
  programs, 64-byte SecureISP packets at 10 bit times a byte both ways, the target's per-packet AES
  and its ECDH (the model of bench/uart_download.py). Cloud steps have no physical floor (null).
- ``floor_board_s``: one board's floor, the sum of its steps.
- ``cpu_s``, ``peak_rss_mib`` and ``peak_pss_mib`` per process role: the daemon, its probe
  workers, the simulator and the cloud (read from /proc every 0.2 s, PSS every second: a process
  that ends between two reads loses at most that much). RSS counts a page shared by N processes N
  times, PSS once in all (the memory the role really costs); ``cpu_s_per_board`` for the daemon
  and its workers together.
- ``load_average``: the 1-minute load average, its mean and its peak over the run.
- ``idle_core_per_station``: after the last board, with every fixture empty, the cores each role
  spends per station over ``--idle-s`` seconds (an idle line should cost next to nothing).

Compare ratios from one run (one board against 16 boards, or measured against floor): the
machine is shared, so absolute seconds move from run to run. docs/performance.md holds the
latest figures with the commands that made them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
from cryptography.hazmat.primitives.asymmetric import ec

from boardsim.probe_server import SWD_CLOCKS_PER_TRANSFER
from boardsim.serve import REAL_LINK, REAL_TIMING
from nuwire import mcuboot
from nuwire.profiles import M2354
from nuwire.secureisp.packet import PACKET_SIZE
from orchestrator.demo import _create_job, _prepare, _start, _stations_yaml, _tool
from orchestrator.steps import STEPS

SWD_HZ = 4_000_000  # the probe workers' SWD clock (orchestrator/probe_worker.py)
BOOTLOADER_BYTES = 8 * 1024  # orchestrator/demo.py's bootloader body
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_S = 0.2


def signed_size(body: int) -> int:
    """The length of an MCUboot image of ``body`` bytes as the cloud signs it (header and TLVs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    slot = M2354.application_slot
    image = mcuboot.build(
        b"\0" * body, signer=mcuboot.private_key_signer(key), public_key=key.public_key(),
        version=mcuboot.Version(1), key_format=mcuboot.KeyFormat.FULL,
        header_size=slot.header_size, load_addr=slot.base,
    )  # fmt: skip
    return len(image)


def download_floor(baud: int, image_bytes: int) -> dict[str, float]:
    """Steps 10, 12 and 13 on the wire and in the target (bench/uart_download.py's model)."""
    t, wire = REAL_TIMING, 2 * PACKET_SIZE * 10 / baud
    padded = image_bytes + (-image_bytes % 4)
    chunks = math.ceil(padded / 48)
    pages = math.ceil(padded / M2354.aprom.page_size)
    return {
        "10": 9 * (wire + t.aes_packet) + 2 * t.ecdh,  # RESYNC, CONNECT, the ECDH rounds
        "12": (3 + chunks) * (wire + t.aes_packet) + pages * t.page_erase + padded // 4 * t.word_program,
        "13": 2 * (wire + t.aes_packet),  # VERIFY_IMAGE, DISCONNECT
    }


def floors(baud: int, app_size: int) -> dict[str, float | None]:
    """Each step's physical floor in seconds (None: no physics, a cloud call)."""
    t, swd = REAL_TIMING, SWD_CLOCKS_PER_TRANSFER / SWD_HZ
    usb, wire = REAL_LINK.usb_round_trip, 2 * PACKET_SIZE * 10 / baud
    bootloader = signed_size(BOOTLOADER_BYTES)
    words, pages = math.ceil(bootloader / 4), math.ceil(bootloader / M2354.aprom.page_size)
    otp_words = 2 * 8  # entries 0..7, two words each
    found: dict[str, float | None] = {
        "1": 4 * usb + 16 * swd,  # the UID twice and the OBJ_ID record (a few packets)
        "2": None,
        "3": otp_words * (t.word_program + swd) + 2 * usb,
        # every page compared, erased and programmed, read back: 3 transfers a word
        "4": pages * t.page_erase + words * (t.word_program + 3 * swd) + 3 * pages * usb,
        "5": usb,
        # CONFIG0 programmed and read back, a reset, then the lock's proof over SecureISP: the
        # ROM's session (RESYNC, CONNECT, the ECDH rounds), GET_ID and READ_CONFIG
        "6": t.word_program + 4 * usb + 11 * (wire + t.aes_packet) + 2 * t.ecdh,
        "7": None,
        # GET_ID, then READ_OTP, WRITE_OTP, READ_OTP an entry (the ROM's session opens before it)
        "8": (1 + 3 * 4) * (wire + t.aes_packet) + 8 * t.word_program,
        "9": wire / 2,  # REBOOT_TO_BOOTLOADER: a request, no answer
        "11": None,
    }
    found.update(download_floor(baud, signed_size(app_size)))
    return found


def _pss(pid: int) -> int:
    """Proportional set size in bytes: shared pages split among the processes that share them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _proc(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, CPU ticks, RSS bytes) of a live process, from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[21]) * PAGE


class Sampler:
    """CPU and resident memory per role: the processes named, and every process below them."""

    def __init__(self, roles: dict[str, int]) -> None:
        self.roles = roles
        self.cpu: dict[str, dict[int, int]] = defaultdict(dict)
        self.peak_rss: dict[str, int] = defaultdict(int)
        self.peak_pss: dict[str, int] = defaultdict(int)
        self.loads: list[float] = []
        self.samples = 0

    def sample(self) -> None:
        table = {
            pid: info for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if (info := _proc(pid))
        }
        children: dict[int, list[int]] = defaultdict(list)
        for pid, (parent, _, _) in table.items():
            children[parent].append(pid)
        for role, root in self.roles.items():
            if root not in table:
                continue
            tree = self._below(root, children)
            tree = {"daemon": tree[:1], "workers": tree[1:]}.get(role, tree)
            rss = 0
            for pid in tree:
                _, ticks, resident = table[pid]
                self.cpu[role][pid] = ticks
                rss += resident
            self.peak_rss[role] = max(self.peak_rss[role], rss)
            if self.samples % 5 == 0:  # smaps_rollup walks the page tables: once a second
                self.peak_pss[role] = max(self.peak_pss[role], sum(map(_pss, tree)))
        self.loads.append(os.getloadavg()[0])
        self.samples += 1

    @staticmethod
    def _below(root: int, children: dict[int, list[int]]) -> list[int]:
        found, todo = [], [root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children[pid])
        return found

    def report(self) -> dict[str, Any]:
        return {
            "cpu_s": {role: round(sum(self.cpu[role].values()) / TICK, 2) for role in self.roles},
            "peak_rss_mib": {role: round(self.peak_rss[role] / 2**20, 1) for role in self.roles},
            "peak_pss_mib": {role: round(self.peak_pss[role] / 2**20, 1) for role in self.roles},
            "processes": {role: len(self.cpu[role]) for role in self.roles},
            "load_average": {
                "mean": round(statistics.fmean(self.loads), 2) if self.loads else None,
                "peak": round(max(self.loads), 2) if self.loads else None,
            },
        }


def _times(journal: Path) -> tuple[list[tuple[str, float, float]], dict[int, list[float]], dict[str, int]]:
    with sqlite3.connect(journal) as db:
        boards = db.execute("SELECT uid, outcome, started, finished FROM boards").fetchall()
        spans = db.execute(
            "SELECT uid, step, MIN(time), MAX(time) FROM steps WHERE phase IN ('intent', 'result') "
            "GROUP BY uid, step"
        ).fetchall()
    outcomes: dict[str, int] = defaultdict(int)
    for _, outcome, _, _ in boards:
        outcomes[outcome or "open"] += 1
    by_step: dict[int, list[float]] = defaultdict(list)
    for _, step, first, last in spans:
        by_step[int(step)].append(last - first)
    finished = [(uid, started, end) for uid, outcome, started, end in boards if outcome and end]
    return finished, by_step, dict(outcomes)


def _finished(journal: Path) -> int:
    try:
        with sqlite3.connect(journal, timeout=30) as db:
            query = "SELECT COUNT(*) FROM boards WHERE outcome IN ('PASS', 'FAIL', 'QUARANTINE')"
            return int(db.execute(query).fetchone()[0])
    except sqlite3.OperationalError:  # not yet created
        return 0


def run(
    stations: int, boards: int, baud: int, app_size: int, *, workdir: Path, bound_s: float, idle_s: float
) -> dict[str, Any]:
    bodies = _prepare(workdir, app_size)
    os.environ["BOARDSIM_PROBES"] = str((workdir / "probes").resolve())
    processes = _start(workdir, stations, boards, baud, None)
    total = stations * boards
    url, job_id = anyio.run(_create_job, workdir / "cloud", bodies, total)
    simulated = json.loads((workdir / "boards" / "serve.json").read_text())
    (workdir / "stations.yaml").write_text(_stations_yaml(workdir, url, job_id, simulated, uart_timeout=2.0))
    journal = workdir / "journal.db"
    log = workdir / "logs" / "orchestrator.jsonl"
    command = [_tool("orchestrator"), "run", "--config", str(workdir / "stations.yaml"),
               "--journal", str(journal), "--log-file", str(log)]  # fmt: skip
    started = time.time()
    daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603  # our own script
    sampler = Sampler(
        {
            "daemon": daemon.pid,
            "workers": daemon.pid,
            "simulator": processes[1].pid,
            "cloud": processes[0].pid,
        }
    )
    try:
        deadline = time.monotonic() + bound_s
        while _finished(journal) < total and time.monotonic() < deadline and daemon.poll() is None:
            sampler.sample()
            time.sleep(SAMPLE_S)
        sampler.sample()
        usage = sampler.report()  # the boards' own: the idle window below is reported apart
        idle = _idle(sampler, stations, idle_s) if idle_s and daemon.poll() is None else None
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=180)
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)
    finished, by_step, outcomes = _times(journal)
    floor = floors(baud, app_size)
    steps = {}
    for step in STEPS:
        times, low = by_step.get(step.number, []), floor.get(str(step.number))
        median = statistics.median(times) if times else None
        steps[str(step.number)] = {
            "name": step.name,
            "p50_s": None if median is None else round(median, 4),
            "max_s": round(max(times), 4) if times else None,
            "floor_s": None if low is None else round(low, 4),
            "ratio": None if median is None or not low else round(median / low, 2),
        }
    line_cpu = usage["cpu_s"]["daemon"] + usage["cpu_s"]["workers"]
    durations = [end - begin for _, begin, end in finished]
    return {
        "benchmark": "line",
        "stations": stations,
        "boards_per_station": boards,
        "baud": baud,
        "app_size": app_size,
        "boards": total,
        "outcomes": outcomes,
        "makespan_s": round(max((end for _, _, end in finished), default=time.time()) - started, 2),
        "board_s": {
            "p50": round(statistics.median(durations), 3) if durations else None,
            "max": round(max(durations), 3) if durations else None,
        },
        "floor_board_s": round(sum(v for v in floor.values() if v), 4),
        "steps": steps,
        **usage,
        "cpu_s_per_board": {
            "daemon_and_workers": round(line_cpu / max(1, len(finished)), 3),
            "simulator": round(usage["cpu_s"]["simulator"] / max(1, len(finished)), 3),
        },
        "idle_core_per_station": idle,
        "workdir": str(workdir),
    }


def _idle(sampler: Sampler, stations: int, seconds: float) -> dict[str, float]:
    """Cores per station of each role while every fixture is empty (the operator took the boards
    out), over ``seconds`` after a settling second."""
    roles = ("daemon", "workers", "simulator")
    time.sleep(2.0)
    sampler.sample()
    before, started = {r: sum(sampler.cpu[r].values()) for r in roles}, time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(SAMPLE_S)
        sampler.sample()
    spent = time.monotonic() - started
    return {r: round((sum(sampler.cpu[r].values()) - before[r]) / TICK / spent / stations, 4) for r in roles}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stations", type=int, default=16)
    parser.add_argument("--boards", type=int, default=1, help="boards per station")
    parser.add_argument("--baud", type=int, default=921_600)
    parser.add_argument("--app-size", type=int, default=16_384)
    parser.add_argument("--bound-s", type=float, default=1800, help="give up after this long")
    parser.add_argument("--workdir", type=Path, help="default: a new folder under /tmp")
    parser.add_argument(
        "--idle-s", type=float, default=10, help="then measure the empty line this long (0: not)"
    )
    args = parser.parse_args()
    # short: the simulator's AF_UNIX socket paths must stay under 107 bytes
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="line-", dir="/tmp"))
    result = run(
        args.stations,
        args.boards,
        args.baud,
        args.app_size,
        workdir=workdir,
        bound_s=args.bound_s,
        idle_s=args.idle_s,
    )
    print(json.dumps(result, indent=1))
    return 0 if result["outcomes"].get("PASS") == result["boards"] else 1


if __name__ == "__main__":
    sys.exit(main())
