"""pyOCD in a worker process, one per probe (pyOCD changes the process's working directory, keeps
process-wide session state and its calls cannot be cancelled; see the project's pyOCD notes).

Workers are forked from one fork server per daemon that has pyOCD imported already
(``multiprocessing``'s forkserver, PRELOAD): a new worker starts in milliseconds instead of a second
of imports, and the pages of pyOCD's code and tables stay shared among all of them. The fork
server ends when the daemon does (its pipe closes), and each worker with it (PR_SET_PDEATHSIG).

The worker runs :func:`serve` on one end of a pipe: requests ``(operation, args)``, answers
``("ok", value)`` or ``("error", kind, message)`` with kind ``not_detected``, ``probe`` (unplugged or
USB failure), ``transfer`` (SWD fault) or ``failed``. The daemon side, :class:`ProbeWorker`, gives
every call a hard timeout and kills and restarts a worker that hangs. No pyOCD call runs on the
daemon's event loop.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any, Protocol, TypeVar

import anyio

from nuwire.profiles import FmcCommand, TargetProfile, profile
from orchestrator.errors import ProbeFailure

CHUNKS = (1024, 256, 64)
"""Bytes of memory read in one go: a kilobyte (a few block transfers), shorter after an SWD fault
so that on a noisy link a fault repeats a short read, not a long one."""
OPEN_ATTEMPTS = 4
"""Tries to open a pyOCD session before a failure goes back to the station."""
POLL_S = 0.001
"""Between two polls of a flash algorithm running in the target (see _poll_gently)."""
FAULT_RETRIES = 16
"""An SWD access the target answered with FAULT was not carried out: it is safe to repeat a read, and
a program is repeated only after a read shows it did not happen."""
PRELOAD = [
    "orchestrator.probe_worker",
    "pyocd.core.helpers",
    "pyocd.core.session",
    "pyocd.probe.aggregator",
    "pyocd.target.builtin",
    "boardsim.pyocd_probe",
]
"""Imported once by the fork server (a module missing here is imported by the worker itself)."""
T = TypeVar("T")


@functools.cache
def _context() -> Any:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Start a worker without the daemon's main script: multiprocessing would have the worker run
    it again (every import of the CLI, 40% of a worker's CPU), and Python 3.11's fork server
    ignores a ``__main__`` preload (it looks for a key its own preparation data does not have).
    Nothing a worker runs lives in that script: its target is :func:`serve`, here."""
    main = sys.modules["__main__"]
    script = main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        if script is not None:
            main.__file__ = script


def _transfer_fault() -> type[Exception]:
    from pyocd.core.exceptions import TransferFaultError  # noqa: PLC0415  # pyOCD loads slowly

    fault: type[Exception] = TransferFaultError
    return fault


class _Target:
    """The board's FMC driven through pyOCD, the way the ROM's own code would drive it.

    An SWD transfer fault repeats the one FMC command it hit (reads at once, programs after a read
    back), so a noisy link costs time, not the board; the station's step retries are for the rest.
    """

    def __init__(
        self, session: Any, target_profile: TargetProfile, progress: Callable[[float], None] | None = None
    ) -> None:
        self.session = session
        self.t = session.target
        self.p = target_profile
        self.progress = progress or (lambda _: None)

    def unlock(self) -> None:
        """Unlock the protected registers and enable ISP with every update; checked by reading back,
        since a write the target refused with FAULT breaks the unlock sequence silently."""
        for value in self.p.unlock_sequence:
            self.t.write32(self.p.reglctl, value)
        f = self.p.fmc
        enable = f.ispen | f.apuen | f.cfguen | f.lduen
        self.t.write32(f.base + f.ispctl, enable)
        if self.t.read32(self.p.reglctl) & 1 != 1 or self.t.read32(f.base + f.ispctl) & enable != enable:
            raise _transfer_fault()("the register unlock or ISPCTL did not take")

    def isp(self, command: int, address: int, data: int = 0, *, results: bool = True) -> tuple[int, int, int]:
        f = self.p.fmc
        self.t.write32(f.base + f.ispcmd, command)
        self.t.write32(f.base + f.ispaddr, address)
        self.t.write32(f.base + f.ispdat, data)
        self.t.write32(f.base + f.isptrg, f.ispgo)
        # One read per packet: pyOCD's deferred reads would put the answer in the command's packet,
        # but after an SWD fault in such a packet every retry failed too (a line at a 2% fault rate
        # failed boards; tests/orchestrator/test_lock.py), so they are not used.
        while self.t.read32(f.base + f.isptrg) & f.ispgo:
            pass
        ctl = self.t.read32(f.base + f.ispctl)
        if ctl & f.ispff:
            self.t.write32(f.base + f.ispctl, ctl | f.ispff)
            raise ProbeFailure("failed", f"FMC command 0x{command:02X} at 0x{address:08X} set ISPFF")
        if not results:  # a program or an erase: nothing to read back here
            return (0, 0, 0)
        return (
            self.t.read32(f.base + f.ispdat),
            self.t.read32(f.base + f.mpdat0),
            self.t.read32(f.base + f.mpdat1),
        )

    def again(self, action: Callable[[], T]) -> T:
        """``action`` (idempotent), repeated after SWD transfer faults."""
        fault = _transfer_fault()
        for attempt in range(FAULT_RETRIES):
            try:
                return action()
            except fault:
                if attempt == FAULT_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def read(self, command: int, address: int) -> tuple[int, int, int]:
        return self.again(lambda: self.isp(command, address))

    def uid(self) -> list[int]:
        self.again(self.unlock)
        return [self.read(FmcCommand.READ_UID, 4 * i)[0] for i in range(3)]

    def read_words(self, address: int, count: int) -> list[int]:
        self.again(self.unlock)
        return [self.read(FmcCommand.READ, address + 4 * i)[0] for i in range(count)]

    def read_otp(self, entries: list[int]) -> list[tuple[int, int]]:
        self.again(self.unlock)
        out = []
        for entry in entries:
            _, low, high = self.read(FmcCommand.READ_64, self.p.otp.entry_address(entry))
            out.append((low, high))
        return out

    def program_words(self, address: int, words: list[int]) -> None:
        self.again(self.unlock)
        for i, word in enumerate(words):
            self._program(address + 4 * i, word)

    def _program(self, address: int, word: int) -> None:
        fault = _transfer_fault()
        for attempt in range(FAULT_RETRIES):
            try:
                self.isp(FmcCommand.PROGRAM, address, word, results=False)
                return
            except fault:
                if self.read(FmcCommand.READ, address)[0] == word:
                    return  # it was carried out before the fault was reported
                if attempt == FAULT_RETRIES - 1:
                    raise

    def _erase(self, address: int) -> None:
        """One page erase (again changes nothing); an ISPFF after a faulted register write is the
        FMC refusing a half-set command: unlock and erase again."""
        for attempt in range(4):
            try:
                self.again(functools.partial(self.isp, FmcCommand.PAGE_ERASE, address, results=False))
                return
            except ProbeFailure:
                if attempt == 3:
                    raise
                self.again(self.unlock)

    def flash(self, address: int, data: bytes) -> None:
        """pyOCD's flash loader (page erases, never a chip erase); on an SWD fault, the FMC's own
        page erase and word programs."""
        from pyocd.flash.loader import MemoryLoader  # noqa: PLC0415

        region = self.t.memory_map.get_region_for_address(address)
        if region is not None and getattr(region, "flash", None) is not None:
            _poll_gently(region.flash)
        try:
            loader = MemoryLoader(
                self.session, progress=self.progress, chip_erase="sector", smart_flash=False
            )
            loader.add_data(address, list(data))
            loader.commit()
        except _transfer_fault():
            self._flash_by_fmc(address, data)

    def _flash_by_fmc(self, address: int, data: bytes) -> None:
        self.again(self.t.halt)
        self.again(self.unlock)
        page = self.p.aprom.page_size
        for offset in range(0, len(data), page):
            self._erase(address + offset)
        padded = data + b"\xff" * (-len(data) % 4)
        for offset in range(0, len(padded), 4):
            word = int.from_bytes(padded[offset : offset + 4], "little")
            if word != 0xFFFFFFFF:
                self._program(address + offset, word)
            if offset % 1024 == 0:
                self.progress(offset / len(padded))
        self.progress(1.0)

    def read_memory(self, address: int, length: int) -> bytes:
        fault, found, end = _transfer_fault(), bytearray(), address + length
        size, faults = 0, 0  # the index into CHUNKS; the faults in a row
        while address + len(found) < end:
            at = address + len(found)
            try:
                found += bytes(self.t.read_memory_block8(at, min(CHUNKS[size], end - at)))
                faults = 0
            except fault:
                faults += 1
                if faults == FAULT_RETRIES:
                    raise
                size = min(size + 1, len(CHUNKS) - 1)
        return bytes(found)

    def reset(self) -> None:
        self.again(self.t.reset_and_halt)


def _poll_gently(flash: Any) -> None:  # pragma: no cover - in the worker
    """pyOCD polls a running flash algorithm back to back, one USB round trip a poll: about 120
    polls for a page's 10 ms erase and 20 ms program, each costing both ends CPU. Poll every
    POLL_S instead, then let pyOCD's own wait check the halt, the stack canary and R0."""
    if getattr(flash, "polls_gently", False):
        return
    from pyocd.core import exceptions  # noqa: PLC0415
    from pyocd.core.target import Target  # noqa: PLC0415

    wait = flash.wait_for_completion

    def gentle(timeout: float | None = None) -> Any:
        until = time.monotonic() + (timeout or 10.0)
        while time.monotonic() < until:
            with contextlib.suppress(exceptions.TransferTimeoutError, exceptions.TransferFaultError):
                if flash.target.get_state() == Target.State.HALTED:
                    break
            time.sleep(POLL_S)
        return wait(timeout=timeout)

    flash.wait_for_completion, flash.polls_gently = gentle, True


def _one_bar(send: Callable[[float], None]) -> Callable[[float], None]:
    """pyOCD reports a flash as two runs of 0..1 (erase, then program): send them as one."""
    runs, last = 0, 0.0

    def report(done: float) -> None:
        nonlocal runs, last
        if done < last:
            runs = min(runs + 1, 1)
        last = done
        send(min(1.0, (runs + done) / 2))

    return report


class _ProbeAlone:  # pragma: no cover - in the worker
    """The probe with no session on its target: nRESET, and whether the target's debug port
    answers at all, both fine on a locked target. One pyOCD session object for the probe alone is
    kept (building one builds pyOCD's whole target model); dropped after any failure, so a probe
    unplugged and plugged again is found afresh."""

    OPERATIONS = ("hardware_reset", "debug_port_silent")

    def __init__(self, unique_id: str, options: dict[str, Any]) -> None:
        self.unique_id, self.options = unique_id, options
        self._session: Any = None

    def _run(self, action: Callable[[Any], T]) -> T:
        from pyocd.core.helpers import ConnectHelper  # noqa: PLC0415

        if self._session is None:
            self._session = ConnectHelper.session_with_chosen_probe(
                unique_id=self.unique_id, blocking=False, options=self.options, auto_open=False
            )
            if self._session is None:
                raise ProbeFailure("probe", f"no probe {self.unique_id}")
        probe = self._session.probe
        try:
            probe.open()  # the probe only: session.open() would connect to the (locked) target
            try:
                return action(probe)
            finally:
                probe.close()
        except BaseException:
            self._session = None
            raise

    def hardware_reset(self) -> None:
        """Pulse nRESET."""

        def pulse(probe: Any) -> None:
            probe.assert_reset(True)
            time.sleep(0.02)
            probe.assert_reset(False)

        self._run(pulse)

    def debug_port_silent(self) -> bool:
        """True when the debug port gives no ACK to the SWD connect and DPIDR read a session's
        open starts with (a locked part, or no board); False when it answers."""
        from pyocd.core import exceptions  # noqa: PLC0415
        from pyocd.coresight.dap import DPConnector  # noqa: PLC0415
        from pyocd.probe.debug_probe import DebugProbe  # noqa: PLC0415

        def ask(probe: Any) -> bool:
            probe.connect(DebugProbe.Protocol.SWD)
            try:
                probe.set_clock(self.options["frequency"])
                DPConnector(probe).connect()
            except exceptions.TransferError as error:
                if "No ACK" in str(error) or isinstance(error, exceptions.TransferTimeoutError):
                    return True
                raise
            finally:
                with contextlib.suppress(Exception):
                    probe.disconnect()
            return False

        return self._run(ask)


class _NoSvd:  # pragma: no cover - in the worker
    """pyOCD's delegate hook (the one its user scripts use): leave the chip's SVD file unparsed.
    Nothing here reads peripherals by name, and the parse cost about 1.3 CPU-s per session."""

    @staticmethod
    def will_init_target(target: Any, init_sequence: Any) -> None:
        if init_sequence.has_task("load_svd"):
            init_sequence.remove_task("load_svd")


def _open_session(unique_id: str, target: str, options: dict[str, Any]) -> Any:  # pragma: no cover
    """A pyOCD session on the probe, opened again when SWD faults cut the target's discovery short
    (many accesses: at a high fault rate one is likely); a silent target fails at once."""
    from pyocd.core import exceptions  # noqa: PLC0415
    from pyocd.core.helpers import ConnectHelper  # noqa: PLC0415

    for attempt in range(OPEN_ATTEMPTS):
        session = ConnectHelper.session_with_chosen_probe(
            unique_id=unique_id, target_override=target, blocking=False, options=options
        )
        if session is None:
            raise ProbeFailure("probe", f"no probe {unique_id}")
        session.delegate = _NoSvd()
        try:
            session.open()
            core = session.target.selected_core
            if core is None or "pc" not in core.core_registers.by_name:
                raise exceptions.DebugError("the core's registers were not all discovered")
        except (exceptions.DebugError, KeyError):  # faults cut discovery short; "not detected" is not one
            with contextlib.suppress(Exception):
                session.close()
            if attempt == OPEN_ATTEMPTS - 1:
                raise
            continue
        return session
    raise AssertionError("unreachable")


def _die_with(parent: int, environ: dict[str, str]) -> None:  # pragma: no cover - in the worker
    """The worker ends with the daemon, even a SIGKILLed one (Linux PR_SET_PDEATHSIG), leaves
    Ctrl-C to the daemon, which stops its stations at a safe point first, and takes the daemon's
    environment of now (the fork server's is that of its own start). What it has from the fork
    server is frozen for the garbage collector: no collection walks it or copies its pages."""
    gc.freeze()
    os.environ.clear()
    os.environ.update(environ)
    import ctypes  # noqa: PLC0415
    import signal  # noqa: PLC0415

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    try:
        os.kill(parent, 0)  # the daemon died before the call above (the fork server's parent)
    except ProcessLookupError:
        os._exit(0)
    except PermissionError:  # alive, under another user
        pass


def serve(  # the worker's one dispatch loop, kept in one place
    connection: Connection,
    unique_id: str,
    profile_name: str,
    frequency: int,
    *,
    parent: int,
    environ: dict[str, str],
) -> None:  # pragma: no cover - runs in the worker process
    """The worker process: open sessions on demand, carry out requests, answer on the pipe.
    ``environ`` is the daemon's at the worker's start (the fork server keeps its own first one)."""
    import logging  # noqa: PLC0415

    _die_with(parent, environ)
    from pyocd.core import exceptions  # noqa: PLC0415
    from pyocd.probe.pydapaccess.dap_access_api import DAPAccessIntf  # noqa: PLC0415

    logging.getLogger("pyocd").setLevel(logging.CRITICAL)  # failures come back on the pipe, not the console
    target_profile = profile(profile_name)
    options = {"project_dir": tempfile.mkdtemp(prefix="probe-"), "no_config": True, "frequency": frequency,
               "hide_programming_progress": True,
               "reset.post_delay": target_profile.reset_post_delay_s}  # fmt: skip
    alone = _ProbeAlone(unique_id, options)
    session: Any = None

    def close() -> None:
        nonlocal session
        if session is not None:
            with contextlib.suppress(Exception):  # a dead probe or a locked target fails to close cleanly
                session.close()
            session = None

    while True:
        try:
            operation, args = connection.recv()
        except EOFError:
            close()
            return
        try:
            if operation == "close":
                close()
                connection.send(("ok", None))
                continue
            if operation in _ProbeAlone.OPERATIONS:  # no session on the target: fine when it is locked
                close()
                connection.send(("ok", getattr(alone, operation)()))
                continue
            if session is None:
                session = _open_session(unique_id, target_profile.pyocd_target, options)
            target = _Target(
                session, target_profile, _one_bar(lambda done: connection.send(("progress", done)))
            )
            connection.send(("ok", getattr(target, operation)(*args)))
        except ProbeFailure as failure:
            connection.send(("error", failure.kind, str(failure)))
        except (exceptions.TransferFaultError, DAPAccessIntf.TransferError) as error:
            connection.send(("error", "transfer", str(error)))
        except (exceptions.ProbeError, DAPAccessIntf.Error) as error:  # DAPAccess: the probe's link, raw
            close()
            connection.send(("error", "probe", str(error)))
        except exceptions.Error as error:
            close()
            kind = "not_detected" if "not detected" in str(error) or "No ACK" in str(error) else "probe"
            connection.send(("error", kind, str(error)))
        except Exception as error:  # any other failure goes back to the daemon, never kills the worker
            close()
            connection.send(("error", "failed", f"{type(error).__name__}: {error}"))


class ProbePort(Protocol):
    """The station's probe, one method per operation (the worker's ``_Target`` carries them out).
    Each call has a hard deadline; a failure is a ProbeFailure (orchestrator/errors.py)."""

    async def uid(self) -> list[int]: ...
    async def read_words(self, address: int, count: int) -> list[int]: ...
    async def read_otp(self, entries: list[int]) -> list[tuple[int, int]]: ...
    async def program_words(self, address: int, words: list[int]) -> None: ...
    async def read_memory(self, address: int, length: int) -> bytes: ...
    async def flash(self, address: int, data: bytes) -> None: ...
    async def reset(self) -> None: ...
    async def hardware_reset(self) -> None:
        """nRESET through the probe alone: answered also when the debug port is locked."""

    async def debug_port_silent(self) -> bool:
        """Whether the target's debug port gives no answer at all (a locked part, or no board):
        the probe alone, no session on the target."""

    async def aclose(self) -> None: ...


class ProbeOperations:
    """ProbePort's methods as calls of one ``call(operation, *args)`` (the worker's pipe, or a
    test's fake), each within ``limit_s``; ``on_progress(0..1)`` hears how a flash goes."""

    limit_s: float = 60.0
    on_progress: Callable[[float], None] | None = None

    async def call(
        self, operation: str, *args: Any, limit_s: float, on_progress: Callable[[float], None] | None = None
    ) -> Any:
        raise NotImplementedError

    async def _run(self, operation: str, *args: Any) -> Any:
        return await self.call(operation, *args, limit_s=self.limit_s, on_progress=self.on_progress)

    async def uid(self) -> list[int]:
        return list(await self._run("uid"))

    async def read_words(self, address: int, count: int) -> list[int]:
        return list(await self._run("read_words", address, count))

    async def read_otp(self, entries: list[int]) -> list[tuple[int, int]]:
        return [(int(low), int(high)) for low, high in await self._run("read_otp", entries)]

    async def program_words(self, address: int, words: list[int]) -> None:
        await self._run("program_words", address, words)

    async def read_memory(self, address: int, length: int) -> bytes:
        return bytes(await self._run("read_memory", address, length))

    async def flash(self, address: int, data: bytes) -> None:
        await self._run("flash", address, data)

    async def reset(self) -> None:
        await self._run("reset")

    async def hardware_reset(self) -> None:
        await self._run("hardware_reset")

    async def debug_port_silent(self) -> bool:
        return bool(await self._run("debug_port_silent"))


class ProbeWorker(ProbeOperations):
    """The daemon's handle on one probe's worker process."""

    def __init__(
        self,
        unique_id: str,
        profile_name: str,
        *,
        frequency: int = 4_000_000,
        on_restart: Callable[[], None] | None = None,
        limit_s: float = 60.0,
        on_progress: Callable[[float], None] | None = None,
    ) -> None:
        self.limit_s, self.on_progress = limit_s, on_progress
        self.unique_id = unique_id
        self.profile_name = profile_name
        self.frequency = frequency
        self.restarts = 0
        self._on_restart = on_restart or (lambda: None)
        self._process: Any = None
        self._connection: Connection | None = None
        self._lock = anyio.Lock()
        # its own thread for the pipe's answers: anyio's default 40 threads would make the 41st
        # station's calls wait for another station's to end
        self._thread = anyio.CapacityLimiter(1)

    def __repr__(self) -> str:
        alive = self._process is not None and self._process.is_alive()
        return f"<ProbeWorker {self.unique_id} alive={alive} restarts={self.restarts}>"

    def _start(self) -> None:
        context = _context()
        parent, child = context.Pipe()
        self._process = context.Process(
            target=serve,
            args=(child, self.unique_id, self.profile_name, self.frequency),
            kwargs={"parent": os.getpid(), "environ": dict(os.environ)},
            daemon=True,
        )
        with _main_script_hidden():
            self._process.start()
        child.close()
        self._connection = parent

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join(5)
            self._process = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _restarted(self) -> None:
        self.restarts += 1
        self._on_restart()

    async def call(
        self, operation: str, *args: Any, limit_s: float, on_progress: Callable[[float], None] | None = None
    ) -> Any:
        """Run one operation in the worker; ``on_progress(0..1)`` hears how a flash goes."""
        async with self._lock:
            if self._process is None or not self._process.is_alive():
                if self._process is not None:
                    self._restarted()
                self.kill()
                self._start()
            connection = self._connection
            assert connection is not None  # noqa: S101  # started just above
            try:
                connection.send((operation, args))
            except OSError as error:
                self.kill()
                raise ProbeFailure("probe", f"the worker for {self.unique_id} is gone: {error}") from None
            try:
                with anyio.fail_after(limit_s):
                    answer = await anyio.to_thread.run_sync(
                        connection.recv, abandon_on_cancel=True, limiter=self._thread
                    )
                    while answer[0] == "progress":
                        (on_progress or (lambda _: None))(float(answer[1]))
                        answer = await anyio.to_thread.run_sync(
                            connection.recv, abandon_on_cancel=True, limiter=self._thread
                        )
            except TimeoutError:
                self._restarted()
                self.kill()  # a hung probe: kill and start afresh next time
                raise ProbeFailure("timeout", f"{operation} took longer than {limit_s} s") from None
            except EOFError:
                self.kill()
                raise ProbeFailure("probe", f"the worker for {self.unique_id} died") from None
            except BaseException:
                self.kill()  # cancelled mid-call: the pipe holds half an answer, the worker goes
                raise
        if answer[0] == "ok":
            return answer[1]
        raise ProbeFailure(answer[1], answer[2])

    async def aclose(self) -> None:
        try:
            if self._process is not None and self._process.is_alive():
                with contextlib.suppress(ProbeFailure):
                    await self.call("close", limit_s=10)
        finally:
            self.kill()  # always: a blocked reader thread ends when the pipe closes
