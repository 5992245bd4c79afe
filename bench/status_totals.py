"""Benchmark: what the line totals of the status API and dashboard cost the daemon's event loop as
a job grows. Prints one JSON object.

    python bench/status_totals.py [--boards 1000 10000 100000]

For each size a journal is filled with that many finished boards of one job (5 % failing at
various steps). Timed: ``LineTotals`` made from the journal (once, when the daemon starts), its
``as_dict`` for a status snapshot (what the API runs, four times a second, with the boards-per-hour
count from the journal's index), and, for comparison, loading every finished board and counting in
Python. Target: a snapshot's totals cost well under 1 ms whatever the size (``snapshot_ms`` flat
while ``load_all_ms`` grows with the job).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from orchestrator.journal import Board, Journal
from orchestrator.report import LineTotals


def fill(journal: Journal, count: int, now: float) -> None:
    journal._db.execute("BEGIN")  # one transaction: filling is not what is measured
    for i in range(count):
        fails = i % 20 == 0
        journal.save(
            Board(
                uid=f"{i:024X}", station=f"station-{i % 16:02d}", job_id="job-bench",
                outcome="FAIL" if fails else "PASS", failed_step=(3 + i % 9) if fails else None,
                started=now - count + i, finished=now - count + i + 5,
            )
        )  # fmt: skip
    journal._db.execute("COMMIT")


def best_of(runs: int, work: object) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return best * 1000


def measure(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        journal = Journal(Path(folder) / "journal.db")
        now = time.time()
        fill(journal, count, now)
        start_ms = best_of(3, lambda: LineTotals(journal, "job-bench"))
        line = LineTotals(journal, "job-bench")

        def snapshot() -> None:
            line._recent = (float("-inf"), 0)  # time the worst case: recount the last hour
            line.as_dict(now)

        snapshot_ms = best_of(20, snapshot)
        load_ms = best_of(3, lambda: Counter(b.outcome for b in journal.finished("job-bench")))
        assert line.as_dict(now)["finished"] == count  # noqa: S101  # measured on a right answer
        journal.close()
    return {
        "boards": count,
        "start_ms": round(start_ms, 2),
        "snapshot_ms": round(snapshot_ms, 3),
        "load_all_ms": round(load_ms, 2),
        "snapshot_vs_load_all": round(snapshot_ms / load_ms, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, nargs="+", default=[1000, 10_000, 100_000])
    args = parser.parse_args()
    results = [measure(count) for count in args.boards]
    print(json.dumps({"benchmark": "status_totals", "results": results}))


if __name__ == "__main__":
    main()
