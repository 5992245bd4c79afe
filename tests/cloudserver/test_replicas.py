"""Two `cloudserver serve` replicas on one PostgreSQL behind HAProxy (deploy/haproxy/haproxy.cfg,
as committed): the races the database must settle, through the balancer, three times over."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from cloudserver.client import client_context
from tests import pg
from tests.cloudserver.test_cli import _serving, cloudserver
from tests.conftest import system_tool, venv_tool

CONFIG = Path(__file__).parent.parent.parent / "deploy" / "haproxy" / "haproxy.cfg"
BODY = base64.b64encode(os.urandom(4000)).decode()


@dataclass
class Fleet:
    url: str
    pki: Path
    stats: Path

    def context(self, who: str) -> object:
        return client_context(self.pki / f"{who}.crt", self.pki / f"{who}.key", self.pki / "ca.crt")

    def sessions(self) -> dict[str, int]:
        """HAProxy's count of connections each replica was given (``show stat``)."""
        with socket.socket(socket.AF_UNIX) as stats:
            stats.connect(str(self.stats))
            stats.sendall(b"show stat\n")
            text = b"".join(iter(lambda: stats.recv(65536), b"")).decode()
        rows = [line.split(",") for line in text.splitlines() if line and not line.startswith("#")]
        return {row[1]: int(row[7]) for row in rows if row[0] == "replicas" and row[1].startswith("replica")}


@pytest.fixture
def fleet(tmp_path: Path, postgres: pg.Postgres) -> Iterator[Fleet]:
    haproxy = system_tool("haproxy", "haproxy")
    database = postgres.new_database()
    first = tmp_path / "replica1"
    assert cloudserver("init", "--data", str(first), "--stations", "2", "--port", "0").returncode == 0
    settings = json.loads((first / "settings.json").read_text())
    settings["database"] = postgres.url(database)
    settings["limits"] = {"station_rate_per_s": 10_000, "station_burst": 10_000}
    (first / "settings.json").write_text(json.dumps(settings))
    second = tmp_path / "replica2"
    shutil.copytree(first, second)  # the same settings, certificates and master key
    replicas = [
        subprocess.Popen(
            [venv_tool("cloudserver"), "serve", "--data", str(data), "--port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for data in (first, second)  # started together on an empty database: one migrates
    ]
    balancer = None
    try:
        for replica, data in zip(replicas, (first, second), strict=True):
            _serving(replica, data)
        addresses = [
            json.loads((d / "serve.json").read_text())["url"].removeprefix("https://")
            for d in (first, second)
        ]
        port = pg.free_port()
        environment = {
            **os.environ,
            "NUPROV_LB_BIND": f"127.0.0.1:{port}",
            "NUPROV_REPLICA_1": addresses[0],
            "NUPROV_REPLICA_2": addresses[1],
            "NUPROV_LB_STATS": str(tmp_path / "haproxy.sock"),
        }
        checked = subprocess.run(
            [haproxy, "-c", "-f", str(CONFIG)], env=environment, capture_output=True, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        balancer = subprocess.Popen([haproxy, "-db", "-f", str(CONFIG)], env=environment,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        fleet = Fleet(f"https://127.0.0.1:{port}", first / "pki", tmp_path / "haproxy.sock")
        with httpx.Client(base_url=fleet.url, verify=fleet.context("admin")) as http:  # type: ignore[arg-type]
            for _ in range(600):  # until HAProxy listens (bounded)
                try:
                    http.get("/v1/jobs")
                    break
                except httpx.TransportError:
                    assert balancer.poll() is None
                    anyio.run(anyio.sleep, 0.05)
        yield fleet
    finally:
        for process in [*replicas, *([balancer] if balancer else [])]:
            process.send_signal(signal.SIGTERM)
        for process in [*replicas, *([balancer] if balancer else [])]:
            process.wait(timeout=60)


def uid(n: int) -> str:
    return f"{0xFEED0000 + n:08X}5555666677778888"


async def _job(fleet: Fleet, quantity: int) -> str:
    body = {"pdid": 0xA1735440, "quantity": quantity, "bootloader": {"body": BODY, "version": "1.0.0"},
            "application": {"body": BODY, "version": "1.0.0"}}  # fmt: skip
    async with httpx.AsyncClient(base_url=fleet.url, verify=fleet.context("admin")) as http:  # type: ignore[arg-type]
        answer = await http.post("/v1/jobs", json=body)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["id"])


async def _concurrently(fleet: Fleet, requests: list[tuple[str, dict[str, str]]]) -> list[httpx.Response]:
    """Each request on a connection of its own (so HAProxy spreads them), all at once."""
    answers: list[httpx.Response] = []
    ready, start = [0], anyio.Event()
    context = fleet.context("station-01")

    async def one(path: str, body: dict[str, str]) -> None:
        async with httpx.AsyncClient(base_url=fleet.url, verify=context, timeout=60) as http:  # type: ignore[arg-type]
            await http.get("/v1/jobs")  # connected, hands shaken: the requests then go at once
            ready[0] += 1
            if ready[0] == len(requests):
                start.set()
            await start.wait()
            answers.append(await http.post(path, json=body))

    async with anyio.create_task_group() as group:
        for path, body in requests:
            group.start_soon(one, path, body)
    return answers


async def _register(fleet: Fleet, uids: list[str]) -> dict[str, str]:
    answers = await _concurrently(fleet, [("/v1/devices", {"uid": u}) for u in uids])
    assert {a.status_code for a in answers} == {200}
    return {a.json()["uid"]: a.json()["obj_id"] for a in answers}


def test_races_through_haproxy_on_two_replicas_give_one_key_and_an_exact_quota(fleet: Fleet) -> None:
    async def scenario(round_: int) -> None:
        job = await _job(fleet, quantity=10)
        board = uid(100 * round_)
        obj_id = (await _register(fleet, [board]))[board]
        same = await _concurrently(
            fleet, [(f"/v1/jobs/{job}/devices/{board}/bootloader", {"obj_id": obj_id})] * 32
        )
        assert Counter(a.status_code for a in same) == {200: 32}, [
            a.text for a in same if a.status_code != 200
        ]
        assert len({a.json()["public_key"] for a in same}) == 1
        assert len({a.json()["image"] for a in same}) == 1
        boards = [uid(100 * round_ + n) for n in range(1, 31)]
        registered = await _register(fleet, boards)
        distinct = await _concurrently(
            fleet, [(f"/v1/jobs/{job}/devices/{b}/bootloader", {"obj_id": registered[b]}) for b in boards]
        )
        statuses = Counter(a.status_code for a in distinct)
        assert statuses == {200: 9, 409: 21}, statuses  # the first board took one of the 10
        assert all("quota" in a.json()["title"] for a in distinct if a.status_code == 409)
        async with httpx.AsyncClient(base_url=fleet.url, verify=fleet.context("admin")) as http:  # type: ignore[arg-type]
            assert (await http.get(f"/v1/jobs/{job}")).json()["used"] == 10

    for round_ in range(1, 4):
        anyio.run(scenario, round_)
    sessions = fleet.sessions()
    assert len(sessions) == 2, sessions
    assert min(sessions.values()) > 0, sessions  # both replicas served
