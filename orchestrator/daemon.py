"""The line daemon: one root task group, one task per station, started with a ready signal.

``run`` serves until SIGTERM (or, for the demo, until ``until`` boards are finished). On SIGTERM
stations stop taking new boards and the daemon exits once each is at a safe point (no board in the
middle of a step) or after ``stop_timeout_s``. On SIGHUP, or when the file changes, it reloads
stations.yaml: new stations
start, removed ones stop at a safe point, changed ones restart, untouched ones go on without a
pause; an invalid file keeps the running configuration and logs why (file, line, field).
"""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from cloudserver.client import CloudClient, client_context
from nuwire.pem import load_private_key
from nuwire.profiles import profile
from orchestrator.config import ConfigError, LineConfig, Station, load
from orchestrator.journal import Journal
from orchestrator.station import StationRunner

log = structlog.get_logger("orchestrator")


class Line:
    def __init__(self, config: LineConfig, journal: Journal, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self._config_folder = config_path.absolute().parent if config_path is not None else None
        self.journal = journal
        cloud = config.cloud
        self.cloud = CloudClient(
            cloud.url,
            client_context(cloud.client_certificate, cloud.client_key, cloud.ca),
            attempts=config.defaults.cloud.retry.attempts,
            backoff=config.defaults.cloud.retry.backoff_s,
        )
        self._key = load_private_key(config.secureisp.station_key)
        self._profile = profile(config.target_profile)
        self.stations: dict[str, tuple[Station, StationRunner, anyio.CancelScope]] = {}
        self._on_done = lambda: None
        self._stop_timeout_s = 30.0
        self._reload_lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"<Line {self.config.line} stations={len(self.stations)}>"

    @property
    def runners(self) -> list[StationRunner]:
        return [runner for _, runner, _ in self.stations.values()]

    async def _start_station(self, group: TaskGroup, station: Station) -> None:
        runner = StationRunner(
            self.config, station, self._profile, journal=self.journal, cloud=self.cloud, station_key=self._key
        )
        runner.on_done = self._on_done
        scope = anyio.CancelScope()

        async def guarded(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await runner.run(task_status=task_status)

        await group.start(guarded)
        self.stations[station.name] = (station, runner, scope)
        log.info("station.start", station=station.name, probe=station.probe, uart=station.uart)

    async def _stop_station(self, name: str, entry: tuple[Station, StationRunner, anyio.CancelScope]) -> None:
        _, runner, scope = entry
        runner.stopping = True
        with anyio.move_on_after(self._stop_timeout_s):  # a safe point: between boards
            await runner.idle.wait()
        scope.cancel()
        log.info("station.stop", station=name)

    async def reload(self, group: TaskGroup) -> None:
        if self.config_path is None:
            return
        try:
            config = load(self.config_path)
        except ConfigError as error:
            log.error("config.invalid", error=str(error), kept="the running configuration")
            return
        async with self._reload_lock:  # a signal and a file change may both ask at once
            wanted = {s.name: s for s in config.stations if s.enabled}
            running = {name: station for name, (station, _, _) in self.stations.items()}
            # Stations and step settings reload; the cloud, the job and the keys need a restart.
            self.config = self.config.model_copy(
                update={"stations": config.stations, "defaults": config.defaults}
            )
            for name, station in running.items():
                if name not in wanted:
                    group.start_soon(self._stop_station, name, self.stations.pop(name))
                elif wanted[name] != station:
                    group.start_soon(self._restart_station, group, wanted[name], self.stations.pop(name))
            for name, station in wanted.items():
                if name not in running:
                    await self._start_station(group, station)
            log.info("config.reloaded", stations=sorted(wanted))

    async def _restart_station(
        self, group: TaskGroup, station: Station, entry: tuple[Station, StationRunner, anyio.CancelScope]
    ) -> None:
        await self._stop_station(station.name, entry)
        await self._start_station(group, station)

    async def run(self, *, until: int | None = None, stop_timeout_s: float = 30.0) -> None:
        self._stop_timeout_s = stop_timeout_s
        all_done = anyio.Event()
        finished = len(self.journal.finished())

        def board_done() -> None:
            nonlocal finished
            finished += 1
            if until is not None and finished >= until:
                all_done.set()

        self._on_done = board_done
        if until is not None and finished >= until:
            return
        async with anyio.create_task_group() as group:
            for station in self.config.stations:
                if station.enabled:
                    await self._start_station(group, station)
            if until is not None:
                group.start_soon(self._cancel_when, all_done, group.cancel_scope)
            if self.config_path is not None:
                group.start_soon(self._watch, group)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        await self.reload(group)
                        continue
                    for runner in self.runners:
                        runner.stopping = True
                    with anyio.move_on_after(stop_timeout_s):  # each station reaches a safe point
                        for runner in self.runners:
                            await runner.idle.wait()
                    group.cancel_scope.cancel()
                    break
        await self.cloud.aclose()

    async def _watch(self, group: TaskGroup) -> None:
        """Reload when stations.yaml changes (editors replace files, so the folder is watched)."""
        from watchfiles import awatch  # noqa: PLC0415

        assert self.config_path is not None  # noqa: S101  # started only with a path
        assert self._config_folder is not None  # noqa: S101
        folder, name = self._config_folder, self.config_path.name
        async for changes in awatch(folder, debounce=300, recursive=False):
            if any(Path(path).name == name for _, path in changes):
                await self.reload(group)

    @staticmethod
    async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
        await event.wait()
        scope.cancel()


async def run(
    config: LineConfig, journal_path: Path, *, until: int | None = None, config_path: Path | None = None
) -> None:
    journal = Journal(journal_path)
    try:
        await Line(config, journal, config_path).run(until=until)
    finally:
        journal.close()
