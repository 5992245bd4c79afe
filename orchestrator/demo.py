"""``orchestrator demo``: a whole line on 127.0.0.1 - cloud server, simulated stations, daemon.

WORKDIR (replaced on every run): firmware/ (the unsigned bodies), cloud/ (the cloud's data),
boards/ (boardsim's state: one folder per board), logs/ (JSON lines of every process), journal.db,
stations.yaml, report.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
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


def _stations_yaml(workdir: Path, url: str, job_id: str, simulated: dict[str, Any], uart_timeout: float) -> str:
    keys = simulated["secureisp"]
    lines = [
        "# Written by orchestrator demo: the simulated line.",
        "line: demo-line",
        "target_profile: M2354",
        "cloud:",
        f"  url: {url}",
        "  client_certificate: cloud/pki/station-01.crt",
        "  client_key: cloud/pki/station-01.key",
        "  ca: cloud/pki/ca.crt",
        f"job_id: {job_id}",
        "secureisp:",
        f"  rom_public_key: {keys['rom_public_key']}",
        f"  bootloader_public_key: {keys['bootloader_public_key']}",
        "  station_key: station-isp-key.pem",
        "defaults:",
        "  uart:",
        f"    timeout_s: {uart_timeout}",
        "    retry: {attempts: 6, backoff_s: 0.1}",
        "stations:",
    ]
    for station in simulated["stations"]:
        lines += [
            f"  - name: {station['name']}",
            f"    probe: \"{station['probe']}\"",
            f"    usb_port: \"{station['usb_port']}\"",
            f"    uart: {station['uart']}",
            f"    baud: {station['baud']}",
        ]
    return "\n".join(lines) + "\n"


def _view(line: Line, total: int) -> Table:
    table = Table(title=f"{line.config.line}: {len(line.journal.finished())}/{total} boards done")
    for column in ("station", "state", "board", "step", "try", "progress", "pass", "fail", "last error"):
        table.add_column(column)
    for runner in line.runners:
        s = runner.status
        bar = "#" * int(s.progress * 20)
        table.add_row(runner.station.name, s.state, s.uid or "-", str(s.step or "-"), str(s.attempt or "-"),
                      f"{bar:<20}", str(s.counts["PASS"]), str(s.counts["FAIL"] + s.counts["QUARANTINE"]),
                      s.last_error[:40])  # fmt: skip
    return table


def report(journal: Journal, wall_s: float) -> dict[str, Any]:
    boards = []
    for board in sorted(journal.finished(), key=lambda b: (b.station or "", b.started or 0)):
        steps: dict[str, dict[str, Any]] = {}
        starts: dict[int, float] = {}
        for event in journal.steps(board.uid):
            entry = steps.setdefault(str(event["step"]), {"attempts": 0, "duration_s": 0.0, "outcome": ""})
            if event["phase"] == "intent":
                entry["attempts"] += 1
                starts[event["step"]] = event["time"]
            elif event["phase"] == "result":
                entry["duration_s"] = round(entry["duration_s"] + event["time"] - starts.get(event["step"], event["time"]), 3)
                entry["outcome"] = event["outcome"]
        boards.append({
            "uid": board.uid, "station": board.station, "outcome": board.outcome, "failed_step": board.failed_step,
            "reason": board.reason, "duration_s": round((board.finished or 0) - (board.started or 0), 3), "steps": steps,
        })  # fmt: skip
    totals = {"pass": sum(b["outcome"] == "PASS" for b in boards), "fail": sum(b["outcome"] == "FAIL" for b in boards),
              "quarantine": sum(b["outcome"] == "QUARANTINE" for b in boards), "wall_s": round(wall_s, 2)}  # fmt: skip
    return {"boards": boards, "totals": totals}


def demo(*, stations: int, boards: int, workdir: Path, baud: int, app_size: int) -> int:
    started = time.monotonic()
    if workdir.exists():
        shutil.rmtree(workdir)
    for folder in ("firmware", "logs"):
        (workdir / folder).mkdir(parents=True)
    (workdir / "firmware" / "bootloader.bin").write_bytes(os.urandom(8 * 1024))
    (workdir / "firmware" / "app.bin").write_bytes(os.urandom(app_size))
    key = workdir / "station-isp-key.pem"
    key.write_bytes(private_pem(ec.generate_private_key(ec.SECP256R1())))
    key.chmod(0o600)
    env = dict(os.environ, BOARDSIM_PROBES=str((workdir / "probes").resolve()))
    os.environ["BOARDSIM_PROBES"] = env["BOARDSIM_PROBES"]
    cloud_dir, boards_dir = workdir / "cloud", workdir / "boards"
    subprocess.run([_tool("cloudserver"), "init", "--data", str(cloud_dir), "--stations", "1", "--port", "0"],
                   check=True, capture_output=True)  # fmt: skip
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with (workdir / "logs" / "cloudserver.jsonl").open("wb") as cloud_log, (workdir / "logs" / "boardsim.log").open("wb") as sim_log:
            processes.append(subprocess.Popen([_tool("cloudserver"), "serve", "--data", str(cloud_dir)], stdout=cloud_log, stderr=subprocess.STDOUT))
            processes.append(subprocess.Popen(
                [_tool("boardsim"), "serve", "--stations", str(stations), "--state-dir", str(boards_dir),
                 "--boards-per-station", str(boards), "--baud", str(baud), "--handling-delay", "0.2", "--idle-removal", "120"],
                env=env, stdout=sim_log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        _wait_for(cloud_dir / "serve.json", processes[0], "cloudserver serve")
        _wait_for(boards_dir / "serve.json", processes[1], "boardsim serve")
        url = json.loads((cloud_dir / "serve.json").read_text())["url"]
        pki = cloud_dir / "pki"
        body = {"bootloader": (workdir / "firmware" / "bootloader.bin").read_bytes(), "application": (workdir / "firmware" / "app.bin").read_bytes()}

        async def create_job() -> str:
            async with CloudClient(url, client_context(pki / "admin.crt", pki / "admin.key", pki / "ca.crt")) as admin:
                job = await admin.create_job(pdid=0xA1735440, bootloader=body["bootloader"], bootloader_version="1.0.0",
                                             application=body["application"], application_version="1.0.0",
                                             quantity=stations * boards)  # fmt: skip
            return str(job["id"])

        job_id = anyio.run(create_job)
        simulated = json.loads((boards_dir / "serve.json").read_text())
        (workdir / "stations.yaml").write_text(_stations_yaml(workdir, url, job_id, simulated, uart_timeout=0.5))
        config = load(workdir / "stations.yaml")
        logs.configure(workdir / "logs" / "orchestrator.jsonl", stdout=False)
        journal = Journal(workdir / "journal.db")
        line = Line(config, journal)
        total = stations * boards

        async def run_with_view() -> None:
            async with anyio.create_task_group() as group:
                with Live(_view(line, total), console=console, refresh_per_second=4) as live:

                    async def refresh() -> None:
                        while True:
                            live.update(_view(line, total))
                            await anyio.sleep(0.25)

                    group.start_soon(refresh)
                    await line.run(until=total)
                    live.update(_view(line, total))
                    group.cancel_scope.cancel()

        anyio.run(run_with_view)
        result = report(journal, time.monotonic() - started)
        journal.close()
        (workdir / "report.json").write_text(json.dumps(result, indent=1))
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    summary = Table(title="demo summary")
    for column in ("uid", "station", "outcome", "failed step", "reason", "seconds"):
        summary.add_column(column)
    for board in result["boards"]:
        summary.add_row(board["uid"], board["station"], board["outcome"], str(board["failed_step"] or "-"),
                        (board["reason"] or "")[:50], str(board["duration_s"]))  # fmt: skip
    console.print(summary)
    totals = result["totals"]
    console.print(f"PASS {totals['pass']}  FAIL {totals['fail']}  QUARANTINE {totals['quarantine']}  in {totals['wall_s']} s; "
                  f"report: {workdir / 'report.json'}")  # fmt: skip
    return 0 if totals["pass"] == total else 1
