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


def test_report_has_utc_times_images_and_attempts_per_step_and_takes_since(
    tmp_path: Path, capsys: object
) -> None:
    import csv  # noqa: PLC0415
    import io  # noqa: PLC0415
    import json  # noqa: PLC0415

    from orchestrator.cli import main  # noqa: PLC0415

    path = tmp_path / "journal.db"
    journal = Journal(path)
    day = 1_796_000_000.0  # 2026-11-30T00:53:20Z
    for n, (start, outcome) in enumerate([(day, "PASS"), (day + 7200, "FAIL")]):
        uid = f"B{n}"
        journal.save(Board(uid=uid, job_id="job-a", station="s1", started=start))
        for attempt, phase, at in (
            (1, "intent", 1.0),
            (1, "result", 1.5),
            (2, "intent", 2.0),
            (2, "result", 2.25),
        ):
            journal._db.execute(
                "INSERT INTO steps (uid, station, step, phase, attempt, outcome, outputs, time)"
                " VALUES (?, ?, 4, ?, ?, ?, '{}', ?)",  # at chosen times
                (uid, "s1", phase, attempt, "ok" if attempt == 2 else "transfer", start + at),
            )
        journal.image(uid, "s1", 2, "1.0.0+0", "ab" * 32)
        journal.image(uid, "s1", 11, "2.1.0+7", "cd" * 32)
        failed = None if outcome == "PASS" else 12
        journal.save(Board(uid=uid, job_id="job-a", station="s1", outcome=outcome, failed_step=failed,
                           started=start, finished=start + 30))  # fmt: skip
    journal.close()
    assert main(["report", "--journal", str(path), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    first = report["boards"][0]
    assert first["started"] == "2026-11-30T00:53:20.000Z"
    assert first["finished"] == "2026-11-30T00:53:50.000Z"
    assert first["bootloader"] == {"version": "1.0.0+0", "sha256": "ab" * 32}
    assert first["application"] == {"version": "2.1.0+7", "sha256": "cd" * 32}
    assert first["steps"]["4"] == {"attempts": 2, "duration_s": 0.75, "outcome": "ok"}
    assert main(["report", "--journal", str(path), "--since", "2026-11-30T01:00Z"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))  # type: ignore[attr-defined]
    assert [r["uid"] for r in rows] == ["B1"]  # the one finished after 01:00 UTC
    assert rows[0]["step_4_attempts"] == "2"
    assert rows[0]["application_sha256"] == "cd" * 32
    assert rows[0]["finished"].endswith("Z")
    assert main(["report", "--journal", str(path), "--since", "yesterday"]) == 2
