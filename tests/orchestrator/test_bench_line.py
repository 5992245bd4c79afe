"""bench/line.py on the smallest line, as a check that the performance record still runs and
reports what docs/performance.md reads from it (no timing is asserted: the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench" / "line.py"


def test_line_bench_reports_every_step_and_every_role() -> None:
    # A short folder of its own: the simulator's sockets live under it (AF_UNIX paths: 107 bytes).
    with tempfile.TemporaryDirectory(prefix="line-") as workdir:
        result = subprocess.run(
            [sys.executable, str(BENCH), "--stations", "2", "--boards", "1", "--app-size", "4096",
             "--idle-s", "1", "--workdir", workdir, "--bound-s", "900"],
            capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
    assert result.stdout, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert result.returncode == 0, report
    assert report["outcomes"] == {"PASS": 2}
    assert set(report["steps"]) == {str(n) for n in range(1, 14)}
    for number, step in report["steps"].items():
        assert step["p50_s"] is not None, number
        assert step["p50_s"] <= step["max_s"], number
        assert (step["floor_s"] is None) == (number in ("2", "7", "11")), number
    assert report["floor_board_s"] > report["steps"]["12"]["floor_s"] > 0
    for role in ("daemon", "workers", "simulator", "cloud"):
        assert report["cpu_s"][role] > 0, role
        assert report["peak_rss_mib"][role] >= report["peak_pss_mib"][role] > 0, role
    assert report["processes"]["workers"] >= 2  # a worker per probe, forked
    assert set(report["idle_core_per_station"]) == {"daemon", "workers", "simulator"}
