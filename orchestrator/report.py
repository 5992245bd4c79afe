"""Reports from the journal: per board (UID, station, outcome, failed step and reason, durations) and
line totals (yield, boards per hour, failures by step). ``orchestrator report``, the status API and
the demo's report.json all come from here, so their numbers agree."""

from __future__ import annotations

import csv
import io
import time
from collections import Counter
from typing import Any

from orchestrator.journal import Board, Journal
from orchestrator.steps import BY_NUMBER, STEPS


def _steps(journal: Journal, uid: str) -> dict[str, dict[str, Any]]:
    steps: dict[str, dict[str, Any]] = {}
    starts: dict[int, float] = {}
    for event in journal.steps(uid):
        if event["step"] not in BY_NUMBER:
            continue  # a person's decision (retry, release), not a step
        entry = steps.setdefault(str(event["step"]), {"attempts": 0, "duration_s": 0.0, "outcome": ""})
        if event["phase"] == "intent":
            entry["attempts"] += 1
            starts[event["step"]] = event["time"]
        elif event["phase"] == "result":
            spent = event["time"] - starts.get(event["step"], event["time"])
            entry["duration_s"] = round(entry["duration_s"] + spent, 3)
            entry["outcome"] = event["outcome"]
    return steps


def _board(journal: Journal, board: Board) -> dict[str, Any]:
    return {
        "uid": board.uid,
        "station": board.station,
        "job_id": board.job_id,
        "outcome": board.outcome,
        "failed_step": board.failed_step,
        "reason": board.reason,
        "duration_s": round((board.finished or 0) - (board.started or 0), 3),
        "steps": _steps(journal, board.uid),
    }


def totals(boards: list[Board], *, now: float | None = None) -> dict[str, Any]:
    """Line totals of finished boards: counts, yield, boards per hour, failures by step."""
    now = time.time() if now is None else now
    outcomes = Counter(board.outcome for board in boards)
    finished = len(boards)
    recent = [b.finished for b in boards if b.finished is not None and b.finished > now - 3600]
    first = min((b.started or now for b in boards), default=now)
    window_h = max(min(now - first, 3600.0), 60.0) / 3600  # the last hour, or since the first board
    failures = Counter(b.failed_step for b in boards if b.outcome != "PASS" and b.failed_step is not None)
    return {
        "pass": outcomes["PASS"],
        "fail": outcomes["FAIL"],
        "quarantine": outcomes["QUARANTINE"],
        "finished": finished,
        "yield": round(outcomes["PASS"] / finished, 4) if finished else None,
        "boards_per_hour": round(len(recent) / window_h, 1),
        "failures_by_step": [
            {"step": step, "name": BY_NUMBER[step].name, "count": count}
            for step, count in failures.most_common()
            if step in BY_NUMBER
        ],
    }


def report(journal: Journal, job_id: str | None = None, *, wall_s: float | None = None) -> dict[str, Any]:
    finished = sorted(journal.finished(job_id), key=lambda b: (b.station or "", b.started or 0))
    line = totals(finished)
    summary: dict[str, Any] = {key: line[key] for key in ("pass", "fail", "quarantine")}
    if wall_s is not None:
        summary["wall_s"] = round(wall_s, 2)
    return {"boards": [_board(journal, board) for board in finished], "totals": summary}


def to_csv(result: dict[str, Any]) -> str:
    """One row per board; a column per step with its time in seconds."""
    out = io.StringIO()
    names = ["uid", "station", "job_id", "outcome", "failed_step", "failed_step_name", "reason", "duration_s"]
    step_columns = [f"step_{step.number}_s" for step in STEPS]
    writer = csv.DictWriter(out, fieldnames=[*names, *step_columns], lineterminator="\n")
    writer.writeheader()
    for board in result["boards"]:
        row = {name: board.get(name) for name in names}
        failed = board["failed_step"]
        row["failed_step_name"] = BY_NUMBER[failed].name if failed in BY_NUMBER else ""
        for step in STEPS:
            entry = board["steps"].get(str(step.number))
            row[f"step_{step.number}_s"] = entry["duration_s"] if entry else ""
        writer.writerow(row)
    return out.getvalue()
