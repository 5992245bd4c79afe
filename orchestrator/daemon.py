"""The line daemon: one root task group, one task per station, started with a ready signal.

``run`` serves until SIGTERM (or, for the demo, until ``until`` boards are finished). On SIGTERM
stations stop taking new boards and the daemon exits once each is at a safe point (no board in the
middle of an irreversible write) or after ``stop_timeout_s``.
"""

from __future__ import annotations

import signal
from pathlib import Path

import anyio

from cloudserver.client import CloudClient, client_context
from nuwire.pem import load_private_key
from nuwire.profiles import profile
from orchestrator.config import LineConfig
from orchestrator.journal import Journal
from orchestrator.station import StationRunner


class Line:
    def __init__(self, config: LineConfig, journal: Journal) -> None:
        self.config = config
        self.journal = journal
        cloud = config.cloud
        self.cloud = CloudClient(
            cloud.url,
            client_context(cloud.client_certificate, cloud.client_key, cloud.ca),
            attempts=config.defaults.cloud.retry.attempts,
            backoff=config.defaults.cloud.retry.backoff_s,
        )
        key = load_private_key(config.secureisp.station_key)
        target = profile(config.target_profile)
        self.runners = [
            StationRunner(config, station, target, journal=journal, cloud=self.cloud, station_key=key)
            for station in config.stations
            if station.enabled
        ]

    def __repr__(self) -> str:
        return f"<Line {self.config.line} stations={len(self.runners)}>"

    async def run(self, *, until: int | None = None, stop_timeout_s: float = 30.0) -> None:
        all_done = anyio.Event()
        finished = len(self.journal.finished())

        def board_done() -> None:
            nonlocal finished
            finished += 1
            if until is not None and finished >= until:
                all_done.set()

        if until is not None and finished >= until:
            return
        async with anyio.create_task_group() as group:
            for runner in self.runners:
                runner.on_done = board_done
                await group.start(runner.run)
            if until is not None:
                group.start_soon(self._cancel_when, all_done, group.cancel_scope)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    for runner in self.runners:
                        runner.stopping = True
                    with anyio.move_on_after(stop_timeout_s):  # each station reaches a safe point
                        for runner in self.runners:
                            await runner.idle.wait()
                    group.cancel_scope.cancel()
                    break
        await self.cloud.aclose()

    @staticmethod
    async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
        await event.wait()
        scope.cancel()


async def run(config: LineConfig, journal_path: Path, *, until: int | None = None) -> None:
    journal = Journal(journal_path)
    try:
        await Line(config, journal).run(until=until)
    finally:
        journal.close()
