"""The line's journal: SQLite (WAL, synchronous=FULL) on the line PC.

One row per board (its identity, the public keys and digests it was given, its outcome) and one row
per step event: ``intent`` before a step starts and ``result`` when it ends, with its outputs. Never
a private key or a session key: the columns hold public keys, digests, OBJ_IDs and reasons only.
After a crash, a step with an intent and no result is settled by reading the board back.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import JournalFailure

SCHEMA = """
CREATE TABLE IF NOT EXISTS boards (
    uid TEXT PRIMARY KEY, obj_id TEXT, station TEXT, job_id TEXT,
    bootloader_key TEXT, application_key TEXT,
    outcome TEXT, failed_step INTEGER, reason TEXT,
    started REAL, finished REAL, reported REAL, report_refused TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL, station TEXT, step INTEGER NOT NULL,
    phase TEXT NOT NULL, attempt INTEGER, outcome TEXT, outputs TEXT, time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS steps_uid ON steps (uid, step);
CREATE INDEX IF NOT EXISTS boards_job ON boards (job_id, outcome, finished);
"""
FINAL = ("PASS", "FAIL", "QUARANTINE")


@dataclass
class Board:
    uid: str
    obj_id: str | None = None
    station: str | None = None
    job_id: str | None = None
    bootloader_key: str | None = None
    application_key: str | None = None
    outcome: str | None = None
    failed_step: int | None = None
    reason: str | None = None
    started: float | None = None
    finished: float | None = None
    reported: float | None = None  # when the cloud took the result (results wait here until then)
    report_refused: str | None = None  # the cloud's answer when it refused the result for good


class JournalBusy(OSError):
    """Another daemon holds the journal: two daemons on one journal fight over the same boards."""


class Journal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # A stalled disk blocks the event loop here; past the watchdog, systemd restarts the daemon.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(boards)")}
        if "reported" not in columns:  # a journal written before results were kept for the cloud
            self._db.execute("ALTER TABLE boards ADD COLUMN reported REAL")
        if "report_refused" not in columns:  # before refused results were kept apart
            self._db.execute("ALTER TABLE boards ADD COLUMN report_refused TEXT")
        self._lock = threading.Lock()
        self._claim: int | None = None
        self.failure: str | None = None
        """Why the last write failed, until one succeeds."""

    def __repr__(self) -> str:
        return f"<Journal {self.path}>"

    def claim(self) -> None:
        """Hold the journal for this process alone (an exclusive lock on ``<journal>.lock``, which
        names the holder's pid), until the process ends. JournalBusy names the daemon holding it."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise JournalBusy(f"{self.path} is in use by the daemon with pid {holder}") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self._claim = descriptor  # kept open: the lock lasts as long as the process

    def close(self) -> None:
        self._db.close()
        if self._claim is not None:
            os.close(self._claim)
            self._claim = None

    def board(self, uid: str) -> Board | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM boards WHERE uid = ?", (uid,)).fetchone()
        return None if row is None else Board(*row)

    def save(self, board: Board) -> None:
        values = vars(board)
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        statement = f"INSERT OR REPLACE INTO boards ({columns}) VALUES ({marks})"  # noqa: S608  # our field names
        self._write(statement, tuple(values.values()))

    def _write(self, statement: str, params: tuple[Any, ...]) -> None:
        """One committed write (autocommit, synchronous=FULL: on disk when it returns), or a
        JournalFailure naming the journal and the cause."""
        with self._lock:
            try:
                self._db.execute(statement, params)
            except sqlite3.Error as error:
                self.failure = f"{self.path}: {error}"
                raise JournalFailure(f"the journal cannot be written: {self.failure}") from error
            self.failure = None

    def check(self) -> str | None:
        """After a failed write, whether the journal takes writes again: None when it does, else
        why not. Free while no write has failed. The test is a real row, as large as a step's (a
        ``journal-check`` row of no board: when the journal came back)."""
        if self.failure is None:
            return None
        try:
            self.event("", "", 0, "journal-check", attempt=0, outputs={"failed": self.failure})
        except JournalFailure as failure:
            return str(failure)
        return None

    def event(
        self,
        uid: str,
        station: str,
        step: int,
        phase: str,
        *,
        attempt: int = 1,
        outcome: str = "",
        outputs: dict[str, Any] | None = None,
    ) -> None:
        self._write(
            "INSERT INTO steps (uid, station, step, phase, attempt, outcome, outputs, time) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (uid, station, step, phase, attempt, outcome, json.dumps(outputs or {}), time.time()),
        )

    def seen(self, uid: str, phase: str) -> bool:
        """Whether the board's journal holds a row of ``phase`` (e.g. ``lock-verified``)."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM steps WHERE uid = ? AND phase = ? LIMIT 1", (uid, phase))
            return row.fetchone() is not None

    def open_intents(self, uid: str) -> list[int]:
        """Steps with an intent whose result was never written (a crash in between)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT step, phase FROM steps WHERE uid = ? ORDER BY id", (uid,)
            ).fetchall()
        pending: dict[int, bool] = {}
        for step, phase in rows:
            pending[step] = phase == "intent"
        return [step for step, open_ in pending.items() if open_]

    def finished(self, job_id: str | None = None) -> list[Board]:
        """Boards with a final outcome, of one job or of all."""
        query = "SELECT * FROM boards WHERE outcome IN ('PASS','FAIL','QUARANTINE')"
        with self._lock:
            if job_id is None:
                rows = self._db.execute(query).fetchall()
            else:
                rows = self._db.execute(f"{query} AND job_id = ?", (job_id,)).fetchall()
        return [Board(*row) for row in rows]

    def outcome_counts(self, job_id: str) -> list[tuple[str, int | None, int, float | None]]:
        """(outcome, failed_step, boards, earliest start) of a job's finished boards."""
        with self._lock:
            rows = self._db.execute(
                "SELECT outcome, failed_step, COUNT(*), MIN(started) FROM boards "
                "WHERE job_id = ? AND outcome IN ('PASS','FAIL','QUARANTINE') GROUP BY outcome, failed_step",
                (job_id,),
            ).fetchall()
        return [(outcome, step, count, first) for outcome, step, count, first in rows]

    def finished_since(self, job_id: str, since: float) -> int:
        """A job's boards finished after ``since`` (an index range, however long the job)."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM boards WHERE job_id = ? AND outcome IN ('PASS','FAIL','QUARANTINE') "
                "AND finished > ?",
                (job_id, since),
            ).fetchone()
        return int(row[0])

    def in_progress(self, job_id: str) -> int:
        """A job's boards started and not finished (in a fixture, parked, or taken out mid-way)."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM boards WHERE job_id = ? AND outcome IS NULL", (job_id,)
            ).fetchone()
        return int(row[0])

    def mark_reported(self, uid: str) -> None:
        self._write("UPDATE boards SET reported = ? WHERE uid = ?", (time.time(), uid))

    def refuse_report(self, uid: str, answer: str) -> None:
        """The cloud refused this board's result for good (a closed job, a board not this line's):
        kept with the cloud's answer, never sent again."""
        self._write("UPDATE boards SET report_refused = ? WHERE uid = ?", (answer, uid))

    def unreported(self, job_id: str, before: float, limit: int = 50) -> list[Board]:
        """Boards finished before ``before`` whose result the cloud has not taken (it was away),
        and has not refused."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM boards WHERE job_id = ? AND outcome IN ('PASS','FAIL','QUARANTINE') "
                "AND obj_id IS NOT NULL AND reported IS NULL AND report_refused IS NULL AND finished < ? "
                "ORDER BY finished LIMIT ?",
                (job_id, before, limit),
            ).fetchall()
        return [Board(*row) for row in rows]

    def last_finished(self, station: str) -> Board | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM boards WHERE station = ? AND outcome IS NOT NULL "
                "ORDER BY finished DESC LIMIT 1",
                (station,),
            ).fetchone()
        return None if row is None else Board(*row)

    def unfinished(self, station: str) -> list[Board]:
        """Boards this station started and never finished (a crash, a stop, a swap)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM boards WHERE station = ? AND outcome IS NULL", (station,)
            ).fetchall()
        return [Board(*row) for row in rows]

    def reopen(self, uid: str, station: str, action: str, reason: str) -> Board:
        """A person's decision on a finished board (retry a FAIL, release a QUARANTINE): the board
        goes back to the line, and the decision with its reason stays in the journal."""
        board = self.board(uid)
        if board is None:
            raise KeyError(uid)
        previous = {"outcome": board.outcome, "failed_step": board.failed_step, "reason": board.reason}
        board.outcome = board.failed_step = board.reason = board.finished = board.reported = None
        self.save(board)
        self.event(
            uid, station, 0, "operator", outcome=action, outputs={"reason": reason, "previous": previous}
        )
        return board

    def image(self, uid: str, station: str, step: int, version: str, sha256: str) -> None:
        """The signed image step 2 or 11 brought (its version and SHA-256), for the reports."""
        self.event(uid, station, step, "image", outputs={"version": version, "sha256": sha256})

    def steps(self, uid: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT step, phase, attempt, outcome, outputs, time, station FROM steps "
                "WHERE uid = ? ORDER BY id",
                (uid,),
            ).fetchall()
        return [
            {
                "step": s,
                "phase": p,
                "attempt": a,
                "outcome": o,
                "outputs": json.loads(out),
                "time": t,
                "station": at,
            }
            for s, p, a, o, out, t, at in rows
        ]

    def boards(
        self, job_id: str, *, search: str = "", outcome: str | None = None, limit: int = 100
    ) -> list[Board]:
        """A job's boards, the latest first: ``search`` a part of the UID (any case), ``outcome``
        one of FINAL or ``""`` for boards in progress (no outcome yet)."""
        query, params = "SELECT * FROM boards WHERE job_id = ?", [job_id]
        if search:
            escaped = search.upper().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query += " AND uid LIKE ? ESCAPE '\\'"
            params.append(f"%{escaped}%")
        if outcome is not None:
            query += " AND outcome = ?" if outcome else " AND outcome IS NULL"
            params += [outcome] if outcome else []
        query += " ORDER BY COALESCE(finished, started) DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*params, limit)).fetchall()
        return [Board(*row) for row in rows]
