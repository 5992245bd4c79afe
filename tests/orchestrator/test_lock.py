"""The debug lock is proven, never assumed (issue 10, findings 1 and 3): a lost SWD link is never
taken for a lock, a flaky SWD read never makes a board QUARANTINE, and no board reaches PASS without
a lock seen on it (CONFIG0 read back with the lock, the debug port silent, SecureISP's READ_CONFIG)."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx

from nuwire.profiles import M2354
from tests.orchestrator.harness import simulated_line
from tests.orchestrator.test_crash import finished, written
from tests.orchestrator.test_line import demo


def _board_state(workdir: Path) -> dict[str, object]:
    (state_file,) = (workdir / "boards").glob("53494D*/state.json")
    state: dict[str, object] = json.loads(state_file.read_text())
    return state


def _outcome(journal: Path) -> tuple[str, int | None, str | None]:
    with sqlite3.connect(journal) as db:
        (row,) = db.execute("SELECT outcome, failed_step, reason FROM boards").fetchall()
    return row[0], row[1], row[2]


def _logged(log: Path, event: str, after: int) -> bool:
    if not log.exists():
        return False
    with log.open() as lines:
        return any(f'"{event}"' in line for line in list(lines)[after:])


def _station(url: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{url}/api/v1/stations/station-01", timeout=30).json()
    return answer


def test_swd_lost_at_step_5_never_passes_unlocked(tmp_path: Path) -> None:
    workdir = tmp_path / "line"
    with simulated_line(workdir, stations=1, boards=1, baud=460_800, app_size=4000, quantity=1) as line:
        line.fault("station-01", swd_lost_at_reset=True)  # step 5's reset is the board's next one
        daemon = line.daemon()
        line.until(lambda: finished(line.journal) == 1, "outcome", daemon)
        line.stop(daemon)
    outcome, step, reason = _outcome(line.journal)
    state = _board_state(workdir)
    assert (outcome, step) == ("FAIL", 5), reason
    assert state["debug_locked"] is False
    assert state["booted"] != "application"
    assert not any(state["otp_program_counts"][16:24])  # type: ignore[index]  # step 8 never ran


def test_swd_lost_on_resume_after_step_4_waits_then_locks(tmp_path: Path) -> None:
    workdir = tmp_path / "line"
    with simulated_line(workdir, stations=1, boards=1, baud=460_800, app_size=4000, quantity=1) as line:
        daemon = line.daemon()
        line.until(lambda: written(line.journal, (5, "intent"), 0), "step 5", daemon)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        line.fault("station-01", swd_disconnected=True)
        lines = len(line.log.read_text().splitlines()) if line.log.exists() else 0
        daemon = line.daemon()
        # a silent debug port, CONFIG0 unlocked: not taken for a locked board, nothing goes on
        line.until(lambda: _logged(line.log, "lock.not_seen", lines), "lock.not_seen", daemon)
        assert finished(line.journal) == 0
        line.serving(daemon)  # and the tile says why the board waits
        url = json.loads((workdir / "api.json").read_text())["url"]
        line.until(lambda: "check SWD" in _station(url)["last_error"], "blocked: check SWD", daemon)
        assert _station(url)["state"] == "blocked"
        line.fault("station-01", swd_disconnected=False)
        line.until(lambda: finished(line.journal) == 1, "outcome", daemon)
        line.stop(daemon)
    outcome, _, reason = _outcome(line.journal)
    state = _board_state(workdir)
    assert outcome == "PASS", reason
    assert state["debug_locked"] is True
    assert state["booted"] == "application"
    with sqlite3.connect(line.journal) as db:
        verified = db.execute("SELECT outputs FROM steps WHERE phase = 'lock-verified'").fetchall()
    assert verified
    assert M2354.debug_lock.is_locked(int(json.loads(verified[-1][0])["config0"], 16))


def test_swd_faults_never_quarantine_a_blank_board(tmp_path: Path) -> None:
    faults = tmp_path / "faults.yaml"
    faults.write_text("".join(f"station-0{n}: {{swd_fault_rate: 0.02}}\n" for n in range(1, 6)))
    result, report = demo(
        tmp_path / "run", "--stations", "5", "--boards", "2", "--app-size", "2000", "--faults", str(faults)
    )
    boards = report["boards"]
    assert isinstance(boards, list)
    assert len(boards) == 10
    assert [b["outcome"] for b in boards] == ["PASS"] * 10, [b.get("reason") for b in boards]
    assert result.returncode == 0


def test_a_lock_check_whose_answer_is_lost_resets_and_asks_again(tmp_path: Path) -> None:
    """The first READ_CONFIG answer of the lock check is lost: SecureISP stays in that session (and
    answers a new one under its old key) until nRESET, so the station resets before it asks again."""
    workdir = tmp_path / "line"
    with simulated_line(workdir, stations=1, boards=1, baud=460_800, app_size=4000, quantity=1) as line:
        line.fault("station-01", answer_lost_at_command=0x82)  # READ_CONFIG: used by lock checks only
        daemon = line.daemon()
        line.until(lambda: finished(line.journal) == 1, "outcome", daemon)
        line.stop(daemon)
    outcome, _, reason = _outcome(line.journal)
    assert outcome == "PASS", reason
    with sqlite3.connect(line.journal) as db:
        attempts = db.execute("SELECT MAX(attempt) FROM steps WHERE step = 6").fetchone()[0]
    assert attempts == 1  # proven within the step's first attempt
    events = _board_state(workdir)["events"]
    assert isinstance(events, list)
    assert sum(e.get("cause") == "nRESET" for e in events) >= 2  # the lock's own reset, then the check's
