"""The line daemon: one root task group, one task per station, started with a ready signal, the
local API and dashboard (orchestrator/api.py) and the systemd watchdog (orchestrator/systemd.py).

``run`` serves until SIGTERM (or, for the demo, until ``until`` boards are finished). On SIGTERM
stations stop taking new boards and the daemon exits once each is at a safe point (no board in the
middle of a step) or after ``stop_timeout_s``. On SIGHUP, or when the file changes, it reloads
stations.yaml: new stations
start, removed ones stop at a safe point, changed ones restart, untouched ones go on without a
pause; an invalid file keeps the running configuration and logs why (file, line, field).
"""

from __future__ import annotations

import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from nuwire.pem import load_private_key
from nuwire.profiles import profile
from orchestrator import systemd
from orchestrator.api import Api, read_token, write_address
from orchestrator.cloud import LineCloud
from orchestrator.config import ConfigError, LineConfig, Station, load
from orchestrator.journal import Board, Journal
from orchestrator.metrics import Metrics
from orchestrator.preflight import JobCheck
from orchestrator.report import LineTotals, job_panel
from orchestrator.station import StationRunner, send_result
from orchestrator.steps import BY_NUMBER

STOP_TIMEOUT_S = 120.0
"""How long a stopping station may take to reach its safe point (a UART group runs to its end):
under the unit's TimeoutStopSec=180. Past it the station's task is cancelled mid-step, which is
safe too (the journal has the board open; shielded OTP writes finish first)."""
RESTART_ONLY = ("line", "target_profile", "cloud", "job_id", "secureisp", "api")
"""Settings a reload refuses to change: the cloud, the job, the keys and the API are the
running daemon's identity; a restart applies them."""
log = structlog.get_logger("orchestrator")


class Line:
    def __init__(self, config: LineConfig, journal: Journal, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self._config_folder = config_path.absolute().parent if config_path is not None else None
        self.journal = journal
        journal.claim()  # one daemon per journal
        self.metrics = Metrics()
        self.metrics.info.labels(config.line, config.job_id).set(1)
        self.metrics.watch(lambda: self.runners)
        self.cloud = LineCloud.for_line(config, self.metrics.cloud_request)
        self.job_check = JobCheck(self.cloud, config.job_id)
        self._key = load_private_key(config.secureisp.station_key)
        self._profile = profile(config.target_profile)
        self.stations: dict[str, tuple[Station, StationRunner, anyio.CancelScope]] = {}
        self._on_done: Any = lambda: None
        self._stop_timeout_s = STOP_TIMEOUT_S
        self._reload_lock = anyio.Lock()
        self.notice = ""
        """What the supervisor must know about the configuration (a reload refused), or ''."""
        self._leaving: dict[str, anyio.Event] = {}  # stations stopping after a reload: shown until parked
        self.boards_done = 0  # since the daemon started; numbers the event stream's board events
        self.board_events: deque[tuple[int, dict[str, Any]]] = deque(maxlen=256)  # the latest only
        self.api: Api | None = None
        self.serving = anyio.Event()  # set once the API listens
        self._snapshot: tuple[float, dict[str, Any]] = (0.0, {})
        self.totals = LineTotals(journal, config.job_id)
        self._progress: dict[str, tuple[tuple[Any, ...], float]] = {}

    def __repr__(self) -> str:
        return f"<Line {self.config.line} stations={len(self.stations)}>"

    @property
    def runners(self) -> list[StationRunner]:
        return [runner for _, runner, _ in self.stations.values()]

    async def _start_station(self, group: TaskGroup, station: Station) -> None:
        runner = StationRunner(
            self.config,
            station,
            self._profile,
            journal=self.journal,
            cloud=self.cloud,
            station_key=self._key,
            metrics=self.metrics,
            job_check=self.job_check,
        )
        runner.on_done = self._board_done
        scope = anyio.CancelScope()

        async def guarded(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            """One station's task: a bug that escapes it is logged and the station starts again
            (the journal holds its board), while every other station goes on."""
            with scope:
                while True:
                    try:
                        await runner.run(task_status=task_status)
                        return
                    except Exception:
                        log.exception("station.crashed", station=station.name, restart_in_s=5)
                        runner.crashed("station crashed: see the log")
                    task_status = anyio.TASK_STATUS_IGNORED
                    await anyio.sleep(5)

        await group.start(guarded)
        self.stations[station.name] = (station, runner, scope)
        log.info("station.start", station=station.name, probe=station.probe, uart=station.uart)

    async def _stop_station(self, name: str, entry: tuple[Station, StationRunner, anyio.CancelScope]) -> None:
        """Stop one station at a safe point; it stays in the view (``stopping``) until then."""
        _, runner, scope = entry
        left = self._leaving.setdefault(name, anyio.Event())
        runner.stop()
        try:
            with anyio.move_on_after(self._stop_timeout_s):  # a safe point: between boards or steps
                await runner.idle.wait()
            scope.cancel()
        finally:
            if self.stations.get(name) is entry:
                del self.stations[name]
            del self._leaving[name]
            left.set()
        log.info("station.stop", station=name)

    async def reload(self, group: TaskGroup) -> None:
        if self.config_path is None:
            return
        try:
            config = load(self.config_path)
        except ConfigError as error:
            log.error("config.invalid", error=str(error), kept="the running configuration")
            self.notice = f"{error} (not applied: the running configuration is kept)"
            return
        needs_restart = [f for f in RESTART_ONLY if getattr(config, f) != getattr(self.config, f)]
        if needs_restart:
            log.error(
                "config.refused", changed=needs_restart, kept="the running configuration",
                fix="restart the daemon to apply them",
            )  # fmt: skip
            self.notice = (
                f"{self.config_path}: {', '.join(needs_restart)} changed: a reload cannot apply that; "
                "restart the daemon (the running configuration is kept, stations too)"
            )
            return
        self.notice = ""
        async with self._reload_lock:  # a signal and a file change may both ask at once
            systemd.notify(
                "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
            )
            wanted = {s.name: s for s in config.stations if s.enabled}
            for name in wanted.keys() & self._leaving.keys():  # back before it stopped: one runner per probe
                await self._leaving[name].wait()
            running = {n: station for n, (station, _, _) in self.stations.items() if n not in self._leaving}
            # Stations and step settings reload; the rest (RESTART_ONLY) needs a restart.
            self.config = self.config.model_copy(
                update={"stations": config.stations, "defaults": config.defaults}
            )
            for name, station in running.items():
                if name not in wanted or wanted[name] != station:
                    self._leaving[name] = anyio.Event()
                if name not in wanted:
                    group.start_soon(self._stop_station, name, self.stations[name])
                elif wanted[name] != station:
                    group.start_soon(self._restart_station, group, wanted[name], self.stations[name])
            for name, station in wanted.items():
                if name not in running:
                    await self._start_station(group, station)
            log.info("config.reloaded", stations=sorted(wanted))
            systemd.notify("READY=1", f"STATUS={self._status_line()}")

    async def _restart_station(
        self, group: TaskGroup, station: Station, entry: tuple[Station, StationRunner, anyio.CancelScope]
    ) -> None:
        await self._stop_station(station.name, entry)
        await self._start_station(group, station)

    async def run(
        self,
        *,
        until: int | None = None,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        when_done: Callable[[], None] | None = None,
        hold: bool = False,
    ) -> None:
        """Serve until SIGTERM, or until ``until`` boards are finished: then ``when_done()`` runs and,
        unless ``hold``, the daemon stops (with ``hold`` the API stays up until SIGTERM or Ctrl-C)."""
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
        try:
            await self._serve(until, all_done, when_done or (lambda: None), hold)
        finally:
            systemd.notify("STOPPING=1")
            with anyio.CancelScope(shield=True):
                if self.api is not None:
                    await self.api.stop()
                    self._address_file.unlink(missing_ok=True)
                await self.cloud.aclose()

    @property
    def _address_file(self) -> Path:
        return self.journal.path.parent / "api.json"

    async def _serve(
        self, until: int | None, all_done: anyio.Event, when_done: Callable[[], None], hold: bool
    ) -> None:
        stop_timeout_s = self._stop_timeout_s
        token = read_token(self.config.api.token_file)
        self.api = Api(self, token, self.config.api.allowed_hosts)
        write_address(self._address_file, await self.api.start(self.config.api.listen))
        self.serving.set()
        async with anyio.create_task_group() as group:
            for station in self.config.stations:
                if station.enabled:
                    await self._start_station(group, station)
            systemd.notify("READY=1", f"STATUS={self._status_line()}")
            group.start_soon(self._send_pending_forever)
            period = systemd.watchdog_period()
            if period is not None:
                group.start_soon(self._watchdog, period)
            if until is not None:
                group.start_soon(self._cancel_when, all_done, when_done, None if hold else group.cancel_scope)
            if self.config_path is not None:
                group.start_soon(self._watch, group)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        await self.reload(group)
                        continue
                    for runner in self.runners:
                        runner.stop()
                    with anyio.move_on_after(stop_timeout_s):  # each station reaches a safe point
                        for runner in self.runners:
                            await runner.idle.wait()
                    group.cancel_scope.cancel()
                    break

    async def _watch(self, group: TaskGroup) -> None:
        """Reload when stations.yaml changes (editors replace files, so the folder is watched)."""
        from watchfiles import awatch  # noqa: PLC0415

        assert self.config_path is not None  # noqa: S101  # started only with a path
        assert self._config_folder is not None  # noqa: S101
        folder, name = self._config_folder, self.config_path.name
        async for changes in awatch(folder, debounce=300, recursive=False):
            if any(Path(path).name == name for _, path in changes):
                await self.reload(group)

    # -- status, actions, watchdog -------------------------------------------------------------------

    def _board_done(self, board: Board) -> None:
        self.boards_done += 1
        fields = ("uid", "station", "outcome", "failed_step", "reason")
        event = {name: getattr(board, name) for name in fields} | {"time": board.finished}
        self.board_events.append((self.boards_done, event))
        self.totals.finished(board)
        self._snapshot = (0.0, {})
        self._on_done()

    def station_status(self, name: str) -> dict[str, Any]:
        station, runner, _ = self.stations[name]
        status = asdict(runner.status)
        step = BY_NUMBER.get(status["step"] or 0)
        return {
            "name": name, "probe": station.probe, "uart": station.uart, "paused": runner.paused,
            "stopping": runner.stopping,
            **status, "step_name": step.name if step else None, "progress": round(runner.status.progress, 3),
        }  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        """The line as the API, the dashboard and ``orchestrator status`` show it (cached for 0.2 s:
        every open dashboard asks four times a second)."""
        now = time.monotonic()
        if now - self._snapshot[0] > 0.2:
            self._snapshot = (
                now,
                {
                    "line": self.config.line,
                    "job_id": self.config.job_id,
                    "notice": self.notice,
                    "time": time.time(),
                    "stations": [self.station_status(name) for name in sorted(self.stations)],
                    "totals": (totals := self.totals.as_dict()),
                    "job": job_panel(
                        self.job_check.job,
                        self.job_check.error,
                        totals,
                        self.journal.in_progress(self.config.job_id),
                    ),
                },
            )
        return self._snapshot[1]

    def act(self, name: str, action: str, *, uid: str | None = None, reason: str = "") -> dict[str, Any]:
        """A supervisor's action on a station; LookupError when there is nothing to act on."""
        runner = self.stations[name][1]
        if action == "pause":
            runner.pause()
        elif action == "resume":
            runner.resume()
        else:
            wanted = "FAIL" if action == "retry" else "QUARANTINE"
            if action == "release" and not reason.strip():
                raise LookupError("release needs a reason: it goes to the journal and the log")
            uid = uid or runner.status.uid
            board = self.journal.board(uid) if uid else None
            if board is None or board.outcome != wanted:
                raise LookupError(
                    f"station {name} has no {wanted} board {uid or ''} to {action}".replace("  ", " ")
                )
            self.journal.reopen(board.uid, name, action, reason or "retry requested")
            self.totals.reopened(wanted, board.failed_step)  # the station's own counts keep their history
            log.warning(f"board.{action}", station=name, uid=board.uid, reason=reason or "retry requested",
                        previous_outcome=wanted, previous_reason=board.reason)  # fmt: skip
        self._snapshot = (0.0, {})
        return self.station_status(name)

    def _status_line(self) -> str:
        totals = self.totals.as_dict()
        return f"{len(self.stations)} stations, {totals['pass']}/{totals['finished']} boards passed"

    def progressing(self) -> bool:
        """False when a station busy with a board has shown no change for ``api.stall_s``."""
        now, stall = time.monotonic(), self.config.api.stall_s
        for name, (_, runner, _) in self.stations.items():
            s = runner.status
            seen = (s.state, s.uid, s.step, s.attempt, round(s.progress, 3))
            previous = self._progress.get(name)
            if previous is None or previous[0] != seen:
                self._progress[name] = (seen, now)
            elif s.state in ("provisioning",) and now - previous[1] > stall:
                log.error(
                    "station.stuck", station=name, uid=s.uid, step=s.step, stalled_s=round(now - previous[1])
                )
                return False
        return True

    async def send_pending(self, settle_s: float = 60) -> int:
        """Send the results the cloud missed (it was away when the board finished); how many went.
        Boards finished in the last ``settle_s`` are left to their station, which is sending them.
        A result the cloud refuses for good is kept apart and does not hold up the ones after it."""
        sent = 0
        for board in self.journal.unreported(self.config.job_id, time.time() - settle_s):
            answer = await send_result(self.journal, self.cloud, board, log)
            if answer == "kept":
                break  # still away: try again next round
            sent += answer == "sent"
        if sent:
            log.info("results.sent_late", boards=sent)
        return sent

    async def _send_pending_forever(self, every_s: float = 30) -> None:
        while True:
            await self.send_pending()
            await anyio.sleep(every_s)

    async def _watchdog(self, period: float) -> None:
        """WATCHDOG=1 from the event loop, after the progress check, every half period."""
        while True:
            if self.progressing():
                systemd.notify("WATCHDOG=1", f"STATUS={self._status_line()}")
            await anyio.sleep(period / 2)

    @staticmethod
    async def _cancel_when(
        event: anyio.Event, when_done: Callable[[], None], scope: anyio.CancelScope | None
    ) -> None:
        await event.wait()
        when_done()
        if scope is not None:
            scope.cancel()


async def run(
    config: LineConfig, journal_path: Path, *, until: int | None = None, config_path: Path | None = None
) -> None:
    journal = Journal(journal_path)
    try:
        await Line(config, journal, config_path).run(until=until)
    finally:
        journal.close()
