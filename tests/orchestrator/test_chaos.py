"""bench/chaos.py with a small N, as CI runs it: kills over a line with one fault per station,
then no invariant broken on any board (the full run's figures are in docs/orchestrator.md, Chaos)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench" / "chaos.py"


def test_a_small_chaos_run_breaks_no_invariant() -> None:
    # A short folder of its own: the simulator's sockets live under it (AF_UNIX paths: 107 bytes).
    with tempfile.TemporaryDirectory(prefix="chaos-") as workdir:
        result = subprocess.run(
            [sys.executable, str(BENCH), "--kills", "6", "--stations", "7", "--boards", "1",
             "--workdir", workdir, "--bound-s", "1200"],
            capture_output=True, text=True, timeout=2400, check=False,
        )  # fmt: skip
    assert result.stdout, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["violations"] == [], report
    assert result.returncode == 0, result.stderr[-2000:]
    kills = sum(report["rounds"].get("kill-daemon", {}).values())
    assert 1 <= kills <= 6  # fewer only when every board was done first
    assert report["outcomes"].get("none", 0) == 0  # every board ended
    for kind in ("foreign-key", "half", "objid"):
        assert report[kind]["outcomes"] == {"QUARANTINE": 2}, report[kind]
