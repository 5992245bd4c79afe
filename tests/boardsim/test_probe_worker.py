"""The daemon's probe worker (orchestrator/probe_worker.py) against a simulated probe: pyOCD in its
own process, flash progress reported back while it runs, and nRESET pulsed through the probe alone,
which still works once the debug port is locked, and the debug port's silence seen the same way."""

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
        seen: list[float] = []
        worker = ProbeWorker(rig.unique_id, "M2354", limit_s=60, on_progress=seen.append)
        try:
            assert await worker.debug_port_silent() is False  # an unlocked board answers
            assert await worker.uid() == list(UID)
            image = os.urandom(20 * 1024)
            await worker.flash(0x20000, image)
            assert await worker.read_memory(0x20000, len(image)) == image
            assert len(seen) >= 5
            assert seen == sorted(seen)
            assert seen[-1] == 1.0
            lock = M2354.debug_lock
            await worker.program_words(lock.config_address, [0xFFFFFFFF & ~lock.mask])
            assert await worker.read_words(lock.config_address, 1) == [0xFFFFFFFF & ~lock.mask]
            await worker.hardware_reset()  # the lock takes effect at reset
            with pytest.raises(ProbeFailure, match=r"not detected|No ACK") as failure:
                await worker.uid()
            assert failure.value.kind == "not_detected"
            assert await worker.debug_port_silent() is True  # the same, from the probe alone
            assert await worker.debug_port_silent() is True  # and again (one probe session kept)
            resets = rig.board.resets
            await worker.hardware_reset()
            assert rig.board.resets == resets + 1
            assert "nRESET" in str(rig.board.events[-1])
        finally:
            await worker.aclose()

    anyio.run(scenario)
