"""Line totals kept up to date as boards finish and go back to the line equal a fresh count from
the journal; boards of another job never count."""

from __future__ import annotations

import random
import time
from pathlib import Path

from orchestrator.journal import Board, Journal
from orchestrator.report import LineTotals


def test_kept_totals_equal_a_fresh_count(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    rng = random.Random(3)
    now = time.time()
    for i in range(30):  # boards already finished when the daemon starts, some of another job
        outcome = rng.choice(["PASS", "PASS", "FAIL", "QUARANTINE"])
        journal.save(Board(uid=f"OLD{i}", job_id=rng.choice(["job-a", "job-b"]), outcome=outcome,
                           failed_step=None if outcome == "PASS" else rng.randint(1, 13),
                           started=now - 7200 + i, finished=now - 7200 + i + 60))  # fmt: skip
    kept = LineTotals(journal, "job-a")
    for i in range(40):  # the daemon finishes boards, and a person sends some back
        outcome = rng.choice(["PASS", "PASS", "PASS", "FAIL", "QUARANTINE"])
        board = Board(uid=f"NEW{i}", job_id="job-a", station="s", outcome=outcome,
                      failed_step=None if outcome == "PASS" else rng.randint(1, 13),
                      started=now - 100 + i, finished=now - 50 + i)  # fmt: skip
        journal.save(board)
        kept.finished(board)
        if outcome != "PASS" and rng.random() < 0.5:
            journal.reopen(board.uid, "s", "retry", "test")
            kept.reopened(outcome, board.failed_step)
    fresh = LineTotals(journal, "job-a")
    assert kept.as_dict(now) == fresh.as_dict(now)
    totals = fresh.as_dict(now)
    assert totals["finished"] == len(journal.finished("job-a"))
    assert totals["boards_per_hour"] == sum(b.finished > now - 3600 for b in journal.finished("job-a"))  # type: ignore[operator]
    assert sum(f["count"] for f in totals["failures_by_step"]) == totals["fail"] + totals["quarantine"]
    counts = [f["count"] for f in totals["failures_by_step"]]
    assert counts == sorted(counts, reverse=True)  # a Pareto: most frequent first
    journal.close()
