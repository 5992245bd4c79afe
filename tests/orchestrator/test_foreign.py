"""Boards that come to the line carrying what this line did not write: another line's key in
OTP 0..7 (with or without its bootloader), or another OBJ_ID record. Each ends QUARANTINE at the
step that reads it, with nothing written and the debug port open (invariants 1 and 7): a key in
OTP at step 2, where the cloud refuses to make a key for a board that carries one it did not make
(so it costs no quota), an OBJ_ID record at step 1."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.orchestrator.harness import simulated_line
from tests.orchestrator.test_crash import finished


@pytest.mark.parametrize(("kind", "step"), [("foreign-key", 2), ("half", 2), ("objid", 1)])
def test_a_board_carrying_another_lines_values_is_quarantined_untouched(
    tmp_path: Path, kind: str, step: int
) -> None:
    workdir = tmp_path / "line"
    with simulated_line(
        workdir, stations=1, boards=1, baud=921_600, app_size=4000, quantity=1, kind=kind
    ) as line:
        daemon = line.daemon()
        line.until(lambda: finished(line.journal) == 1, "outcome", daemon)
        line.stop(daemon)
    with sqlite3.connect(line.journal) as db:
        ((outcome, failed_step, reason),) = db.execute("SELECT outcome, failed_step, reason FROM boards")
    assert (outcome, failed_step) == ("QUARANTINE", step), reason
    (state_file,) = (workdir / "boards").glob("53494D*/state.json")
    state = json.loads(state_file.read_text())
    assert not any(state["otp_program_counts"])
    assert state["debug_locked"] is False
