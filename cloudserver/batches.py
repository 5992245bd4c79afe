"""A thread that does an event loop's blocking work in batches.

Handing work to a thread and back costs 0.1-0.3 ms of CPU on the machines this runs on (two
futex wake-ups and the GIL changing hands, each way), more than an indexed SQLite read. Here
everything queued while the thread ran its last batch is its next batch: taken in one wake-up
and answered in one per event loop. Under load the hand-off is paid per batch, not per request;
alone, a request pays it once, as with ``anyio.to_thread`` (whose cancel scope and capacity
limiter per call cost as much again).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Queued:
    """One piece of work in a batch, and what came of it (set by the batch's runner)."""

    work: Any
    future: asyncio.Future[None]
    result: Any = None
    error: Exception | None = None


class BatchThread:
    """``run(batch)`` in one thread, for each batch of :class:`Queued`; ``run`` sets each one's
    ``result`` or ``error``."""

    def __init__(self, name: str, run: Callable[[list[Queued]], None]) -> None:
        self._run = run
        self._queue: queue.SimpleQueue[Queued | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def submit(self, work: Any) -> Any:
        """``work``'s result (or its error, raised), once its batch has run. Once queued, the work
        runs to its end: a caller cancelled meanwhile stops waiting and its result is dropped (a
        write is committed all the same, as if the caller had gone just after)."""
        queued = Queued(work, asyncio.get_running_loop().create_future())
        self._queue.put(queued)
        await queued.future
        if queued.error is not None:
            raise queued.error
        return queued.result

    def close(self) -> None:
        """Run what is queued, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (first := self._queue.get()) is not None:
            batch, more = [first], True
            while more:
                try:
                    queued = self._queue.get_nowait()
                except queue.Empty:
                    break
                more = queued is not None
                if queued is not None:
                    batch.append(queued)
            try:
                self._run(batch)
            except Exception as error:  # the runner itself failed: every piece with it
                for queued in batch:
                    queued.error = queued.error or error
            loops: dict[asyncio.AbstractEventLoop, list[Queued]] = {}
            for queued in batch:
                loops.setdefault(queued.future.get_loop(), []).append(queued)
            for loop, theirs in loops.items():
                with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
                    loop.call_soon_threadsafe(_settle, theirs)
            if not more:
                return


def _settle(batch: list[Queued]) -> None:
    for queued in batch:
        if not queued.future.done():
            queued.future.set_result(None)
