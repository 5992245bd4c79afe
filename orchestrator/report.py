"""Reports from the journal: per board (UID, station, outcome, failed step and reason, when it
started and finished in ISO 8601 UTC, the bootloader's and application's versions and SHA-256, and
per step its attempts and time) and line totals (yield, boards per hour, failures by step).
``orchestrator report``, the status API and the demo's report.json all come from here, so their
numbers agree."""

from __future__ import annotations

import csv
import datetime
import io
import time
from collections import Counter
from typing import Any

from rich.table import Table

from orchestrator.journal import Board, Journal
from orchestrator.steps import BY_NUMBER, STEPS


def iso(moment: float | None) -> str | None:
    """A journal time as ISO 8601 UTC (``2026-12-03T06:15:02.125Z``)."""
    if moment is None:
        return None
    text = datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def _history(journal: Journal, uid: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(per step: attempts, time, outcome; the images steps 2 and 11 brought: version, SHA-256)."""
    steps: dict[str, dict[str, Any]] = {}
    images: dict[str, Any] = {"bootloader": None, "application": None}
    starts: dict[int, float] = {}
    for event in journal.steps(uid):
        if event["step"] not in BY_NUMBER:
            continue  # a person's decision (retry, release), not a step
        if event["phase"] == "image":
            images["bootloader" if event["step"] == 2 else "application"] = event["outputs"]
            continue
        entry = steps.setdefault(str(event["step"]), {"attempts": 0, "duration_s": 0.0, "outcome": ""})
        if event["phase"] == "intent":
            entry["attempts"] += 1
            starts[event["step"]] = event["time"]
        elif event["phase"] == "result":
            spent = event["time"] - starts.get(event["step"], event["time"])
            entry["duration_s"] = round(entry["duration_s"] + spent, 3)
            entry["outcome"] = event["outcome"]
    return steps, images


def board_row(board: Board) -> dict[str, Any]:
    """A board as the reports and the dashboard's board table list it (outcome None: in progress)."""
    return {
        "uid": board.uid,
        "station": board.station,
        "job_id": board.job_id,
        "outcome": board.outcome,
        "failed_step": board.failed_step,
        "reason": board.reason,
        "started": iso(board.started),
        "finished": iso(board.finished),
        "duration_s": round((board.finished or 0) - (board.started or 0), 3) if board.finished else None,
    }


def _board(journal: Journal, board: Board) -> dict[str, Any]:
    steps, images = _history(journal, board.uid)
    return {**board_row(board), **images, "steps": steps}


MARKS = {"otp-result": "OTP written and read back", "lock-verified": "lock read back", "image": "image"}
"""The journal's proofs of an irreversible step, shown in a board's history."""


def board_history(journal: Journal, board: Board) -> dict[str, Any]:
    """A board's report entry and every attempt of every step in order: station, start, time,
    outcome, error, the proofs it left (OTP written, lock read back, an image's version) and a
    person's decisions (retry, release, with the reason)."""
    attempts: list[dict[str, Any]] = []
    open_: dict[int, dict[str, Any]] = {}
    for event in journal.steps(board.uid):
        number, phase, outputs = event["step"], event["phase"], event["outputs"]
        if phase == "operator":
            previous = outputs.get("previous") or {}
            attempts.append({"step": 0, "name": event["outcome"], "station": event.get("station"),
                             "started": iso(event["time"]), "outcome": previous.get("outcome"),
                             "error": outputs.get("reason", ""), "notes": []})  # fmt: skip
        elif phase == "intent" and number in BY_NUMBER:
            open_[number] = {
                "step": number, "name": BY_NUMBER[number].name, "attempt": event["attempt"],
                "station": event.get("station"), "started": iso(event["time"]), "at": event["time"],
                "duration_s": None, "outcome": None, "error": "", "notes": [],
            }  # fmt: skip
            attempts.append(open_[number])
        elif phase == "result" and number in open_:
            row = open_.pop(number)
            row["duration_s"] = round(event["time"] - row["at"], 3)
            row["outcome"], row["error"] = event["outcome"], outputs.get("error", "")
        elif phase in MARKS and number in open_:
            version = f" {outputs['version']}" if phase == "image" else ""
            open_[number]["notes"].append(MARKS[phase] + version)
    for row in attempts:
        row.pop("at", None)
    return {**_board(journal, board), "attempts": attempts}


def job_panel(
    job: dict[str, Any] | None, problem: str | None, totals: dict[str, Any], in_progress: int
) -> dict[str, Any]:
    """The dashboard's job panel: the cloud's quota (used, left), this line's boards in progress,
    the time left at the last hour's rate, and once no board can start or finish any more (the
    quota used and none in progress, or the job closed) the verdict, e.g. ``job done: 998 PASS,
    2 FAIL, 0 QUARANTINE``. ``job`` is the cloud's last answer (None before one: ``problem``)."""
    if job is None:
        return {"state": "unknown", "problem": problem, "verdict": None}
    quantity, used = int(job.get("quantity", 0)), int(job.get("used", 0))
    left, rate = max(quantity - used, 0), totals["boards_per_hour"]
    remaining = left + in_progress
    time_left = None if remaining and not rate else round(3600 * remaining / rate) if remaining else 0
    panel: dict[str, Any] = {
        "state": job.get("state"), "quantity": quantity, "used": used, "left": left,
        "in_progress": in_progress, "problem": problem, "verdict": None, "time_left_s": time_left,
    }  # fmt: skip
    closed = job.get("state") != "open"
    if closed or remaining == 0:
        counts = f"{totals['pass']} PASS, {totals['fail']} FAIL, {totals['quarantine']} QUARANTINE"
        panel["verdict"] = f"job {'closed' if closed else 'done'}: {counts}"
        panel["time_left_s"] = 0
    return panel


class LineTotals:
    """A job's totals (counts, yield, boards per hour, failures by step), counted once from the
    journal and then kept up to date as boards finish or go back to the line: the status API asks
    four times a second, and a job may hold 100 000 boards (bench/status_totals.py)."""

    def __init__(self, journal: Journal, job_id: str) -> None:
        self.journal, self.job_id = journal, job_id
        rows = journal.outcome_counts(job_id)
        self.counts: Counter[tuple[str, int | None]] = Counter({(o, step): n for o, step, n, _ in rows})
        self.first = min((started for *_, started in rows if started is not None), default=None)
        self._recent: tuple[float, int] = (float("-inf"), 0)

    def __repr__(self) -> str:
        return f"<LineTotals {self.job_id} {sum(self.counts.values())} boards>"

    def finished(self, board: Board) -> None:
        if board.job_id == self.job_id and board.outcome is not None:
            self.counts[board.outcome, board.failed_step] += 1
            if board.started is not None:
                self.first = board.started if self.first is None else min(self.first, board.started)
            self._recent = (float("-inf"), 0)

    def reopened(self, outcome: str, failed_step: int | None) -> None:
        self.counts[outcome, failed_step] -= 1
        self._recent = (float("-inf"), 0)

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        if now - self._recent[0] > 5:  # boards per hour moves with the clock: counted every 5 s
            self._recent = (now, self.journal.finished_since(self.job_id, now - 3600))
        outcomes: Counter[str] = Counter()
        failures: Counter[int] = Counter()
        for (outcome, step), count in self.counts.items():
            outcomes[outcome] += count
            if outcome != "PASS" and step in BY_NUMBER:
                failures[step] += count
        finished = sum(outcomes.values())
        first = self.first if self.first is not None else now
        window_h = max(min(now - first, 3600.0), 60.0) / 3600  # the last hour, or since the first board
        return {
            "pass": outcomes["PASS"],
            "fail": outcomes["FAIL"],
            "quarantine": outcomes["QUARANTINE"],
            "finished": finished,
            "yield": round(outcomes["PASS"] / finished, 4) if finished else None,
            "boards_per_hour": round(self._recent[1] / window_h, 1),
            "failures_by_step": [
                {"step": step, "name": BY_NUMBER[step].name, "count": count}
                for step, count in failures.most_common()
                if count > 0
            ],
        }


def station_table(title: str, stations: list[dict[str, Any]]) -> Table:
    """The stations as ``orchestrator status`` and the demo's live view print them (the API's
    station objects: GET /api/v1/stations/{name})."""
    table = Table(title=title)
    for column in ("station", "state", "board", "step", "try", "progress", "pass", "fail", "last error"):
        table.add_column(column)
    for s in stations:
        bar = "#" * int(s["progress"] * 10)
        table.add_row(
            s["name"], s["state"], s["uid"] or "-", f"{s['step']} {s['step_name']}" if s["step"] else "-",
            str(s["attempt"] or "-"), f"{bar:<10} {100 * s['progress']:3.0f}%", str(s["counts"]["PASS"]),
            str(s["counts"]["FAIL"] + s["counts"]["QUARANTINE"]), s["last_error"][:50],
        )  # fmt: skip
    return table


def report(
    journal: Journal, job_id: str | None = None, *, wall_s: float | None = None, since: float | None = None
) -> dict[str, Any]:
    """Every finished board of ``job_id`` (default: every job), ``since`` a time (finished then
    or later), by station and start."""
    finished = sorted(
        (b for b in journal.finished(job_id) if since is None or (b.finished or 0) >= since),
        key=lambda b: (b.station or "", b.started or 0),
    )
    summary: dict[str, Any] = {
        key.lower(): sum(board.outcome == key for board in finished) for key in ("PASS", "FAIL", "QUARANTINE")
    }
    if wall_s is not None:
        summary["wall_s"] = round(wall_s, 2)
    if since is not None:
        summary["since"] = iso(since)
    return {"boards": [_board(journal, board) for board in finished], "totals": summary}


def to_csv(result: dict[str, Any]) -> str:
    """One row per board; per step a column with its time in seconds and one with its attempts."""
    out = io.StringIO()
    names = ["uid", "station", "job_id", "outcome", "failed_step", "failed_step_name", "reason", "started",
             "finished", "duration_s"]  # fmt: skip
    images = [
        f"{image}_{field}" for image in ("bootloader", "application") for field in ("version", "sha256")
    ]
    step_columns = [f"step_{step.number}_{what}" for step in STEPS for what in ("s", "attempts")]
    writer = csv.DictWriter(out, fieldnames=[*names, *images, *step_columns], lineterminator="\n")
    writer.writeheader()
    for board in result["boards"]:
        row = {name: board.get(name) for name in names}
        failed = board["failed_step"]
        row["failed_step_name"] = BY_NUMBER[failed].name if failed in BY_NUMBER else ""
        for image in ("bootloader", "application"):
            for field in ("version", "sha256"):
                row[f"{image}_{field}"] = (board[image] or {}).get(field, "")
        for step in STEPS:
            entry = board["steps"].get(str(step.number))
            row[f"step_{step.number}_s"] = entry["duration_s"] if entry else ""
            row[f"step_{step.number}_attempts"] = entry["attempts"] if entry else ""
        writer.writerow(row)
    return out.getvalue()
