"""A board swapped for another between steps 2 and 3, and between 7 and 8: the new board is never
written with the old board's keys; the old board, put back, resumes where it stopped.

The fixture is in-process: a probe that carries out the pyOCD worker's operations on the board
model (a fake with the worker's interface), the real UART as a pseudo-terminal, a real cloud server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from boardsim.board import Board, BusFault
from boardsim.isp import BoardIsp, IspKeys
from boardsim.station import make_board
from boardsim.uart import UartPort
from cloudserver.client import CloudClient, client_context
from cloudserver.pki import init_pki
from cloudserver.server import run as run_cloud
from cloudserver.settings import load as load_settings
from cloudserver.settings import write_default
from nuwire.keys import raw_public_key
from nuwire.profiles import M2354
from orchestrator.cloud import LineCloud
from orchestrator.config import LineConfig, Retry, StepClass
from orchestrator.daemon import Line
from orchestrator.errors import ProbeFailure
from orchestrator.journal import Journal
from orchestrator.probe_worker import ProbeOperations, _Target
from orchestrator.states import StationMachine
from orchestrator.station import StationRunner

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Fixture:
    """The socket a board sits in; ``board`` may be swapped at any time."""

    def __init__(self, board: Board, keys: IspKeys) -> None:
        self.keys = keys
        self.isp: BoardIsp | None = None
        self.board = board

    @property
    def board(self) -> Board:
        return self._board

    @board.setter
    def board(self, board: Board) -> None:
        self._board = board
        board.reset("inserted")
        self.isp = BoardIsp(board, self.keys)


class BoardTarget:
    """The part of pyOCD's target API the worker's _Target uses, on the board in the fixture."""

    def __init__(self, fixture: Fixture) -> None:
        self.fixture = fixture

    def _board(self) -> Board:
        if self.fixture.board.debug_locked:
            raise ProbeFailure("not_detected", "Target not detected")
        return self.fixture.board

    def read32(self, address: int) -> int:
        return self._board().read32(address)

    def write32(self, address: int, value: int) -> None:
        self._board().write32(address, value)

    def read_memory_block8(self, address: int, length: int) -> list[int]:
        return list(self._board().flash_read(address, length))

    def reset_and_halt(self) -> None:
        self._board().reset("debugger reset")


class FakeProbe(ProbeOperations):
    """The ProbeWorker interface, carried out on the board model instead of through pyOCD."""

    def __init__(self, fixture: Fixture, on_call: Any = None) -> None:
        self.target = _Target(SimpleNamespace(target=BoardTarget(fixture)), M2354)
        self.fixture = fixture
        self.on_call = on_call or (lambda operation: None)

    async def call(self, operation: str, *args: Any, limit_s: float, on_progress: Any = None) -> Any:
        self.on_call(operation)
        board = self.fixture.board
        if operation == "hardware_reset":  # nRESET: a pin of its own, answered also when locked
            board.reset("nRESET")
            return None
        if operation == "debug_port_silent":
            return board.debug_locked
        if board.debug_locked:
            raise ProbeFailure("not_detected", "Target not detected")
        try:
            if operation == "flash":
                address, data = args
                for offset in range(0, len(data), M2354.aprom.page_size):
                    board.erase_page(address + offset)
                for offset in range(0, len(data), 4):
                    board.program_flash_word(
                        address + offset,
                        int.from_bytes(data[offset : offset + 4].ljust(4, b"\xff"), "little"),
                    )
                return None
            return getattr(self.target, operation)(*args)
        except BusFault as fault:
            raise ProbeFailure("transfer", str(fault)) from None

    async def aclose(self) -> None:
        return None


def faulty_probe(runner: StationRunner, fixture: Fixture, before: Any) -> None:
    """Give ``runner`` a FakeProbe whose every call meets ``await before(operation, args,
    carry_out)`` first, which may raise, hang, or carry out part of the call itself."""
    probe = FakeProbe(fixture)
    carry_out = probe.call

    async def call(operation: str, *args: Any, limit_s: float, on_progress: Any = None) -> Any:
        await before(operation, args, carry_out)
        return await carry_out(operation, *args, limit_s=limit_s)

    probe.call = call  # type: ignore[method-assign]
    runner.probe = probe


async def _line(tmp_path: Path, scenario: Any) -> None:
    data = tmp_path / "cloud"
    data.mkdir()
    init_pki(data / "pki", 1)
    write_default(data, 0)
    keys = IspKeys(
        rom=ec.generate_private_key(ec.SECP256R1()), bootloader=ec.generate_private_key(ec.SECP256R1())
    )
    old, new = (
        make_board(M2354, 1, 1, "blank", Board(M2354, (0, 0, 0)).timing),
        make_board(M2354, 1, 2, "blank", Board(M2354, (0, 0, 0)).timing),
    )
    fixture = Fixture(old, keys)
    station_key = tmp_path / "station.pem"
    from nuwire.pem import private_pem  # noqa: PLC0415

    station_key.write_bytes(private_pem(ec.generate_private_key(ec.SECP256R1())))
    async with anyio.create_task_group() as group:
        url = await group.start(run_cloud, load_settings(data), data)
        pki = data / "pki"
        async with CloudClient(
            url, client_context(pki / "admin.crt", pki / "admin.key", pki / "ca.crt")
        ) as admin:
            job = await admin.create_job(
                pdid=M2354.pdid,
                bootloader=os.urandom(3000),
                bootloader_version="1.0.0",
                application=os.urandom(3000),
                application_version="1.0.0",
                quantity=5,
            )
        port = UartPort(tmp_path / "uart", 921_600, lambda: fixture.isp)
        group.start_soon(port.serve)
        config = LineConfig.model_validate(
            {
                "line": "swap",
                "job_id": job["id"],
                "cloud": {
                    "url": url,
                    "client_certificate": pki / "station-01.crt",
                    "client_key": pki / "station-01.key",
                    "ca": pki / "ca.crt",
                },
                "secureisp": {
                    "rom_public_key": raw_public_key(keys.rom.public_key()).hex(),
                    "bootloader_public_key": raw_public_key(keys.bootloader.public_key()).hex(),
                    "station_key": station_key,
                },
                "defaults": {"uart": {"timeout_s": 0.5}},
                "stations": [
                    {"name": "station-01", "probe": "fake", "uart": str(tmp_path / "uart"), "baud": 921_600}
                ],
            }
        )
        journal = Journal(tmp_path / "journal.db")
        cloud = LineCloud.for_line(config, lambda *_: None)  # the daemon's own
        from nuwire.pem import load_private_key  # noqa: PLC0415

        runner = StationRunner(
            config,
            config.stations[0],
            M2354,
            journal=journal,
            cloud=cloud,
            station_key=load_private_key(station_key),
        )
        await scenario(runner, fixture, old, new, journal)
        await cloud.aclose()
        journal.close()
        port.close()
        group.cancel_scope.cancel()


def _untouched(board: Board) -> bool:
    return not any(board.otp_program_counts) and not board.debug_locked


def test_swapped_between_steps_2_and_3(tmp_path: Path) -> None:
    async def scenario(
        runner: StationRunner, fixture: Fixture, old: Board, new: Board, journal: Journal
    ) -> None:
        def swap(operation: str) -> None:
            if operation == "uid" and runner.status.step == 3 and fixture.board is old:
                fixture.board = new

        runner.probe = FakeProbe(fixture, swap)
        await runner.provision(old.uid_text, "debug")
        assert _untouched(new)  # never written with the old board's keys
        assert not any(old.otp_program_counts)
        assert journal.board(old.uid_text).outcome is None  # type: ignore[union-attr]  # not finished: stopped
        runner.probe = FakeProbe(fixture)
        fixture.board = old  # put back
        await runner.provision(old.uid_text, "debug")
        assert journal.board(old.uid_text).outcome == "PASS"  # type: ignore[union-attr]
        assert old.otp_program_counts[:24] == [1] * 24
        assert old.booted == "application"
        assert _untouched(new)

    anyio.run(_line, tmp_path, scenario)


def test_swapped_between_steps_7_and_8(tmp_path: Path) -> None:
    async def scenario(
        runner: StationRunner, fixture: Fixture, old: Board, new: Board, journal: Journal
    ) -> None:
        runner.probe = FakeProbe(fixture)
        original = runner.cloud.application_key

        async def then_swap(*args: Any) -> bytes:
            key = await original(*args)
            if fixture.board is old:
                fixture.board = new  # after step 7, before step 8
            return key

        runner.cloud.application_key = then_swap  # type: ignore[method-assign,assignment]
        await runner.provision(old.uid_text, "debug")
        assert _untouched(new)
        assert old.otp_program_counts[:16] == [1] * 16  # steps 1-6 done: the bootloader key
        assert not any(old.otp_program_counts[16:])  # the application key hash not yet
        runner.cloud.application_key = original  # type: ignore[method-assign]
        fixture.board = old  # put back: locked now, so the station finds it over SecureISP
        await runner.provision(old.uid_text, "uart")
        assert journal.board(old.uid_text).outcome == "PASS"  # type: ignore[union-attr]
        assert old.otp_program_counts[:24] == [1] * 24
        assert _untouched(new)

    anyio.run(_line, tmp_path, scenario)


def test_probe_unplugged_mid_flash_resumes_at_the_first_page_not_right(tmp_path: Path) -> None:
    async def scenario(
        runner: StationRunner, fixture: Fixture, old: Board, new: Board, journal: Journal
    ) -> None:
        flashed: list[tuple[int, int]] = []

        async def unplug(operation: str, args: Any, carry_out: Any) -> None:
            if operation == "flash":
                address, data = args
                flashed.append((address, len(data)))
                if len(flashed) == 1:  # half the image, then the probe is gone
                    await carry_out("flash", address, data[: len(data) // 2], limit_s=60)
                    raise ProbeFailure("probe", "probe NULINK3 unplugged")

        faulty_probe(runner, fixture, unplug)
        await runner.provision(old.uid_text, "debug")
        assert journal.board(old.uid_text).outcome == "PASS"  # type: ignore[union-attr]
        attempts = [
            e["attempt"] for e in journal.steps(old.uid_text) if e["step"] == 4 and e["phase"] == "intent"
        ]
        assert attempts == [1, 2]
        page, ((first, size), (again, rest)) = M2354.aprom.page_size, flashed
        assert first == 0
        assert again == size // 2 // page * page > 0  # the pages right already are not flashed again
        assert again + rest == size
        assert old.otp_program_counts[:24] == [1] * 24

    anyio.run(_line, tmp_path, scenario)


def test_a_probe_gone_past_the_retries_leaves_the_board_waiting_not_failed(tmp_path: Path) -> None:
    """A port that is away says nothing about the board: the station blocks, the board's journal
    stays open, and once the probe is back the board resumes and passes."""

    async def scenario(
        runner: StationRunner, fixture: Fixture, old: Board, new: Board, journal: Journal
    ) -> None:
        unplugged: list[str] = []

        async def unplug(operation: str, args: Any, carry_out: Any) -> None:
            if operation == "flash" or unplugged:
                unplugged.append(operation)
                raise ProbeFailure("probe", "probe NULINK3 unplugged")

        faulty_probe(runner, fixture, unplug)
        runner.line.defaults.debug = StepClass(timeout_s=5, retry=Retry(attempts=2, backoff_s=0.1))
        await runner.provision(old.uid_text, "debug")
        assert journal.board(old.uid_text).outcome is None  # type: ignore[union-attr]  # waits
        assert runner.status.state == "blocked"
        assert "unplugged" in runner.status.last_error
        assert old.otp_program_counts[:16] == [1] * 16  # step 3 was done, and is not done again
        runner.probe = FakeProbe(fixture)  # plugged back
        await runner.provision(old.uid_text, "debug")
        assert journal.board(old.uid_text).outcome == "PASS"  # type: ignore[union-attr]
        assert old.otp_program_counts[:24] == [1] * 24

    anyio.run(_line, tmp_path, scenario)


def test_retries_spent_while_the_probe_was_away_are_no_verdict(tmp_path: Path) -> None:
    """Chaos found a board FAILed at step 3 on "UID reads disagree": three of its four attempts
    had met a probe that was away, the fourth a flaky read. Such retries say nothing about the
    board: it waits like one whose probe is still away, and passes once the probe is back."""

    async def scenario(
        runner: StationRunner, fixture: Fixture, old: Board, new: Board, journal: Journal
    ) -> None:
        failures: list[str] = []

        async def away_then_flaky(operation: str, args: Any, carry_out: Any) -> None:
            if operation == "read_otp" and len(failures) < 2:
                failures.append(operation)
                if len(failures) == 1:
                    raise ProbeFailure("probe", "probe NULINK3 unplugged")
                raise ProbeFailure("transfer", "SWD fault (FAULT ACK)")

        faulty_probe(runner, fixture, away_then_flaky)
        runner.line.defaults.debug = StepClass(timeout_s=5, retry=Retry(attempts=2, backoff_s=0.1))
        await runner.provision(old.uid_text, "debug")
        assert len(failures) == 2
        assert journal.board(old.uid_text).outcome is None  # type: ignore[union-attr]  # waits
        assert runner.status.state == "blocked"
        await runner.provision(old.uid_text, "debug")
        assert journal.board(old.uid_text).outcome == "PASS"  # type: ignore[union-attr]
        assert old.otp_program_counts[:24] == [1] * 24

    anyio.run(_line, tmp_path, scenario)


def test_a_board_found_locked_before_its_lock_was_seen_is_proven_at_step_6(tmp_path: Path) -> None:
    """A daemon killed between programming CONFIG0 and seeing the lock finds the board over
    SecureISP. Chaos found it FAILed at once, with no step, when the first proof met a debug port
    that answered once; the proof is step 6 again, retried, and the board passes."""

    async def scenario(
        runner: StationRunner, fixture: Fixture, old: Board, new: Board, journal: Journal
    ) -> None:
        answered: list[str] = []

        async def answer_once(operation: str, args: Any, carry_out: Any) -> None:
            if operation == "uid" and old.debug_locked and not answered:
                answered.append(operation)
                raise ProbeFailure("transfer", "SWD fault (WAIT ACK)")  # not a No-ACK: no evidence

        runner.probe = FakeProbe(fixture)
        original = runner._verify_lock

        async def killed_after_lock_config(board: Any) -> bool:
            raise anyio.get_cancelled_exc_class()()

        runner._verify_lock = killed_after_lock_config  # type: ignore[method-assign]
        with anyio.CancelScope():
            with contextlib.suppress(anyio.get_cancelled_exc_class()):
                await runner.provision(old.uid_text, "debug")
        assert old.debug_locked
        assert journal.seen(old.uid_text, "lock-config")
        assert not journal.seen(old.uid_text, "lock-verified")
        runner._verify_lock = original  # type: ignore[method-assign]
        runner.machine = StationMachine()  # the daemon started again
        faulty_probe(runner, fixture, answer_once)
        await runner.provision(old.uid_text, "uart")
        assert answered
        record = journal.board(old.uid_text)
        assert record is not None
        assert (record.outcome, record.reason) == ("PASS", None)
        assert journal.seen(old.uid_text, "lock-verified")

    anyio.run(_line, tmp_path, scenario)


def test_an_objid_record_misread_once_is_a_retry_never_quarantine(tmp_path: Path) -> None:
    """Chaos found a blank board QUARANTINEd at step 1 as "a damaged OBJ_ID record that is not
    this line's": its power was cut while step 1 read the record, which read as zeros that once.
    A record is taken for foreign only when it reads the same twice."""

    async def scenario(
        runner: StationRunner, fixture: Fixture, old: Board, new: Board, journal: Journal
    ) -> None:
        probe = FakeProbe(fixture)
        carry_out, misread = probe.read_words, list[int]()

        async def read_words(address: int, count: int) -> list[int]:
            words = await carry_out(address, count)
            if address == M2354.objid_record and not misread:
                misread.append(address)
                return [0] * count  # the board reset mid-read
            return words

        probe.read_words = read_words  # type: ignore[method-assign]
        runner.probe = probe
        await runner.provision(old.uid_text, "debug")
        assert misread
        record = journal.board(old.uid_text)
        assert record is not None
        assert (record.outcome, record.reason) == ("PASS", None)

    anyio.run(_line, tmp_path, scenario)


def test_a_board_taken_out_mid_flash_waits_and_resumes_when_put_back(tmp_path: Path) -> None:
    """An empty fixture answers nothing on SWD: before the lock that is a board taken out (or its
    link lost), never a FAIL. It stays open in the journal and resumes when it answers again."""

    async def scenario(
        runner: StationRunner, fixture: Fixture, old: Board, new: Board, journal: Journal
    ) -> None:
        taken: list[str] = []

        async def take_out(operation: str, args: Any, carry_out: Any) -> None:
            if operation == "flash" and not taken:
                taken.append(operation)
                raise ProbeFailure("not_detected", "SWD/JTAG communication failure (No ACK)")

        faulty_probe(runner, fixture, take_out)
        await runner.provision(old.uid_text, "debug")
        assert taken
        assert journal.board(old.uid_text).outcome is None  # type: ignore[union-attr]  # waits
        assert runner.status.state != "fail"
        await runner.provision(old.uid_text, "debug")  # back in the fixture
        assert journal.board(old.uid_text).outcome == "PASS"  # type: ignore[union-attr]
        assert old.otp_program_counts[:24] == [1] * 24

    anyio.run(_line, tmp_path, scenario)


def test_a_probe_call_that_hangs_past_the_step_deadline_is_a_retry(tmp_path: Path) -> None:
    """The step's deadline (defaults.debug.timeout_s times the step's ``deadline``) ends an attempt
    whose port call never returns; the next attempt goes on."""

    async def scenario(
        runner: StationRunner, fixture: Fixture, old: Board, new: Board, journal: Journal
    ) -> None:
        hung: list[bool] = []

        async def hang(operation: str, args: Any, carry_out: Any) -> None:
            if (
                operation == "read_otp" and runner.status.step == 3 and not hung
            ):  # step 3's first look never returns
                hung.append(True)
                await anyio.sleep_forever()

        faulty_probe(runner, fixture, hang)
        runner.line.defaults.debug = StepClass(timeout_s=1, retry=Retry(attempts=3, backoff_s=0.1))
        await runner.provision(old.uid_text, "debug")
        assert hung
        assert journal.board(old.uid_text).outcome == "PASS"  # type: ignore[union-attr]
        step_3 = [e for e in journal.steps(old.uid_text) if e["step"] == 3 and e["phase"] == "result"]
        assert [e["outcome"] for e in step_3] == ["error", "ok"]
        assert "deadline" in step_3[0]["outputs"]["error"]
        assert old.otp_program_counts[:24] == [1] * 24

    anyio.run(_line, tmp_path, scenario)


def test_cloud_answering_503_for_ten_seconds_is_retried_and_passes(tmp_path: Path) -> None:
    async def scenario(
        runner: StationRunner, fixture: Fixture, old: Board, new: Board, journal: Journal
    ) -> None:
        runner.probe = FakeProbe(fixture)
        pki = Path(str(runner.line.cloud.ca)).parent
        async with CloudClient(
            runner.line.cloud.url, client_context(pki / "admin.crt", pki / "admin.key", pki / "ca.crt")
        ) as admin:
            await admin.maintenance(10)
        started = anyio.current_time()
        await runner.provision(old.uid_text, "debug")
        assert anyio.current_time() - started >= 10  # it waited the outage out
        assert journal.board(old.uid_text).outcome == "PASS"  # type: ignore[union-attr]

    anyio.run(_line, tmp_path, scenario)


def test_a_cloud_outage_is_retried_by_one_layer_and_shows_on_the_tile(tmp_path: Path) -> None:
    """Issue 10, finding 4: the client makes one request per attempt (no retries inside retries),
    and the station shows the outage as soon as its first attempt fails."""

    async def scenario(
        runner: StationRunner, fixture: Fixture, old: Board, new: Board, journal: Journal
    ) -> None:
        runner.probe = FakeProbe(fixture)
        requests: list[tuple[str, int]] = []
        runner.cloud = LineCloud.for_line(
            runner.line, lambda method, path, _, status: requests.append((path, status))
        )
        pki = Path(str(runner.line.cloud.ca)).parent
        async with CloudClient(
            runner.line.cloud.url, client_context(pki / "admin.crt", pki / "admin.key", pki / "ca.crt")
        ) as admin:
            await admin.maintenance(5)
        shown: list[str] = []
        async with anyio.create_task_group() as group:
            group.start_soon(runner.provision, old.uid_text, "debug")
            while "503" not in runner.status.last_error:  # noqa: ASYNC110  # status is polled, as the API does
                await anyio.sleep(0.01)
            shown.append(runner.status.last_error)
        await runner.cloud.aclose()
        assert journal.board(old.uid_text).outcome == "PASS"  # type: ignore[union-attr]
        refused = [path for path, status in requests if status == 503]
        assert refused  # the outage was met
        assert len(refused) < runner.line.defaults.cloud.retry.attempts  # one layer: one request per try
        assert shown  # the tile showed the outage while the step waited it out

    anyio.run(_line, tmp_path, scenario)


async def _passed_unreported(runner: StationRunner, fixture: Fixture, old: Board, journal: Journal) -> Any:
    """``old`` provisioned to PASS and reported, then marked unreported in the journal, as a
    crash between the board's end and its report leaves it; its journal row."""
    runner.probe = FakeProbe(fixture)
    await runner.provision(old.uid_text, "debug")
    board = journal.board(old.uid_text)
    assert board is not None
    assert board.outcome == "PASS"
    assert board.reported is not None  # the station's own report went through
    board = dataclasses.replace(board, reported=None)
    journal.save(board)
    return board


def test_a_result_the_cloud_missed_is_kept_and_sent_later(tmp_path: Path) -> None:
    """Results are kept in the journal first: one the cloud did not take (it was down, or the daemon
    died between the board finishing and the report) goes when the cloud answers again, once."""

    async def scenario(
        runner: StationRunner, fixture: Fixture, old: Board, new: Board, journal: Journal
    ) -> None:
        await _passed_unreported(runner, fixture, old, journal)
        pki = Path(str(runner.line.cloud.ca)).parent
        async with CloudClient(
            runner.line.cloud.url, client_context(pki / "admin.crt", pki / "admin.key", pki / "ca.crt")
        ) as admin:
            before = len((await admin.device(old.uid_text))["results"])
            once = Retry(attempts=1, backoff_s=0.1)  # give up at once: the next round sends it
            defaults = runner.line.defaults.model_copy(update={"cloud": StepClass(timeout_s=5, retry=once)})
            line = Line(runner.line.model_copy(update={"defaults": defaults}), journal)
            await admin.maintenance(3)
            assert await line.send_pending(settle_s=0) == 0  # the cloud is away: kept for later
            assert journal.board(old.uid_text).reported is None  # type: ignore[union-attr]
            await anyio.sleep(3.5)
            assert await line.send_pending(settle_s=0) == 1
            assert await line.send_pending(settle_s=0) == 0  # sent once
            await line.cloud.aclose()
            results = (await admin.device(old.uid_text))["results"]
        assert journal.board(old.uid_text).reported is not None  # type: ignore[union-attr]
        assert len(results) == before  # the cloud already had this very result: not recorded twice
        assert results[-1]["outcome"] == "PASS"

    anyio.run(_line, tmp_path, scenario)


def test_a_result_the_cloud_refuses_is_kept_apart_and_holds_up_nothing(tmp_path: Path) -> None:
    """A result the cloud refuses for good (here: a board it never registered) is kept in the
    journal with the refusal and not sent again; the results after it still go."""

    async def scenario(
        runner: StationRunner, fixture: Fixture, old: Board, new: Board, journal: Journal
    ) -> None:
        board = await _passed_unreported(runner, fixture, old, journal)
        stranger = dataclasses.replace(  # finished first: first in the backlog
            board,
            uid="53494D01FFFFFFFF00000000",
            obj_id="00" * 16,
            finished=(board.finished or 0) - 60,
            reported=None,
        )
        journal.save(stranger)
        line = Line(runner.line, journal)
        try:
            assert await line.send_pending(settle_s=0) == 1  # the real one went
            assert await line.send_pending(settle_s=0) == 0  # nothing is sent twice
        finally:
            await line.cloud.aclose()
        refused = journal.board(stranger.uid)
        assert refused is not None
        assert refused.reported is None
        assert refused.report_refused  # the cloud's answer, kept
        assert journal.board(old.uid_text).reported is not None  # type: ignore[union-attr]

    anyio.run(_line, tmp_path, scenario)


def _fill(journal: Journal) -> None:
    """The journal's disk is full: SQLite may grow the file by no page (``max_page_count``: the
    SQLITE_FULL a full disk gives), and the pages it has are filled with rows."""
    db = journal._db  # the test's own hand on the file's limit
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    with contextlib.suppress(sqlite3.OperationalError):
        while True:
            db.execute("INSERT INTO steps (uid, step, phase, time) VALUES ('filler', 0, 'fill', 0)")


def test_a_full_journal_blocks_the_station_before_the_otp_write(tmp_path: Path) -> None:
    """Issue 10, finding 8: the disk under the journal fills just before step 3 writes its intent.
    Nothing irreversible runs without its intent on disk: the station blocks with the reason, the
    board stays open, and once the journal takes writes again the board is resumed and passes."""

    async def scenario(
        runner: StationRunner, fixture: Fixture, old: Board, new: Board, journal: Journal
    ) -> None:
        def fill_at_step_3(operation: str) -> None:
            if operation == "read_otp" and runner.status.step == 3 and journal.failure is None:
                _fill(journal)

        runner.probe = FakeProbe(fixture, fill_at_step_3)
        await runner.provision(old.uid_text, "debug")
        assert runner.status.state == "blocked"
        assert "disk is full" in runner.status.last_error
        assert not any(old.otp_program_counts)  # no OTP word without its intent on disk
        assert journal.board(old.uid_text).outcome is None  # type: ignore[union-attr]
        assert "disk is full" in (await runner.preflight() or "")  # it starts nothing until then
        journal._db.execute("PRAGMA max_page_count = 1000000")  # space again
        assert await runner.preflight() is None
        runner.probe = FakeProbe(fixture)
        await runner.provision(old.uid_text, "debug")
        assert journal.board(old.uid_text).outcome == "PASS"  # type: ignore[union-attr]
        assert old.otp_program_counts[:24] == [1] * 24
        assert [e["phase"] for e in journal.steps("")] == ["journal-check"]  # when it came back

    anyio.run(_line, tmp_path, scenario)
