"""A real PostgreSQL server for the tests, from Debian's postgresql package.

`initdb` and `pg_ctl` run as an unprivileged user (``nobody`` when the tests run as root, as CI
does: PostgreSQL refuses root) in a temporary folder of their own, listening on 127.0.0.1 at a port
chosen at run time, password (SCRAM) authentication. Each test gets a database of its own.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SUPERUSER = "nuprov"


def _bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        message = "PostgreSQL's initdb not found: install the Debian package postgresql (.ci/run does)"
        if os.environ.get("NUPROV_REQUIRE_SYSTEM_PACKAGES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Postgres:
    bin: Path
    folder: Path
    port: int
    password: str
    user: str | None
    databases: list[str] = field(default_factory=list)

    def url(self, database: str, role: str = SUPERUSER, password: str | None = None) -> str:
        return f"postgresql+asyncpg://{role}:{password or self.password}@127.0.0.1:{self.port}/{database}"

    def psql(self, database: str, sql: str, *options: str, role: str = SUPERUSER, password: str = "") -> str:
        """Run ``sql`` (or ``-f FILE`` in ``options``) with psql, as the superuser (someone behind
        the server's back) unless ``role`` says otherwise; its output."""
        command = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", role,
                   "-d", database, "-v", "ON_ERROR_STOP=1", "-At", *options]  # fmt: skip
        command += ["-c", sql] if sql else []
        done = subprocess.run(
            command, capture_output=True, text=True, check=False,
            env={**os.environ, "PGPASSWORD": password or self.password},
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"psql: {done.stderr.strip()}")
        return done.stdout

    def new_database(self) -> str:
        name = f"t_{secrets.token_hex(6)}"
        self.psql("postgres", f"CREATE DATABASE {name}")
        self.databases.append(name)
        return name

    def _run(self, *command: str) -> None:
        subprocess.run(command, check=True, capture_output=True, user=self.user, cwd=self.folder)

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "stop", "-D", str(self.folder / "data"), "-m", "fast", "-w")
        shutil.rmtree(self.folder, ignore_errors=True)


def start() -> Postgres:
    """initdb a new cluster and start it; the caller stops it."""
    binaries = _bin()
    user = "nobody" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="nuprov-pg-"))
    password = secrets.token_hex(16)
    (folder / "pw").write_text(password)
    if user is not None:
        shutil.chown(folder, user)
        shutil.chown(folder / "pw", user)
    server = Postgres(binaries, folder, 0, password, user)
    server._run(
        str(binaries / "initdb"), "-D", str(folder / "data"), "-U", SUPERUSER, "--pwfile", str(folder / "pw"),
        "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-sync",
    )  # fmt: skip
    for _ in range(5):  # a port taken between the choice and the start: choose again
        server.port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {folder} -c max_connections=300"
        try:
            server._run(
                str(binaries / "pg_ctl"), "start", "-D", str(folder / "data"), "-w", "-t", "120",
                "-l", str(folder / "log"), "-o", options,
            )  # fmt: skip
            return server
        except subprocess.CalledProcessError:
            continue
    raise RuntimeError(f"PostgreSQL did not start: {(folder / 'log').read_text()[-2000:]}")
