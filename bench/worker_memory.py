"""Benchmark: where a probe worker's memory goes. Prints one JSON object.

    python bench/worker_memory.py

One simulated station (``boardsim serve``) and one probe worker forked from the daemon's fork
server, as the daemon makes them, with Python's tracemalloc started in the worker at its start.
The worker reads the UID, flashes and reads back 8 KiB, then reports:
- ``smaps``: the worker's RSS split into pages shared with the fork server and the other workers
  (``shared_*``) and its own (``private_*``), and its PSS, from /proc/PID/smaps_rollup;
- ``fork_server``: the same for the fork server (pyOCD imported once, shared by every worker);
- ``traced_mib``: what the worker's Python allocated since it started and still holds, and
  ``top``: the files that hold most of it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from orchestrator.probe_worker import _context, serve

KIB = 1024


def _smaps(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":").lower()] = round(int(value) / KIB, 1)  # MiB
    keep = ("rss", "pss", "shared_clean", "shared_dirty", "private_clean", "private_dirty")
    return {name: fields[name] for name in keep if name in fields}


def _where(stat: tracemalloc.Statistic) -> dict[str, object]:
    return {
        "file": str(stat.traceback[0].filename).split("site-packages/")[-1],
        "kib": round(stat.size / KIB),
    }


def _traced_serve(connection: Connection, unique_id: str, report: str, **kwargs: Any) -> None:
    """The worker's own loop, with tracemalloc on from its start and SIGUSR1 writing ``report``."""
    tracemalloc.start(1)

    def write(*_: object) -> None:
        snapshot = tracemalloc.take_snapshot()
        stats = snapshot.statistics("filename")
        Path(report).write_text(
            json.dumps(
                {
                    "traced_mib": round(sum(s.size for s in stats) / KIB / KIB, 2),
                    "top": [_where(s) for s in stats[:12]],
                }
            )
        )

    signal.signal(signal.SIGUSR1, write)
    serve(connection, unique_id, "M2354", 4_000_000, **kwargs)


def _ask(connection: Connection, operation: str, *args: Any) -> Any:
    connection.send((operation, args))
    while True:
        answer = connection.recv()
        if answer[0] != "progress":
            break
    if answer[0] != "ok":
        raise SystemExit(f"{operation}: {answer}")
    return answer[1]


def main() -> int:
    folder = Path(tempfile.mkdtemp(prefix="wmem-", dir="/tmp"))
    os.environ["BOARDSIM_PROBES"] = str(folder / "published")
    simulator = subprocess.Popen(  # noqa: S603  # our own console script
        [str(Path(sys.executable).with_name("boardsim")), "serve", "--stations", "1",
         "--state-dir", str(folder / "boards"), "--baud", "921600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    report = folder / "traced.json"
    try:
        deadline = time.monotonic() + 60
        while not (folder / "boards" / "serve.json").exists():
            if time.monotonic() > deadline or simulator.poll() is not None:
                raise SystemExit("boardsim serve did not start")
            time.sleep(0.05)
        context = _context()
        ours, theirs = context.Pipe()
        worker = context.Process(
            target=_traced_serve,
            args=(theirs, "boardsim:NULINK3-SIM-01", str(report)),
            kwargs={"parent": os.getpid(), "environ": dict(os.environ)},
            daemon=True,
        )
        worker.start()
        theirs.close()
        _ask(ours, "uid")
        image = os.urandom(8 * KIB)
        _ask(ours, "flash", 0x20000, image)
        if bytes(_ask(ours, "read_memory", 0x20000, len(image))) != image:
            raise SystemExit("the flash did not read back")
        os.kill(worker.pid, signal.SIGUSR1)
        _ask(ours, "uid")  # the handler has run once the worker answers again
        fork_server = _parent(worker.pid)
        result = {
            "benchmark": "worker_memory",
            "smaps": _smaps(worker.pid),
            "fork_server": _smaps(fork_server),
            **json.loads(report.read_text()),
        }
        _ask(ours, "close")
        ours.close()
        worker.join(10)
    finally:
        simulator.send_signal(signal.SIGTERM)
        simulator.wait(30)
    print(json.dumps(result, indent=1))
    return 0


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


if __name__ == "__main__":
    sys.exit(main())
