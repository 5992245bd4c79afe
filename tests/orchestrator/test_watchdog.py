"""The daemon under systemd's notification protocol, as systemd runs it: NOTIFY_SOCKET is a datagram
socket this test reads. READY=1 comes once the stations run, WATCHDOG=1 every half period while the
event loop turns, and the pings stop while the loop is blocked (here: the journal's disk stalls,
because the test holds an exclusive lock on the journal, so the daemon's next journal write waits
on the event loop)."""

from __future__ import annotations

import itertools
import signal
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from orchestrator import systemd
from tests.orchestrator.harness import simulated_line

PERIOD_S = 0.6  # WatchdogSec: pings are due every 0.3 s


def receive(sock: socket.socket, seconds: float) -> list[tuple[float, str]]:
    messages, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            messages.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            break
    return messages


def count_steps(journal: Path | sqlite3.Connection) -> int:
    if isinstance(journal, Path):
        if not journal.exists():
            return 0
        with sqlite3.connect(journal) as db:
            try:
                return int(db.execute("SELECT COUNT(*) FROM steps").fetchone()[0])
            except sqlite3.OperationalError:  # the daemon has not made its tables yet
                return 0
    return int(journal.execute("SELECT COUNT(*) FROM steps").fetchone()[0])


def pings(messages: list[tuple[float, str]]) -> list[float]:
    return [at for at, text in messages if "WATCHDOG=1" in text.split("\n")]


def test_ready_watchdog_pings_and_silence_when_the_loop_blocks(tmp_path: Path) -> None:
    workdir = tmp_path / "line"
    with (
        simulated_line(workdir, stations=2, boards=6, baud=460_800, app_size=8_000, quantity=12) as line,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        address = tmp_path / "notify.sock"
        sock.bind(str(address))
        daemon = line.daemon({"NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": str(int(PERIOD_S * 1e6))})
        try:
            sock.settimeout(60)
            ready = sock.recv(4096).decode()  # the first message, once every station has started
            assert ready.startswith("READY=1\nSTATUS=2 stations"), ready
            line.until(lambda: count_steps(line.journal) > 0, "a step in the journal", daemon)  # boards run
            regular = pings(receive(sock, 3))
            assert len(regular) >= 6, regular  # about one every 0.3 s
            assert max(b - a for a, b in itertools.pairwise(regular)) < PERIOD_S

            # Stall the journal for 4 s while boards run: the daemon blocks at its next write, which
            # may come at once (no ping at all while the lock is held) or later in the 4 s.
            journal = sqlite3.connect(line.journal, isolation_level=None, timeout=30)
            before = count_steps(journal)
            journal.execute("BEGIN EXCLUSIVE")
            stalled = pings(receive(sock, 4))
            journal.execute("COMMIT")
            released = time.monotonic()
            after = pings(receive(sock, 3))
            written = count_steps(journal)
            journal.close()
            assert before > 0
            assert after, "pings did not come back once the journal could be written"
            gap, resumed = max((b - a, b) for a, b in itertools.pairwise([*regular, *stalled, *after]))
            assert gap > 2 * PERIOD_S, "pings went on while the loop was blocked"  # systemd would restart
            assert resumed >= released  # the silence lasted until the journal could be written
            assert written > before  # the blocked write went through afterwards
            daemon.send_signal(signal.SIGTERM)
            stopping, deadline = [], time.monotonic() + 60  # read on, as systemd does: a full queue drops
            while daemon.poll() is None and time.monotonic() < deadline:
                stopping += receive(sock, 0.5)
            stopping += receive(sock, 0.5)
            assert daemon.wait(timeout=1) == 0
            assert any("STOPPING=1" in text for _, text in stopping)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()


def test_notify_never_blocks_on_a_reader_that_stopped_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full notification queue drops the message; it never stops the daemon's event loop."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify.sock"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
        sent = [systemd.notify("WATCHDOG=1") for _ in range(200)]  # the queue holds far fewer
        assert sent[0]
        assert not sent[-1]
        assert sock.recv(64) == b"WATCHDOG=1"
