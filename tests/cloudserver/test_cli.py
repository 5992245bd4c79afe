"""The cloudserver command line: init, serve, job, device, audit, with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from cloudserver.db import HEAD
from tests.conftest import system_tool, venv_tool


def cloudserver(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_tool("cloudserver"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def _serving(server: subprocess.Popen[bytes], data: Path) -> None:
    """Wait until ``cloudserver serve`` has written DATA/serve.json (bounded, and it must not die)."""
    deadline = time.monotonic() + 60
    while not (data / "serve.json").exists():
        assert server.poll() is None
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_init_serve_job_device_audit(tmp_path: Path) -> None:
    data = tmp_path / "cloud"
    assert cloudserver("init", "--data", str(data), "--stations", "3").returncode == 0
    assert (data / "pki" / "station-03.crt").exists()
    assert oct((data / "master.key").stat().st_mode & 0o777) == "0o600"
    assert not list(data.rglob("ca.key"))  # read access to the data folder mints no certificate
    ca_key = tmp_path / "cloud-ca" / "ca.key"
    assert oct(ca_key.stat().st_mode & 0o777) == "0o600"
    assert cloudserver("init", "--data", str(data)).returncode == 2  # never overwrites
    issued = cloudserver(
        "cert", "issue", "--data", str(data), "--ca-key", str(ca_key), "--line", "B", "station-b1"
    )
    assert issued.returncode == 0, issued.stderr
    subject = subprocess.run(
        [system_tool("openssl", "openssl"), "x509", "-noout", "-subject", "-nameopt", "RFC2253",
         "-in", str(data / "pki" / "station-b1.crt")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert subject.strip() == "subject=CN=station-b1,L=B,OU=station,O=nuprov"
    upgraded = cloudserver("db", "upgrade", "--data", str(data))
    assert upgraded.stdout.strip() == f"database at revision {HEAD}", upgraded.stderr
    server = subprocess.Popen([venv_tool("cloudserver"), "serve", "--data", str(data), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        _serving(server, data)
        body = tmp_path / "body.bin"
        body.write_bytes(os.urandom(2000))
        created = cloudserver(
            "job", "create", "--data", str(data), "--pdid", "0xA1735440", "--bootloader", str(body),
            "--bootloader-version", "1.0.0", "--application", str(body), "--application-version", "1.2.3",
            "--quantity", "5",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        job = json.loads(created.stdout)
        assert job["quantity"] == 5
        listed = json.loads(cloudserver("job", "list", "--data", str(data)).stdout)
        assert [j["id"] for j in listed] == [job["id"]]
        closed = json.loads(cloudserver("job", "close", "--data", str(data), job["id"]).stdout)
        assert closed["state"] == "closed"
        missing = cloudserver("device", "show", "--data", str(data), "0" * 24)
        assert missing.returncode == 1
        assert "not registered" in missing.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    audit = cloudserver("audit", "--data", str(data))
    lines = audit.stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["job_create", "job_close", "refuse"]
    assert "CN=admin,OU=admin,O=nuprov" in lines[0]
    broken = cloudserver("serve", "--data", str(tmp_path / "nowhere"))
    assert broken.returncode == 2
    assert "settings.json" in broken.stderr


def test_two_thousand_idle_connections_do_not_keep_a_station_out(tmp_path: Path) -> None:
    """Started with systemd's default soft limit of 1024 open files, the server raises it; idle
    TCP connections that never handshake are dropped at the handshake deadline; the log holds a
    count, not a traceback per connection; a station's request is served all the while."""
    import resource  # noqa: PLC0415
    import socket  # noqa: PLC0415

    import httpx  # noqa: PLC0415

    from cloudserver.client import client_context  # noqa: PLC0415

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 8192:
        import pytest  # noqa: PLC0415

        pytest.skip(f"the hard limit on open files here is {hard}: too low for 2,000 connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))  # this test's own side
    data = tmp_path / "cloud"
    assert cloudserver("init", "--data", str(data), "--stations", "1", "--port", "0").returncode == 0
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [venv_tool("cloudserver"), "serve", "--data", str(data)], stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)),  # noqa: PLW1509
    )  # fmt: skip
    idle: list[socket.socket] = []
    try:
        _serving(server, data)
        url = json.loads((data / "serve.json").read_text())["url"]
        port = int(url.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2000)]
        pki = data / "pki"
        context = client_context(pki / "station-01.crt", pki / "station-01.key", pki / "ca.crt")
        with httpx.Client(base_url=url, verify=context, timeout=60) as http:
            assert http.get("/v1/jobs").status_code == 200
        idle[0].settimeout(120)
        assert idle[0].recv(1) == b""  # dropped by the server at its handshake deadline
    finally:
        for connection in idle:
            connection.close()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
    written = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in written
    assert f'"open_files": {hard}' in written


def test_serve_start_up_failures_are_one_line_naming_the_setting(tmp_path: Path) -> None:
    import socket  # noqa: PLC0415

    data = tmp_path / "cloud"
    assert cloudserver("init", "--data", str(data), "--port", "0").returncode == 0
    settings_file = data / "settings.json"
    original = settings_file.read_text()

    def serve() -> str:
        done = cloudserver("serve", "--data", str(data))
        assert done.returncode == 2, done.stdout + done.stderr
        (line,) = done.stderr.splitlines()  # one line, no traceback
        assert line.startswith(f"cloudserver: error: {settings_file}: ")
        return line

    (data / "master.key").rename(tmp_path / "master.key")
    assert "keystore.master_key_file" in serve()
    (tmp_path / "master.key").rename(data / "master.key")
    (data / "pki" / "server.key").rename(tmp_path / "server.key")
    assert "tls.key" in serve()
    (tmp_path / "server.key").rename(data / "pki" / "server.key")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = json.loads(original)
        settings["listen"]["port"] = taken.getsockname()[1]
        settings_file.write_text(json.dumps(settings))
        assert "listen: 127.0.0.1:" in serve()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # a port nobody listens on
        settings = json.loads(original)
        settings["database"] = (
            f"postgresql+asyncpg://nuprov:secret-pw@127.0.0.1:{closed.getsockname()[1]}/nuprov"
        )
        settings_file.write_text(json.dumps(settings))
        line = serve()
    assert "database: postgresql+asyncpg://nuprov:***@127.0.0.1" in line
    assert "secret-pw" not in line
