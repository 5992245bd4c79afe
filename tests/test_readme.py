"""README.md's real-line block, run as it is written in an empty folder: a cloud and a simulated
line in the background, then ``orchestrator init``, ``doctor`` and ``run``, until every board of
the job is PASS. Only the two ports are changed (to free ones, chosen now); each command runs in
bash with the console scripts of this environment first on PATH."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.pg import free_port

README = Path(__file__).parent.parent / "README.md"
BOARDS = 4


def block() -> list[str]:
    """The commands of the fenced block after the real-line marker, comments and blanks left out."""
    text = README.read_text().split("<!-- the real-line block", 1)[1].split("```sh\n", 1)[1]
    lines = text.split("\n```", 1)[0].splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def ready_file(command: str, folder: Path) -> Path:
    """What a background server writes once it serves: the cloud's DATA/serve.json, the
    simulator's --write-stations file."""
    words = shlex.split(command.rstrip("& "))
    if words[:2] == ["cloudserver", "serve"]:
        return folder / words[words.index("--data") + 1] / "serve.json"
    assert words[:2] == ["boardsim", "serve"], f"no readiness known for {command!r}"
    return folder / words[words.index("--write-stations") + 1]


def wait_for(path: Path, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"{process.args!r} exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def test_the_readme_real_line_commands_provision_every_board(tmp_path: Path) -> None:
    commands = block()
    assert [c.split()[:2] for c in commands[-3:]] == [
        ["orchestrator", "init"], ["orchestrator", "doctor"], ["orchestrator", "run"],
    ]  # fmt: skip
    cloud_port, api_port = free_port(), free_port()
    env = dict(os.environ, BOARDSIM_PROBES=str(tmp_path / "probes"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    background: list[subprocess.Popen[bytes]] = []
    log = (tmp_path / "background.log").open("wb")
    try:
        for written in commands:
            command = written.replace("8443", str(cloud_port)).replace("8470", str(api_port))
            if command.startswith("orchestrator run") or command.endswith("&"):  # a server, until SIGTERM
                server = ["/bin/bash", "-c", "exec " + command.rstrip("& ")]
                background.append(subprocess.Popen(server, cwd=tmp_path, env=env, stdout=log, stderr=log))
                if command.endswith("&"):
                    wait_for(ready_file(command, tmp_path), background[-1])
                continue
            assigned = re.fullmatch(r"(\w+)=\$\((.*)\)", command)
            done = subprocess.run(
                ["/bin/bash", "-c", assigned[2] if assigned else command],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            if assigned:
                env[assigned[1]] = done.stdout.strip()
        deadline = time.monotonic() + 600
        totals: dict[str, int] = {}
        while totals.get("pass", 0) < BOARDS:
            assert background[-1].poll() is None, "orchestrator run stopped; see background.log"
            assert time.monotonic() < deadline, f"not every board passed: {totals}"
            with contextlib.suppress(httpx.HTTPError):  # not listening yet
                totals = httpx.get(f"http://127.0.0.1:{api_port}/api/v1/status", timeout=10).json()["totals"]
            time.sleep(0.5)
        assert totals["fail"] == totals["quarantine"] == 0
        config = (tmp_path / "line" / "stations.yaml").read_text()
        assert str(tmp_path) not in config.split("stations:", 1)[0], "a path the folder wrote is not relative"
        for secret in ("api-token", "station-isp-key.pem", "pki/station.key"):
            assert (tmp_path / "line" / secret).stat().st_mode & 0o777 == 0o600
    finally:
        for process in reversed(background):
            process.send_signal(signal.SIGTERM)
        for process in reversed(background):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
