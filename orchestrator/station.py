"""One station: find a board, take it through the sequence, journal every step, never break an
invariant (../shared/DESIGN.md), whatever crashes.

Before an irreversible step (OTP, lock) the station re-reads the board's UID and the target words:
a value already there is done; blank is written after an intent is journaled, then read back and
recorded; anything else is QUARANTINE, never a second write. Steps retry by class (debug, cloud,
uart) with exponential backoff and jitter; the UART steps 8-13 retry together, since a brown-out or a
lost session restarts the download from the ROM.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import structlog
from cryptography.hazmat.primitives.asymmetric import ec
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from nuwire import mcuboot
from nuwire.errors import ProtocolError
from nuwire.ids import RECORD_SIZE, decode_obj_id_record, encode_obj_id_record, format_uid, parse_obj_id
from nuwire.keys import public_key_from_raw
from nuwire.profiles import TargetProfile
from orchestrator import otp
from orchestrator.cloud import CloudPort
from orchestrator.config import LineConfig, Station
from orchestrator.errors import (
    CloudFailure,
    Fatal,
    JournalFailure,
    Parked,
    PortFailure,
    ProbeFailure,
    ProvisioningError,
    Quarantine,
    Swapped,
    UartFailure,
)
from orchestrator.isp_steps import HostKeys, IspSteps
from orchestrator.journal import FINAL, Board, Journal
from orchestrator.metrics import Metrics
from orchestrator.preflight import JobCheck
from orchestrator.probe_worker import ProbePort, ProbeWorker
from orchestrator.states import Event, State, StationMachine
from orchestrator.steps import Step, StepClass, checked
from orchestrator.uart import UartLink, UartPort

T = TypeVar("T")
LOCK_READS = 3
"""Reads of the debug port that must all go unanswered before a board is taken for locked."""
SWD_SILENT = "debug port silent while CONFIG0 is not locked: check SWD"
OUTCOME_EVENT = {"PASS": Event.PASSED, "FAIL": Event.FAILED, "QUARANTINE": Event.QUARANTINED}


def retryable(error: BaseException) -> bool:
    """The one retry rule (orchestrator/errors.py): an error of the tree says so itself."""
    return error.retryable if isinstance(error, ProvisioningError) else isinstance(error, TimeoutError)


def _attached(action: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
    """``action`` of a step before the lock (1-4): a debug port that stops answering there is a
    board taken out of the fixture (or its SWD link lost), never a verdict on the board: it is
    left where the journal has it, and resumes when it answers again (``Swapped``)."""

    async def run() -> T:
        try:
            return await action()
        except ProbeFailure as failure:
            if failure.kind != "not_detected":
                raise
            raise Swapped(f"the board stopped answering on SWD before its lock ({failure})") from None

    return run


def _asked(backoff: Callable[[Any], float]) -> Callable[[Any], float]:
    """The step's backoff, or longer when the port asked for it (a cloud's Retry-After)."""

    def wait(state: Any) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        return max(backoff(state), min(60.0, getattr(error, "retry_after", 0.0)))

    return wait


async def _within(
    limit: float | None,
    kind: StepClass,
    action: Callable[[], Awaitable[T]],
    before: Callable[[], Awaitable[None]] | None,
) -> T:
    """One attempt: ``before`` then ``action``, within ``limit`` seconds (None: each port call has
    its own deadline only). Past it, the attempt is a retryable failure of its port."""
    try:
        with anyio.fail_after(limit):
            if before is not None:
                await before()
            return await action()
    except TimeoutError:
        if limit is None:  # not ours: a port's own
            raise
        late = f"the step's attempt took longer than its deadline of {limit} s"
        if kind is StepClass.CLOUD:
            raise CloudFailure(late, retryable=True) from None
        raise ProbeFailure("timeout", late) from None


def _wrong_pages(found: bytes, wanted: bytes, page: int) -> list[int]:
    """The offsets of the pages of ``wanted`` that ``found`` does not match."""
    return [at for at in range(0, len(wanted), page) if found[at : at + page] != wanted[at : at + page]]


def _judged(words: list[int], wanted: list[int], obj_id: str) -> tuple[bool, str | None]:
    """(the record is still to be written, what makes the board not this line's)."""
    try:
        on_board = decode_obj_id_record(b"".join(w.to_bytes(4, "little") for w in words))
    except ProtocolError:
        # A record cut off by a crash while it was written: every word either the cloud's
        # record or blank is completed; anything else is not ours.
        if any(w not in (want, otp.ERASED) for w, want in zip(words, wanted, strict=True)):
            return True, "the board holds a damaged OBJ_ID record that is not this line's"
        return True, None
    if on_board is None:
        return True, None
    if on_board.hex() != obj_id:
        return False, f"the board carries OBJ_ID {on_board.hex()}, the cloud says {obj_id}"
    return False, None


@dataclass
class StationStatus:
    state: str = State.STARTING.value  # set from the station's StationMachine only
    uid: str | None = None
    step: int | None = None
    attempt: int = 0
    progress: float = 0.0
    last_error: str = ""
    reason: str = ""  # the shown board's outcome reason (a FAIL's or a QUARANTINE's), '' otherwise
    counts: dict[str, int] = field(default_factory=lambda: {"PASS": 0, "FAIL": 0, "QUARANTINE": 0})


async def send_result(journal: Journal, cloud: CloudPort, board: Board, log: Any) -> str:
    """Report a finished board to the cloud: ``sent``; ``kept``, unreported in the journal, when
    the cloud did not take it (the daemon sends what is left later: Line.send_pending; the cloud
    takes a repeat once); ``refused`` when the cloud refused it for good (a closed job, a board
    the line did not register): the journal keeps the refusal and it is not sent again."""
    try:
        await cloud.report(
            board.job_id or "",
            board.uid,
            board.obj_id or "",
            outcome="PASS" if board.outcome == "PASS" else "FAIL",
            step=board.failed_step or 13,
            reason=board.reason or "",
        )
    except CloudFailure as error:
        if error.retryable:
            log.warning(
                "board.report_failed", uid=board.uid, error=str(error), kept="in the journal, sent later"
            )
            return "kept"
        log.error(
            "board.report_refused", uid=board.uid, error=str(error), kept="in the journal, not sent again"
        )
        try:
            journal.refuse_report(board.uid, str(error))
        except JournalFailure as failure:
            log.warning("board.report_unrecorded", uid=board.uid, error=str(failure))
            return "kept"
        return "refused"
    try:
        journal.mark_reported(board.uid)
    except JournalFailure as failure:  # the cloud has it; it takes the repeat that follows once
        log.warning("board.report_unrecorded", uid=board.uid, error=str(failure))
        return "kept"
    return "sent"


class StationRunner:
    def __init__(
        self,
        line: LineConfig,
        station: Station,
        profile: TargetProfile,
        *,
        journal: Journal,
        cloud: CloudPort,
        station_key: ec.EllipticCurvePrivateKey,
        metrics: Metrics | None = None,
        job_check: JobCheck | None = None,
        probe: ProbePort | None = None,
        uart: Callable[[], UartPort] | None = None,
    ) -> None:
        """``probe``, ``uart`` and ``cloud`` are the station's ports (typed Protocols); the line's
        are a ProbeWorker, a UartLink on ``station.uart`` and a LineCloud."""
        self.line, self.station, self.profile = line, station, profile
        self.journal, self.cloud, self.station_key = journal, cloud, station_key
        self.job_check = job_check or JobCheck(cloud, line.job_id)
        self.metrics = metrics or Metrics()
        self.probe: ProbePort = probe or ProbeWorker(
            station.probe,
            profile.name,
            on_restart=self.metrics.probe_restarts.labels(station.name).inc,
            limit_s=line.defaults.debug.timeout_s,
            on_progress=self._progress,
        )
        self.status = StationStatus()
        self.machine = StationMachine()
        self.paused = False
        self._resumed = anyio.Event()
        self.log = structlog.get_logger("orchestrator").bind(
            line=line.line, station=station.name, job=line.job_id
        )
        self.stopping = False
        self.idle = anyio.Event()
        self.idle.set()
        self.on_done: Callable[[Board], None] = lambda _: None
        self._not_seen: tuple[str, int] | None = None  # (UID, CONFIG0) of a board whose SWD is silent
        self._reset_pending = False  # nRESET before the next look at the fixture (see run)
        self._window = (0.0, 1.0)  # (start, share) of the step a probe call's progress covers
        isp = line.secureisp
        self.isp = IspSteps(
            profile,
            HostKeys(
                station_key,
                public_key_from_raw(bytes.fromhex(isp.rom_public_key)),
                public_key_from_raw(bytes.fromhex(isp.bootloader_public_key)),
            ),
            link=uart or self._uart,
            reset=self._hardware_reset,
            journal=journal,
            station=station.name,
            application=lambda board: self.cloud.application(line.job_id, board.uid, self._obj(board)),
            attempts=line.defaults.uart.retry.attempts,
            step=self.step,
            progress=self._progress,
            log=self.log,
        )

    def __repr__(self) -> str:
        return f"<StationRunner {self.station.name} state={self.status.state} uid={self.status.uid}>"

    def _fire(self, event: Event) -> None:
        """Move the station by ``event`` (orchestrator/states.py: an illegal one raises)."""
        self.status.state = self.machine.fire(event).value

    def _show(self, event: Event, uid: str | None = None) -> None:
        """``_fire``; a new state, or a board other than the one shown, starts a clean tile."""
        before = self.status.state
        self._fire(event)
        if self.status.state != before or (uid is not None and uid != self.status.uid):
            self.status.uid, self.status.step, self.status.attempt = uid, None, 0
            self.status.progress, self.status.last_error, self.status.reason = 0.0, "", ""

    def crashed(self, reason: str) -> None:
        """A bug escaped this station's task (the daemon starts it again)."""
        self._fire(Event.CRASHED)
        self.status.last_error = reason

    # -- pause and resume -------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop at the next safe point: between boards, before a debug step, before the UART steps."""
        if not self.paused:
            self.paused, self._resumed = True, anyio.Event()
            self.log.info("station.pause")

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self._resumed.set()
            self.log.info("station.resume")

    def stop(self) -> None:
        """Start nothing new: the board in progress is parked at its next safe point (its journal
        stays open, and the next start resumes it from there), a paused station stops at once."""
        self.stopping = True
        self._resumed.set()

    async def _safe_point(self) -> None:
        if self.paused and not self.stopping:
            self._fire(Event.PAUSE)
            await self._resumed.wait()
            self._fire(Event.RESUME)
        if self.stopping and self.machine.state is State.PROVISIONING:
            raise Parked("the station stops: the board is parked at a safe point, resumed at the next start")

    # -- running steps ----------------------------------------------------------------------------

    def _class(self, kind: StepClass) -> Any:
        defaults = self.line.defaults
        return {StepClass.DEBUG: defaults.debug, StepClass.CLOUD: defaults.cloud}.get(kind, defaults.uart)

    async def step(
        self,
        board: Board,
        number: int,
        action: Callable[[], Awaitable[T]],
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Run step ``number`` as its row in orchestrator/steps.py says: its class's retries (in a
        group, only a cloud step retries by itself: the group retries the rest as one), each
        attempt within its deadline and journaled (intent, result). An irreversible step runs only
        with ``before``, its UID check, which comes first in every attempt. Retries spent while a
        port was away (``PortFailure.gone`` in any attempt) are no verdict on the board: the last
        failure is then taken as gone too, and the board waits for the port, then resumes."""
        step = checked(number, before)
        klass = self._class(step.kind)
        alone = step.group is None or step.kind is StepClass.CLOUD
        if step.group is None:  # a group pauses before its first step, never inside
            await self._safe_point()
        self.status.step = number
        limit = None if step.deadline is None else klass.timeout_s * step.deadline
        retrying = AsyncRetrying(
            stop=stop_after_attempt(klass.retry.attempts if alone else 1),
            wait=_asked(wait_exponential_jitter(initial=klass.retry.backoff_s, max=10)),
            retry=retry_if_exception(retryable),
            reraise=True,
        )
        away = False  # some attempt found a port away
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        result = await self._attempt(
                            board, step, attempt.retry_state.attempt_number, limit, action, before
                        )
                    except PortFailure as failure:
                        away = away or failure.gone
                        raise
        except PortFailure as failure:
            if away and failure.retryable:  # spent while a port was away: the board waits for it
                failure.gone = True
            raise
        return result

    async def _attempt(  # noqa: PLR0917  # one attempt, as step() set it up
        self,
        board: Board,
        step: Step,
        n: int,
        limit: float | None,
        action: Callable[[], Awaitable[T]],
        before: Callable[[], Awaitable[None]] | None,
    ) -> T:
        """Attempt ``n`` of ``step``, within ``limit`` seconds: journaled, logged and counted."""
        number, labels = step.number, (str(step.number), step.kind.value)
        self.status.attempt = n
        if n > 1:
            self.metrics.retries.labels(*labels).inc()
        started = time.monotonic()
        fields = {"uid": board.uid, "step": number, "step_name": step.name, "attempt": n}
        self.log.info("step.start", **fields)
        self.journal.event(board.uid, self.station.name, number, "intent", attempt=n)
        try:
            result = await _within(limit, step.kind, action, before)
        except Exception as error:
            if isinstance(error, ProvisioningError):
                error.at(self.station.name, number, board.uid)
            ms = round((time.monotonic() - started) * 1000)
            self.metrics.errors.labels(*labels).inc()
            self.status.last_error = str(error)[:200]
            self.log.warning("step.fail", **fields, duration_ms=ms, outcome="error", error=str(error)[:300])
            self.journal.event(
                board.uid,
                self.station.name,
                number,
                "result",
                attempt=n,
                outcome="error",
                outputs={"error": str(error)[:300]},
            )
            raise
        ms = round((time.monotonic() - started) * 1000)
        self.metrics.step_seconds.labels(str(number)).observe(ms / 1000)
        self.log.info("step.end", **fields, duration_ms=ms, outcome="ok")
        self.journal.event(board.uid, self.station.name, number, "result", attempt=n, outcome="ok")
        return result

    async def _hardware_reset(self) -> None:
        """nRESET through the probe: brings Nuvoton's SecureISP back, also on a locked part."""
        await self.probe.hardware_reset()

    def _progress(self, done: float) -> None:
        """``done`` (0..1) of the probe call under way, within its share of the step (``_window``)."""
        start, share = self._window
        self.status.progress = start + share * done

    # -- finding a board ---------------------------------------------------------------------------

    async def identify(self) -> tuple[str, str] | None:
        """(UID, "debug" or "uart") of the board in the fixture, or None when nothing answers.

        A board is taken for a locked one ("uart") only on evidence: its debug port answers nothing
        on every one of LOCK_READS reads, and its SecureISP reports its UID and a CONFIG0 with the
        lock setting. Any other failure, a flaky SWD read included, is "try again", never a verdict.
        """
        try:
            uid = await self._read_uid()
        except ProbeFailure as failure:
            if failure.kind != "not_detected":
                return None
        else:
            self._not_seen = None
            return uid, "debug"
        seen = await self._lock_seen()
        return None if seen is None else (seen[0], "uart")

    async def preflight(self, *, new_board: bool = False) -> str | None:
        """Why this station cannot take a board now, or None: the journal takes writes, its ports
        (see ``_ports``), then the cloud and the job (orchestrator/preflight.py; ``new_board``:
        quota left too)."""
        return (
            self.journal.check() or await self._ports() or await self.job_check.problem(new_board=new_board)
        )

    async def _ports(self) -> str | None:
        """Why a local port is missing: the UART does not open at its baud, the probe is not there."""
        try:
            async with self.isp.link():
                pass
        except UartFailure as failure:
            return str(failure)
        try:
            await self.probe.uid()
        except ProbeFailure as failure:
            if failure.kind == "probe":
                return f"probe {self.station.probe}: {failure}"
        return None

    async def _ports_ready(self) -> None:
        """Before an irreversible step: the journal takes writes, and the probe and the UART the
        rest of the sequence needs are still there (the cloud's answers for steps 3 and 8 are
        fetched before them, by steps 2 and 7)."""
        problem = self.journal.check() or await self._ports()
        if problem is not None:
            raise UartFailure(f"not starting an irreversible step: {problem}", gone=True)

    async def _lock_seen(self, *, reset: bool = False) -> tuple[str, int] | None:
        """(UID, CONFIG0) when the lock is seen on the board (see identify), else None. With
        ``reset`` (a board of this line, mid-sequence), nRESET comes before each new question: a
        SecureISP that ended on a late or damaged exchange answers nothing until the chip resets."""
        for _ in range(LOCK_READS):
            try:
                if await self.probe.debug_port_silent():
                    continue
            except ProbeFailure:
                pass
            return None  # it answered, or failed another way: not evidence of a lock
        for attempt in range(LOCK_READS):  # a board just out of reset, a busy line: ask again
            if attempt and reset:
                with contextlib.suppress(ProbeFailure):
                    await self._hardware_reset()
            found = await self.isp.inspect()
            if found is not None:
                break
        else:
            self._not_seen = None
            return None  # nothing answers (no board, or an application running)
        if not self.profile.debug_lock.is_locked(found[1]):
            # A silent debug port on a board whose SecureISP says it is not locked: the SWD link
            # is lost (a cable, a probe), not the lock. Said once per board.
            if self._not_seen != found:
                config0 = f"0x{found[1]:08X}"
                self.log.warning("lock.not_seen", uid=found[0], config0=config0, reason=SWD_SILENT)
            self._not_seen = found
            return None
        self._not_seen = None
        return found

    def _uart(self) -> UartPort:
        counters = {way: self.metrics.uart_bytes.labels(self.station.name, way) for way in ("tx", "rx")}
        return UartLink(
            self.station.uart,
            self.station.baud,
            timeout=self.line.defaults.uart.timeout_s,
            count=lambda direction, n: counters[direction].inc(n),  # per packet: no label look-up
        )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        structlog.contextvars.bind_contextvars(station=self.station.name)
        task_status.started()
        # A board left unfinished by a crash may be running its application, or sit in a SecureISP
        # session cut off mid-exchange, silent on the UART either way: one nRESET before the first
        # look brings back the ROM's SecureISP, and the journal says where to resume.
        self._reset_pending = bool(self.journal.unfinished(self.station.name))
        last = self.journal.last_finished(self.station.name)
        if last is not None and last.outcome is not None:  # shown until the next board, as before a restart
            self._show(OUTCOME_EVENT[last.outcome], last.uid)
            self.status.step, self.status.reason = last.failed_step, last.reason or ""
        backoff = 0.5
        try:
            while not self.stopping:
                await self._safe_point()
                problem = await self.preflight(new_board=not self.journal.unfinished(self.station.name))
                if problem is not None:  # never start a board this station could not finish
                    if self.status.state != "blocked" or self.status.last_error != problem:
                        self.log.warning("station.blocked", reason=problem)
                    self._show(Event.BLOCKED)
                    self.status.last_error = problem
                    await anyio.sleep(backoff)
                    backoff = min(30.0, backoff * 2)
                    continue
                backoff = 0.5
                if self._reset_pending:  # first: a SecureISP cut off mid-exchange stays silent
                    with contextlib.suppress(ProbeFailure):
                        await self._hardware_reset()
                        self._reset_pending = False
                found = await self.identify()
                if found is None and self._not_seen is not None:  # a board the probe cannot reach
                    self._show(Event.BLOCKED, self._not_seen[0])
                    self.status.last_error = f"board {self._not_seen[0]}: {SWD_SILENT}"
                    await anyio.sleep(0.3)
                    continue
                if found is None:
                    self._show(Event.EMPTY)  # a result stays shown until the next board
                    await anyio.sleep(0.3)
                    continue
                uid, via = found
                known = self.journal.board(uid)
                if known is None or known.outcome not in FINAL:
                    await self.provision(uid, via)
                    continue
                self._show(OUTCOME_EVENT[known.outcome], uid)  # a finished board still in the fixture
                self.status.reason = known.reason or ""
                await anyio.sleep(0.3)
        finally:
            with anyio.CancelScope(shield=True):
                await self.probe.aclose()

    # -- the sequence ------------------------------------------------------------------------------

    async def provision(self, uid: str, via: str) -> None:
        board = self.journal.board(uid) or Board(
            uid=uid, station=self.station.name, job_id=self.line.job_id, started=time.time()
        )
        self.idle = anyio.Event()
        try:
            self.journal.save(board)
            await self._provision(board, uid, via)
        except anyio.get_cancelled_exc_class():
            self.log.warning(
                "board.parked",
                uid=uid,
                step=self.status.step,
                reason="stopped mid-step at the stop's deadline",
            )
            raise
        except (JournalFailure, PortFailure) as failure:
            # What follows a write that is not on disk could not be resumed, and a port that is away
            # (PortFailure.gone: only those reach here) says nothing about the board: it stays open
            # where the journal last has it, the station blocks until preflight passes again.
            self.log.error("station.blocked", uid=uid, step=self.status.step, reason=str(failure))
            self._show(Event.BLOCKED, uid)
            self.status.last_error = str(failure)
            self._reset_pending = True
        finally:
            self.idle.set()

    async def _provision(self, board: Board, uid: str, via: str) -> None:
        self._show(Event.FOUND, uid)
        log = self.log.bind(uid=uid)
        started = time.monotonic()
        open_intents = self.journal.open_intents(uid)
        if open_intents:
            log.info("board.resume", open_intents=open_intents, via=via)
        try:
            await self._to_step_7(board, via)
            board.application_key = (
                await self.step(
                    board, 7, lambda: self.cloud.application_key(self.line.job_id, uid, self._obj(board))
                )
            ).hex()
            self.journal.save(board)
            await self.uart_steps(board)
            if not self.journal.seen(uid, "lock-verified"):  # invariant: no board ships unlocked
                raise Fatal("the debug lock was never seen on this board")
            board.outcome = "PASS"
        except Swapped as swap:
            log.warning("board.swapped", reason=str(swap))
            self._fire(Event.SWAPPED)
            return
        except Parked as parked:
            log.info("board.parked", reason=str(parked), step=self.status.step)
            self._fire(Event.PARKED)
            return
        except Quarantine as quarantine:
            board.outcome, board.reason = "QUARANTINE", str(quarantine)
        except (Fatal, PortFailure, ProtocolError) as error:
            if isinstance(error, PortFailure) and error.gone:
                raise  # the station's port, not the board: provision() blocks, the board waits
            board.outcome, board.reason = "FAIL", str(error)[:300]
        if board.outcome != "PASS":
            board.failed_step = self.status.step
        board.finished = time.time()
        self.journal.save(board)
        self.status.counts[board.outcome] += 1
        self.metrics.boards.labels(self.station.name, board.outcome).inc()
        self._fire(OUTCOME_EVENT[board.outcome])
        # The tile shows the outcome: a FAIL's or QUARANTINE's reason, and for a PASS no error of
        # an attempt that a retry mended.
        self.status.reason = board.reason or "" if board.outcome != "PASS" else ""
        if board.outcome == "PASS":
            self.status.last_error = ""
        if board.obj_id is None:  # stopped before the cloud gave it an OBJ_ID: nothing to report to
            log.warning("board.report_skipped", reason="no OBJ_ID")
        else:
            await send_result(self.journal, self.cloud, board, log)
        self.on_done(board)
        log.info(
            "board.done",
            outcome=board.outcome,
            failed_step=board.failed_step,
            reason=board.reason,
            duration_ms=round((time.monotonic() - started) * 1000),
        )

    async def _to_step_7(self, board: Board, via: str) -> None:
        """Steps 1-6 for a board found over SWD; for one found locked, the proof of its lock."""
        if via == "debug":
            await self.debug_steps(board)
        elif board.bootloader_key is None:
            # Locked (seen), yet this line never burnt its key: not a board this line can finish.
            raise Quarantine("the debug port is locked and the journal has no record of steps 1-6")
        elif not self.journal.seen(board.uid, "lock-verified"):
            await self._lock(board)  # a run stopped between the lock and its proof: step 6 again

    @staticmethod
    def _obj(board: Board) -> str:
        if board.obj_id is None:
            raise Fatal("no OBJ_ID for this board")
        return board.obj_id

    async def _read_uid(self) -> str:
        """The board's UID over SWD, read twice and the same both times (a UID of all zeros or all
        ones is no UID): a flaky read never names a board."""
        first = format_uid(await self.probe.uid())
        second = format_uid(await self.probe.uid())
        if first != second or len(set(first)) == 1:
            raise ProbeFailure("transfer", f"UID reads disagree or are blank: {first}, {second}")
        return first

    async def _before_irreversible(self, board: Board) -> None:
        """What every irreversible debug step checks first: the ports, then the board's UID."""
        await self._ports_ready()
        await self._check_uid(board)

    async def _check_uid(self, board: Board) -> None:
        uid = await self._read_uid()
        if uid != board.uid:
            raise Swapped(f"expected UID {board.uid}, found {uid}")

    async def debug_steps(self, board: Board) -> None:
        p = self.profile

        async def record() -> list[int]:
            return [int(w) for w in await self.probe.read_words(p.objid_record, RECORD_SIZE // 4)]

        carried: list[int] = []  # the bootloader key's OTP words as step 1 read them (told to the cloud)

        async def identity() -> None:
            await self._check_uid(board)
            carried[:] = [
                word for entry in await self.probe.read_otp(list(p.otp.bootloader_key)) for word in entry
            ]
            words = await record()
            obj_id = await self.cloud.register(board.uid)
            encoded = encode_obj_id_record(parse_obj_id(obj_id))
            wanted = [int.from_bytes(encoded[i : i + 4], "little") for i in range(0, len(encoded), 4)]
            to_write, wrong = _judged(words, wanted, obj_id)
            if wrong is not None:  # evidence: the same record read twice (a board reset mid-read)
                if await record() != words:
                    raise ProbeFailure("transfer", "the OBJ_ID record read differently twice")
                raise Quarantine(wrong)
            if to_write:
                await self.probe.program_words(p.objid_record, wanted)
                if await record() != wanted:  # cut off, or a doubtful read: the retry decides
                    raise ProbeFailure("transfer", "the OBJ_ID record did not read back as written")
            board.obj_id = obj_id
            self.journal.save(board)

        await self.step(board, 1, _attached(identity))
        signed = await self.step(
            board,
            2,
            lambda: self.cloud.bootloader(self.line.job_id, board.uid, self._obj(board), carried or None),
        )
        image = mcuboot.parse(signed.image)
        if mcuboot.verify(image, public_key_from_raw(signed.public_key)) is not mcuboot.Verdict.OK:
            raise Fatal("the signed bootloader does not verify with the key it came with")
        self.journal.image(board.uid, self.station.name, 2, str(image.version), signed.sha256)
        board.bootloader_key = signed.public_key.hex()
        self.journal.save(board)
        self.job_check.forget()  # this board took its share of the quota

        async def burn_key() -> None:
            await self._burn_entries(board, 3, p.bootloader_key_entries(signed.public_key))

        await self.step(
            board, 3, _attached(burn_key), before=_attached(lambda: self._before_irreversible(board))
        )

        await self.step(board, 4, _attached(lambda: self._program_bootloader(signed.image)))
        await self._reset_and_lock(board)

    async def _program_bootloader(self, image: bytes) -> None:
        """The slot read and compared page by page first: only the pages from the first one
        that is not right to the last are flashed, in one probe call (one load of the flash
        algorithm), so an attempt cut short (a fault, a deadline, a kill) resumes there; then
        every page is read back."""
        p = self.profile
        base, page = p.bootloader_slot.base, p.aprom.page_size
        wrong = _wrong_pages(await self.probe.read_memory(base, len(image)), image, page)
        if wrong:
            first, end = wrong[0], min(len(image), wrong[-1] + page)
            self._window = (first / len(image), (end - first) / len(image))
            try:
                await self.probe.flash(base + first, image[first:end])
            finally:
                self._window = (0.0, 1.0)
            wrong = _wrong_pages(await self.probe.read_memory(base, len(image)), image, page)
            if wrong:
                raise ProbeFailure(
                    "failed", f"the bootloader's page at 0x{base + wrong[0]:X} did not read back"
                )
        self._progress(1.0)

    async def _reset_and_lock(self, board: Board) -> None:
        """Steps 5 and 6. The lock is proven, never assumed: CONFIG0 read back with the lock setting
        before the reset, then the debug port silent while SecureISP reports the board's UID and
        that CONFIG0 (``lock-verified`` in the journal). A reset the debug port does not answer is a
        lost link (retried), unless the lock is seen: a run that crashed after programming CONFIG0."""

        async def reset() -> None:
            try:
                await self.probe.reset()
            except ProbeFailure as failure:
                if failure.kind != "not_detected" or not await self._verify_lock(board):
                    raise ProbeFailure(
                        "probe", f"reset not answered, and no lock seen ({failure})", gone=False
                    ) from None

        await self.step(board, 5, reset)
        await self._lock(board)

    async def _lock(self, board: Board) -> None:
        """Step 6: CONFIG0's lock programmed and read back, then seen after a reset (above)."""
        p = self.profile

        async def lock() -> None:
            if self.journal.seen(board.uid, "lock-verified"):
                return
            try:
                config0 = (await self.probe.read_words(p.debug_lock.config_address, 1))[0]
            except ProbeFailure as failure:
                if failure.kind != "not_detected" or not await self._verify_lock(board):
                    if self.journal.seen(board.uid, "lock-config"):
                        raise ProbeFailure(
                            "probe", "the lock is programmed, not yet seen", gone=False
                        ) from None
                    raise ProbeFailure(
                        "probe", f"debug port lost before the lock ({failure})", gone=False
                    ) from None
                return
            if not p.debug_lock.is_locked(config0):
                self.journal.event(board.uid, self.station.name, 6, "lock-intent")
                with anyio.CancelScope(shield=True):  # never stopped between the program and its read-back
                    await self.probe.program_words(
                        p.debug_lock.config_address, [config0 & ~p.debug_lock.mask]
                    )
                    config0 = (await self.probe.read_words(p.debug_lock.config_address, 1))[0]
                if not p.debug_lock.is_locked(config0):
                    raise ProbeFailure(
                        "transfer", f"CONFIG0 reads 0x{config0:08X} after programming the lock"
                    )
            self.journal.event(
                board.uid, self.station.name, 6, "lock-config", outputs={"config0": f"0x{config0:08X}"}
            )
            await self.probe.hardware_reset()  # the lock takes effect at reset
            if not await self._verify_lock(board):
                raise ProbeFailure(
                    "probe",
                    "the lock is programmed, but after a reset the debug port still answers "
                    "or SecureISP does not report the board locked",
                    gone=False,
                )

        async def before_lock() -> None:
            """UID over SWD, or a silent debug port: the lock's proof then checks it over SecureISP."""
            if not self.journal.seen(board.uid, "lock-verified"):
                try:
                    await self._before_irreversible(board)
                except ProbeFailure as failure:
                    if failure.kind != "not_detected":
                        raise

        await self.step(board, 6, lock, before=before_lock)

    async def _verify_lock(self, board: Board) -> bool:
        """The lock seen on this board: journaled as ``lock-verified`` with its CONFIG0."""
        seen = await self._lock_seen(reset=True)
        if seen is None or seen[0] != board.uid:
            return False
        self.journal.event(
            board.uid, self.station.name, 6, "lock-verified", outputs={"config0": f"0x{seen[1]:08X}"}
        )
        return True

    async def _burn_entries(self, board: Board, number: int, wanted: dict[int, tuple[int, int]]) -> None:
        """Step 3's OTP words over SWD, as orchestrator/otp.py plans them."""

        async def read(entries: list[int]) -> dict[int, tuple[int, int]]:
            return dict(zip(entries, await self.probe.read_otp(entries), strict=True))

        def doubt(reason: str) -> ProbeFailure:
            return ProbeFailure("transfer", reason)

        todo = await otp.plan(wanted, read, doubt)
        writes = [
            (self.profile.otp.entry_address(entry) + 4 * offset, want)
            for entry, now in todo.items()
            for offset, (want, have) in enumerate(zip(wanted[entry], now, strict=True))
            if have != want
        ]
        if not writes:
            return
        self.journal.event(
            board.uid, self.station.name, number, "otp-intent", outputs={"words": [a for a, _ in writes]}
        )
        runs: list[tuple[int, list[int]]] = []  # words at consecutive addresses: one probe call
        for address, word in writes:
            if runs and runs[-1][0] + 4 * len(runs[-1][1]) == address:
                runs[-1][1].append(word)
            else:
                runs.append((address, [word]))
        with anyio.CancelScope(shield=True):  # a stop never lands between an OTP write and its read-back
            for address, words in runs:
                await self.probe.program_words(address, words)
            await otp.confirm(wanted, read, doubt)
        self.journal.event(board.uid, self.station.name, number, "otp-result", outcome="written")

    async def uart_steps(self, board: Board) -> None:
        """Steps 8-13 as one group (orchestrator/isp_steps.py); a pause waits before it."""
        await self._safe_point()
        await self.isp.run(board)
