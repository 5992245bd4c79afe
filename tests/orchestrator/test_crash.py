"""Crash and resume: SIGKILL the daemon again and again while boards are in flight, restart it on
the same journal; every board still ends PASS, no OTP word is programmed twice, and the cloud made
each key once."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import venv_tool
from tests.orchestrator.harness import count_boards, simulated_line

STATIONS, BOARDS = 2, 2


def finished(journal: Path) -> int:
    return count_boards(journal, "outcome IN ('PASS','FAIL','QUARANTINE')")


def test_sigkill_at_many_points_then_resume(tmp_path: Path) -> None:
    workdir = tmp_path / "line"
    journal = workdir / "journal.db"
    rng = random.Random(7)
    kills = 0
    line = simulated_line(workdir, stations=STATIONS, boards=BOARDS, baud=460_800, app_size=12_000,
                          quantity=STATIONS * BOARDS)  # fmt: skip
    with line as simulated:
        deadline = time.monotonic() + 1200  # a bound, not a timing: a loaded machine is slow
        while finished(journal) < STATIONS * BOARDS:
            assert time.monotonic() < deadline, "the line did not finish after restarts"
            mark = last_id(journal)
            daemon = simulated.daemon()
            if kills < 12:
                if kills % 2:  # at a random time: inside steps, between them, before any
                    time.sleep(rng.uniform(1.0, 3.5))
                else:  # as soon as a step has begun (however slow the machine): inside it
                    while not in_step(journal, mark) and finished(journal) < STATIONS * BOARDS:
                        assert time.monotonic() < deadline, "no step began"
                        time.sleep(0.005)
                daemon.send_signal(signal.SIGKILL)
                daemon.wait()
                kills += 1
                continue
            while finished(journal) < STATIONS * BOARDS and time.monotonic() < deadline:
                time.sleep(0.5)
            simulated.serving(daemon)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0
    assert kills >= 1
    with sqlite3.connect(journal) as db:
        outcomes = [row[0] for row in db.execute("SELECT outcome FROM boards")]
        intents = db.execute("SELECT COUNT(*) FROM steps WHERE phase = 'intent'").fetchone()[0]
        results = db.execute("SELECT COUNT(*) FROM steps WHERE phase = 'result'").fetchone()[0]
    assert outcomes == ["PASS"] * (STATIONS * BOARDS)
    assert intents > results  # some kills landed inside a step, between its intent and its result
    for state_file in (workdir / "boards").glob("53494D*/state.json"):
        state = json.loads(state_file.read_text())
        assert state["booted"] == "application"
        assert state["otp_program_counts"][:24] == [1] * 24, state["uid"]
        assert not any(state["otp_program_counts"][24:])
    audit = subprocess.run([venv_tool("cloudserver"), "audit", "--data", str(workdir / "cloud"), "--json"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    made = [json.loads(line) for line in audit.stdout.splitlines() if '"key_create"' in line]
    assert len(made) == 2 * STATIONS * BOARDS  # one bootloader and one application key per board, never more


def latest(journal: Path) -> tuple[int, str] | None:
    if not journal.exists():
        return None
    try:
        with sqlite3.connect(journal) as db:
            row = db.execute("SELECT step, phase FROM steps ORDER BY id DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else (int(row[0]), str(row[1]))


def last_id(journal: Path) -> int:
    if not journal.exists():
        return 0
    try:
        with sqlite3.connect(journal) as db:
            return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM steps").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def in_step(journal: Path, after: int) -> bool:
    """Whether the journal's latest row, written after row ``after``, is a step's intent."""
    try:
        with sqlite3.connect(journal) as db:
            row = db.execute("SELECT id, phase FROM steps ORDER BY id DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:
        return False
    return row is not None and row[0] > after and row[1] == "intent"


def written(journal: Path, target: tuple[int, str], after: int) -> bool:
    try:
        with sqlite3.connect(journal) as db:
            row = db.execute(
                "SELECT 1 FROM steps WHERE id > ? AND step = ? AND phase = ?", (after, *target)
            ).fetchone()
    except sqlite3.OperationalError:
        return False
    return row is not None


def booted(workdir: Path) -> str | None:
    for state_file in (workdir / "boards").glob("53494D*/state.json"):
        try:
            return str(json.loads(state_file.read_text())["booted"])
        except (OSError, ValueError):
            return None  # being replaced right now
    return None


def boards_status(workdir: Path) -> dict[str, Any]:
    command = [venv_tool("boardsim"), "ctl", "--state-dir", str(workdir / "boards"), '{"op": "status"}']
    answer = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    stations: dict[str, Any] = answer["stations"]
    return stations


def test_sigkill_inside_every_step_then_resume(tmp_path: Path) -> None:
    """Kill the daemon as soon as the journal shows each step's intent (inside the step), and right
    after each OTP intent (between the intent and the write's result); resume every time."""
    workdir = tmp_path / "line"
    journal = workdir / "journal.db"
    targets = [(n, "intent") for n in range(1, 14)]
    targets[3:3] = [(3, "otp-intent")]
    targets[9:9] = [(8, "otp-intent")]
    hit: list[tuple[int, str]] = []
    booted_at_kill = None
    with simulated_line(
        workdir, stations=1, boards=1, baud=115_200, app_size=20_000, quantity=1
    ) as simulated:
        deadline = time.monotonic() + 1200  # a bound, not a timing
        for target in targets:
            if target[0] == 13:
                # The answer to DISCONNECT is lost: the bootloader boots the application while the
                # daemon waits; killed then, the restarted daemon must find the board again.
                simulated.fault("station-01", answer_lost_at_command=0x8E)
            mark = last_id(journal)
            daemon = simulated.daemon()
            # Until the step's row is written (a step without an answer, like 9, may end before a
            # look at the journal sees it as the latest row).
            while not written(journal, target, mark) and finished(journal) < 1:
                assert time.monotonic() < deadline, f"no {target} row"
                time.sleep(0.005)
            if target[0] == 13:
                while booted(workdir) != "application":  # the board's own state file
                    assert time.monotonic() < deadline, "the board never booted its application"
                    time.sleep(0.005)
                booted_at_kill = "application"
            daemon.send_signal(signal.SIGKILL)
            daemon.wait()
            if latest(journal) == target:
                hit.append(target)
            if finished(journal):
                break
        daemon = simulated.daemon()
        while finished(journal) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        simulated.serving(daemon)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    assert len(hit) >= 9, hit  # the kill landed right after most intents (fast cloud steps may finish first)
    assert (3, "otp-intent") in hit
    assert (8, "otp-intent") in hit
    assert (13, "intent") in hit, hit
    assert booted_at_kill == "application"  # killed inside step 13 with the application already running
    with sqlite3.connect(journal) as db:
        assert [row[0] for row in db.execute("SELECT outcome FROM boards")] == ["PASS"]
    (state_file,) = (workdir / "boards").glob("53494D*/state.json")
    state = json.loads(state_file.read_text())
    assert state["booted"] == "application"
    assert state["otp_program_counts"][:24] == [1] * 24
    assert not any(state["otp_program_counts"][24:])


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (the probe workers are the fork server's children)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    found, todo = set(), [pid]
    while todo:
        above = todo.pop()
        below = {child for child, parent in parents.items() if parent == above}
        found |= below
        todo.extend(below)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_probe_workers_die_with_a_killed_daemon(tmp_path: Path) -> None:
    """SIGKILL of the daemon leaves no probe worker holding its probe (issue 10, finding 7)."""
    workdir = tmp_path / "line"
    with simulated_line(workdir, stations=2, boards=1, baud=460_800, app_size=4000, quantity=2) as line:
        daemon = line.daemon()
        deadline = time.monotonic() + 120
        # a worker per station, the fork server and the resource tracker
        while len(_descendants(daemon.pid)) < 4:
            assert time.monotonic() < deadline
            assert daemon.poll() is None
            time.sleep(0.05)
        workers = _descendants(daemon.pid)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, f"left running: {[p for p in workers if _alive(p)]}"
            time.sleep(0.05)


def test_a_second_daemon_on_the_same_journal_is_refused(tmp_path: Path) -> None:
    """Two daemons on one journal fight over the probes (issue 10, finding 8): the second exits 2."""
    workdir = tmp_path / "line"
    with simulated_line(workdir, stations=1, boards=1, baud=460_800, app_size=4000, quantity=1) as line:
        first = line.daemon()
        line.serving(first)
        second = subprocess.run(
            [venv_tool("orchestrator"), "run", "--config", str(line.config), "--journal", str(line.journal)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert second.returncode == 2
        assert f"in use by the daemon with pid {first.pid}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert first.poll() is None  # the first goes on
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0


def test_sigterm_parks_the_board_at_a_safe_point_and_the_next_start_resumes_it(tmp_path: Path) -> None:
    """SIGTERM (and SIGINT) start nothing new: the board in progress waits at its next safe point
    with its journal open, the daemon exits, and the next start finishes it (issue 10, finding 6)."""
    workdir = tmp_path / "line"
    with simulated_line(workdir, stations=1, boards=1, baud=460_800, app_size=4000, quantity=1) as line:
        daemon = line.daemon()
        line.until(lambda: written(line.journal, (2, "intent"), 0), "step 2", daemon)
        line.stop(daemon)
        assert finished(line.journal) == 0  # parked, not finished, not failed
        assert '"board.parked"' in line.log.read_text()
        daemon = line.daemon()
        line.until(lambda: finished(line.journal) == 1, "outcome", daemon)
        line.stop(daemon)
    with sqlite3.connect(line.journal) as db:
        assert [row[0] for row in db.execute("SELECT outcome FROM boards")] == ["PASS"]
    (state_file,) = (workdir / "boards").glob("53494D*/state.json")
    assert json.loads(state_file.read_text())["otp_program_counts"][:24] == [1] * 24
