"""The daemon's probe worker (orchestrator/probe_worker.py) against a simulated probe: pyOCD in its
own process, flash progress reported back while it runs, and nRESET pulsed through the probe alone,
which still works once the debug port is locked."""

from __future__ import annotations

import os

import anyio
import pytest

from nuwire.profiles import M2354
from orchestrator.errors import ProbeFailure
from orchestrator.probe_worker import ProbeWorker
from tests.boardsim.conftest import UID, Rig


def test_flash_reports_progress_and_nreset_works_on_a_locked_board(rig: Rig) -> None:
    async def scenario() -> None:
        worker = ProbeWorker(rig.unique_id, "M2354")
        try:
            assert await worker.call("uid", limit_s=30) == list(UID)
            seen: list[float] = []
            image = os.urandom(20 * 1024)
            await worker.call("flash", 0x20000, image, limit_s=60, on_progress=seen.append)
            assert await worker.call("read_memory", 0x20000, len(image), limit_s=30) == image
            assert len(seen) >= 5
            assert seen == sorted(seen)
            assert seen[-1] == 1.0
            lock = M2354.debug_lock
            await worker.call("program_words", lock.config_address, [0xFFFFFFFF & ~lock.mask], limit_s=30)
            await worker.call("hardware_reset", limit_s=30)  # the lock takes effect at reset
            with pytest.raises(ProbeFailure, match=r"not detected|No ACK") as failure:
                await worker.call("uid", limit_s=30)
            assert failure.value.kind == "not_detected"
            resets = rig.board.resets
            await worker.call("hardware_reset", limit_s=30)
            assert rig.board.resets == resets + 1
            assert "nRESET" in str(rig.board.events[-1])
        finally:
            await worker.aclose()

    anyio.run(scenario)
