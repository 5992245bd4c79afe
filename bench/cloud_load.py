"""Benchmark: the cloud under a load of mutual-TLS stations. Prints one JSON object.

    python bench/cloud_load.py [--clients 1,16,64] [--boards 64] [--keystores file,pkcs11]
                               [--database sqlite|postgres] [--replicas 1|2]

Each client is one station connection (kept alive) that provisions boards one after another, as a
station does: register, bootloader (a key made and an image signed), application key, application
(signed), result: five calls a board, three of them provisioning calls. Per concurrency: calls/s,
p50/p99 latency of the provisioning calls, the server's CPU per call (its processes' user +
system time over the run, from /proc), the load generator's own CPU per call and how many of the
machine's cores were busy (all processes: the servers, PostgreSQL, HAProxy, the load generator).
``--replicas 2`` runs two `cloudserver serve` on one PostgreSQL behind HAProxy
(deploy/haproxy/haproxy.cfg) and reports their sum. PostgreSQL and HAProxy come from Debian's
packages (tests/pg.py starts a server of its own).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudserver.client import client_context
from tests import pg

ROOT = Path(__file__).resolve().parent.parent
TOOL = str(Path(sys.executable).parent / "cloudserver")
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
TICKS = os.sysconf("SC_CLK_TCK")
UVLOOP = {"use_uvloop": True}


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _machine_busy() -> float:
    """CPU-seconds the whole machine has been busy (every process, every core: not idle or I/O wait)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS


def _softhsm(folder: Path) -> dict[str, Any]:
    config = folder / "softhsm2.conf"
    (folder / "tokens").mkdir()
    config.write_text(
        f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(config)
    util = shutil.which("softhsm2-util") or "/usr/bin/softhsm2-util"
    subprocess.run(  # noqa: S603  # the system's tool, our arguments
        [util, "--init-token", "--free", "--label", "bench", "--so-pin", "12345678", "--pin", "87654321"],
        check=True, capture_output=True,
    )  # fmt: skip
    (folder / "pin").write_text("87654321")
    return {"type": "pkcs11", "library": SOFTHSM, "token_label": "bench", "pin_file": str(folder / "pin")}


@contextmanager
def cloud(folder: Path, keystore: str, database: str, replicas: int) -> Iterator[tuple[str, Path, list[int]]]:
    """(URL, pki folder, server pids) of a running cloud."""
    postgres = pg.start() if database == "postgres" or replicas > 1 else None
    first = folder / "replica1"
    init = [TOOL, "init", "--data", str(first), "--stations", "1", "--port", "0"]
    subprocess.run(init, check=True, capture_output=True)  # noqa: S603  # our own tool
    settings = json.loads((first / "settings.json").read_text())
    settings["limits"] = {"station_rate_per_s": 1e6, "station_burst": 1_000_000}
    if keystore == "pkcs11":
        settings["keystore"] = _softhsm(folder)
    if postgres is not None:
        settings["database"] = postgres.url(postgres.new_database())
    (first / "settings.json").write_text(json.dumps(settings))
    datas = [first]
    for n in range(2, replicas + 1):
        shutil.copytree(first, folder / f"replica{n}")
        datas.append(folder / f"replica{n}")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    servers = [subprocess.Popen([TOOL, "serve", "--data", str(d), "--port", "0"], **quiet) for d in datas]  # noqa: S603
    balancer = None
    try:
        for server, data in zip(servers, datas, strict=True):
            while not (data / "serve.json").exists():
                if server.poll() is not None:
                    raise RuntimeError(f"cloudserver serve --data {data} ended with {server.returncode}")
                time.sleep(0.05)
        urls = [json.loads((d / "serve.json").read_text())["url"] for d in datas]
        url = urls[0]
        if replicas > 1:
            port = pg.free_port()
            environment = {**os.environ, "NUPROV_LB_BIND": f"127.0.0.1:{port}",
                           "NUPROV_LB_STATS": str(folder / "haproxy.sock")}  # fmt: skip
            for n, replica in enumerate(urls, start=1):
                environment[f"NUPROV_REPLICA_{n}"] = replica.removeprefix("https://")
            config = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
            haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
            balancer = subprocess.Popen(  # noqa: S603  # the system's HAProxy on our configuration
                [haproxy, "-db", "-f", str(config)],
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            url = f"https://127.0.0.1:{port}"
            time.sleep(0.5)
        yield url, first / "pki", [s.pid for s in servers]
    finally:
        for process in [*servers, *([balancer] if balancer else [])]:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        if postgres is not None:
            postgres.stop()


def _session(url: str, context: ssl.SSLContext) -> aiohttp.ClientSession:
    """One station's kept-alive connection. aiohttp rather than the stations' httpx: on a machine
    the servers share with the load generator, httpx's 5 ms of CPU a call took more than the
    server's own."""
    connector = aiohttp.TCPConnector(ssl=context, limit=1)
    return aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=120))


async def load(url: str, pki: Path, clients: int, boards: int, first_uid: int) -> dict[str, Any]:
    station = client_context(pki / "station-01.crt", pki / "station-01.key", pki / "ca.crt")
    admin = client_context(pki / "admin.crt", pki / "admin.key", pki / "ca.crt")
    body = base64.b64encode(os.urandom(16 * 1024)).decode()
    async with _session(url, admin) as http:
        spec = {"pdid": 0xA1735440, "quantity": 10_000_000, "application": {"body": body, "version": "1.0.0"},
                "bootloader": {"body": body[:8000], "version": "1.0.0"}}  # fmt: skip
        async with http.post("/v1/jobs", json=spec) as made:
            job = (await made.json())["id"]
    latencies: list[float] = []
    slowest: dict[str, float] = {}
    calls = [0]

    async def call(http: aiohttp.ClientSession, path: str, payload: dict[str, Any], timed: bool) -> Any:
        started = time.perf_counter()
        async with http.post(path, json=payload) as answer:
            status, text = answer.status, await answer.text()
        took = time.perf_counter() - started
        kind = path.rsplit("/", 1)[-1]
        slowest[kind] = max(slowest.get(kind, 0.0), took)
        if timed:
            latencies.append(took)
        calls[0] += 1
        if status != 200:
            raise RuntimeError(f"{path}: {status} {text[:200]}")
        return json.loads(text)

    ready, go, started = [0], anyio.Event(), [0.0]

    async def client(index: int) -> None:
        async with _session(url, station) as http:
            async with http.get("/v1/jobs") as warm:  # the handshake and a warm server, before the clock
                await warm.read()
            ready[0] += 1
            if ready[0] == clients:
                started[0] = time.perf_counter()
                go.set()
            await go.wait()
            for n in range(boards):
                uid = f"{first_uid + index * boards + n:024X}"
                obj_id = (await call(http, "/v1/devices", {"uid": uid}, False))["obj_id"]
                device = f"/v1/jobs/{job}/devices/{uid}"
                for what in ("bootloader", "application-key", "application"):
                    await call(http, f"{device}/{what}", {"obj_id": obj_id}, True)
                await call(
                    http, f"{device}/results", {"obj_id": obj_id, "outcome": "PASS", "step": 13}, False
                )

    async with anyio.create_task_group() as group:
        for index in range(clients):
            group.start_soon(client, index)
    seconds = time.perf_counter() - started[0]
    latencies.sort()
    return {
        "calls": calls[0],
        "seconds": round(seconds, 3),
        "calls_per_s": round(calls[0] / seconds, 1),
        "provisioning_calls_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
        "slowest_ms": {kind: round(1000 * took, 1) for kind, took in sorted(slowest.items())},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument(
        "--boards", type=int, default=64, help="boards per concurrency level, shared by its clients"
    )
    parser.add_argument("--keystores", default="file,pkcs11")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--replicas", type=int, choices=(1, 2), default=1)
    args = parser.parse_args()
    result: dict[str, Any] = {"database": "postgres" if args.replicas > 1 else args.database,
                              "replicas": args.replicas, "keystores": {}}  # fmt: skip
    for keystore in args.keystores.split(","):
        levels: dict[str, Any] = {}
        with (
            tempfile.TemporaryDirectory(prefix="nuprov-load-") as folder,
            cloud(Path(folder), keystore, args.database, args.replicas) as (url, pki, pids),
        ):
            for offset, clients in enumerate(int(c) for c in args.clients.split(",")):
                before, mine = sum(_cpu(pid) for pid in pids), time.process_time()
                busy, wall = _machine_busy(), time.monotonic()
                share = max(1, args.boards // clients)
                level = anyio.run(load, url, pki, clients, share, (offset + 1) << 64, backend_options=UVLOOP)
                level["server_cpu_ms_per_call"] = round(
                    1000 * (sum(_cpu(p) for p in pids) - before) / level["calls"], 2
                )
                level["load_generator_cpu_ms_per_call"] = round(
                    1000 * (time.process_time() - mine) / level["calls"], 2
                )  # the clients run on the same machine: what they take, the servers cannot have
                level["machine_cores_busy"] = round((_machine_busy() - busy) / (time.monotonic() - wall), 2)
                levels[str(clients)] = level
        result["keystores"][keystore] = levels
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
