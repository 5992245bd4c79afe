"""``orchestrator demo``: a whole line on 127.0.0.1 - cloud server, simulated stations, daemon.

WORKDIR (replaced on every run): firmware/ (the unsigned bodies), cloud/ (the cloud's data),
boards/ (boardsim's state: one folder per board), logs/ (JSON lines of every process), journal.db,
stations.yaml, report.json.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cloudserver.client import CloudClient, client_context
from nuwire.pem import private_pem
from orchestrator import logs
from orchestrator.config import load
from orchestrator.daemon import Line
from orchestrator.journal import Journal
from orchestrator.report import report, station_table

console = Console()


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _wait_for(path: Path, process: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise SystemExit(f"orchestrator demo: {what} exited with {process.returncode}; see its log")
        if time.monotonic() > deadline:
            raise SystemExit(f"orchestrator demo: {what} did not start in {timeout} s")
        time.sleep(0.1)


def _stations_yaml(
    workdir: Path, url: str, job_id: str, simulated: dict[str, Any], *, uart_timeout: float, api_port: int = 0
) -> str:
    token = workdir / "api-token"
    token.write_text(secrets.token_urlsafe(24) + "\n")
    token.chmod(0o600)
    pki = "cloud/pki"
    config = {
        "line": "demo-line",
        "target_profile": "M2354",
        "cloud": {
            "url": url,
            "client_certificate": f"{pki}/station-01.crt",
            "client_key": f"{pki}/station-01.key",
            "ca": f"{pki}/ca.crt",
        },
        "job_id": job_id,
        "secureisp": {**simulated["secureisp"], "station_key": "station-isp-key.pem"},
        "defaults": {"uart": {"timeout_s": uart_timeout, "retry": {"attempts": 6, "backoff_s": 0.1}}},
        "api": {"listen": f"127.0.0.1:{api_port}", "token_file": "api-token"},
        "stations": simulated["stations"],
    }
    return "# Written by orchestrator demo: the simulated line.\n" + yaml.safe_dump(config, sort_keys=False)


def _view(line: Line, total: int) -> Table:
    finished = line.totals.as_dict()["finished"]
    stations = [line.station_status(name) for name in sorted(line.stations)]
    return station_table(f"{line.config.line}: {finished}/{total} boards done", stations)


def _prepare(workdir: Path, app_size: int) -> dict[str, bytes]:
    if workdir.exists():
        shutil.rmtree(workdir)
    for folder in ("firmware", "logs"):
        (workdir / folder).mkdir(parents=True)
    bodies = {"bootloader": os.urandom(8 * 1024), "application": os.urandom(app_size)}
    (workdir / "firmware" / "bootloader.bin").write_bytes(bodies["bootloader"])
    (workdir / "firmware" / "app.bin").write_bytes(bodies["application"])
    key = workdir / "station-isp-key.pem"
    key.write_bytes(private_pem(ec.generate_private_key(ec.SECP256R1())))
    key.chmod(0o600)
    return bodies


def _start(
    workdir: Path, stations: int, boards: int, baud: int, faults: Path | None, *, board_kind: str = "blank"
) -> list[subprocess.Popen[bytes]]:
    """cloudserver and boardsim in their own processes, on 127.0.0.1, logging into WORKDIR/logs."""
    env = dict(os.environ)
    cloud_dir, boards_dir, logs_dir = workdir / "cloud", workdir / "boards", workdir / "logs"
    init = [_tool("cloudserver"), "init", "--data", str(cloud_dir), "--stations", "1", "--port", "0"]
    subprocess.run(init, check=True, capture_output=True)  # noqa: S603  # the project's own console script
    simulator = [
        _tool("boardsim"), "serve", "--stations", str(stations), "--state-dir", str(boards_dir),
        "--boards-per-station", str(boards), "--baud", str(baud), "--board-kind", board_kind,
        "--handling-delay", "0.2", "--idle-removal", "120", "--acknowledge-from", str(workdir / "api.json"),
        *(["--faults", str(faults)] if faults is not None else []),
    ]  # fmt: skip
    with (
        (logs_dir / "cloudserver.jsonl").open("wb") as cloud_log,
        (logs_dir / "boardsim.log").open("wb") as sim_log,
    ):
        cloud = [_tool("cloudserver"), "serve", "--data", str(cloud_dir)]
        processes = [
            subprocess.Popen(cloud, stdout=cloud_log, stderr=subprocess.STDOUT),  # noqa: S603  # our own script
            subprocess.Popen(simulator, env=env, stdout=sim_log, stderr=subprocess.STDOUT),  # noqa: S603  # our own
        ]
    _wait_for(cloud_dir / "serve.json", processes[0], "cloudserver serve")
    _wait_for(boards_dir / "serve.json", processes[1], "boardsim serve")
    return processes


async def _create_job(cloud_dir: Path, bodies: dict[str, bytes], quantity: int) -> tuple[str, str]:
    url = json.loads((cloud_dir / "serve.json").read_text())["url"]
    pki = cloud_dir / "pki"
    async with CloudClient(
        url, client_context(pki / "admin.crt", pki / "admin.key", pki / "ca.crt")
    ) as admin:
        job = await admin.create_job(
            pdid=0xA1735440,
            bootloader=bodies["bootloader"],
            bootloader_version="1.0.0",
            application=bodies["application"],
            application_version="1.0.0",
            quantity=quantity,
        )
    return url, str(job["id"])


async def _run_with_view(line: Line, total: int, when_done: Callable[[], None], hold: bool) -> None:
    async with anyio.create_task_group() as group:
        with Live(_view(line, total), console=console, refresh_per_second=4) as live:

            async def refresh() -> None:
                while True:
                    live.update(_view(line, total))
                    await anyio.sleep(0.25)

            async def announce() -> None:
                await line.serving.wait()
                url = line.api.url if line.api else ""
                console.print(f"dashboard: {url}/  (control token: {line.config.api.token_file})")

            group.start_soon(refresh)
            group.start_soon(announce)
            await line.run(until=total, when_done=when_done, hold=hold)
            live.update(_view(line, total))
            group.cancel_scope.cancel()


def _summary(result: dict[str, Any], workdir: Path) -> None:
    table = Table(title="demo summary")
    for column in ("uid", "station", "outcome", "failed step", "reason", "seconds"):
        table.add_column(column)
    for board in result["boards"]:
        reason = (board["reason"] or "")[:50]
        step = str(board["failed_step"] or "-")
        table.add_row(
            board["uid"], board["station"], board["outcome"], step, reason, str(board["duration_s"])
        )
    console.print(table)
    totals = result["totals"]
    console.print(
        f"PASS {totals['pass']}  FAIL {totals['fail']}  QUARANTINE {totals['quarantine']}"
        f"  in {totals['wall_s']} s; report: {workdir / 'report.json'}"
    )


def demo(
    *,
    stations: int,
    boards: int,
    workdir: Path,
    baud: int,
    app_size: int,
    faults: Path | None = None,
    quantity: int | None = None,
    api_port: int = 0,
    hold: bool = False,
) -> int:
    started = time.monotonic()
    bodies = _prepare(workdir, app_size)
    os.environ["BOARDSIM_PROBES"] = str((workdir / "probes").resolve())  # for boardsim and the probe workers
    total = min(stations * boards, quantity or stations * boards)  # a board past the quota never starts
    processes = _start(workdir, stations, boards, baud, faults)
    try:
        url, job_id = anyio.run(_create_job, workdir / "cloud", bodies, quantity or total)
        simulated = json.loads((workdir / "boards" / "serve.json").read_text())
        (workdir / "stations.yaml").write_text(
            _stations_yaml(workdir, url, job_id, simulated, uart_timeout=2.0, api_port=api_port)
        )
        config = load(workdir / "stations.yaml")
        logs.configure(workdir / "logs" / "orchestrator.jsonl", stdout=False)
        journal = Journal(workdir / "journal.db")
        result: dict[str, Any] = {}

        def write_report() -> None:
            result.update(report(journal, config.job_id, wall_s=time.monotonic() - started))
            (workdir / "report.json").write_text(json.dumps(result, indent=1))
            if hold:
                console.print(f"report: {workdir / 'report.json'}; the dashboard stays up until Ctrl-C")

        anyio.run(_run_with_view, Line(config, journal), total, write_report, hold)
        if not result:  # stopped before every board was done
            write_report()
        journal.close()
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    _summary(result, workdir)
    return 0 if result["totals"]["pass"] == total else 1
