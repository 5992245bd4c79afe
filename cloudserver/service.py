"""What the cloud does, independent of HTTP: every call takes the caller's certificate subject.

Every action and its audit row commit in one transaction: if the audit row cannot be written, the
action does not happen. Audit actions: ``register``, ``key_create``, ``sign``, ``image_fetch``,
``key_fetch``, ``result``, ``job_create``, ``job_close`` and ``refuse`` (any 4xx), one row each time
they happen. Keys are made once per (UID, purpose) forever; a signed image is made once per (UID,
purpose, job) and the same bytes are served on every repeat (ECDSA signatures are randomised).

Concurrency: the costly work (making a key, signing an image) is done outside any transaction; the
write that follows holds a row lock on the job (PostgreSQL's ``FOR UPDATE``), so the quota is
counted once at a time across replicas, and inserts what it made only if nobody did first (``ON
CONFLICT DO NOTHING`` on the unique constraints): the loser of a race answers with the winner's
key and image, never a 5xx. The audit chain is extended under a transaction-scoped advisory lock,
as the last thing before the commit. SQLite (one server) takes its writes one at a time in the
process. A transaction PostgreSQL aborts as a deadlock or a serialisation failure is run again.

Station authority: a station certificate names its line (:func:`cloudserver.pki.identity`). A UID
belongs to the line that registered it; a job that names lines serves only those; another line's
UID, a job not serving the line, and a result for a board the line did not provision are refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import SimpleNamespace
from typing import Any, NamedTuple, TypeVar, cast

import anyio
from sqlalchemy import Connection, String, Table, bindparam, exists, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from cloudserver import rawsql
from cloudserver.batches import BatchThread, Queued
from cloudserver.db import (
    AuditRow,
    Device,
    DeviceKey,
    Job,
    JobDevice,
    Result,
    Revoked,
    SignedImage,
    chain,
    now,
)
from cloudserver.keystore import KeyStore, NewKey
from cloudserver.rawsql import Statements
from nuwire import mcuboot
from nuwire.keys import public_key_from_raw
from nuwire.profiles import TargetProfile

PURPOSES = ("bootloader", "application")
AUDIT_LOCK = 0x61756469  # "audi": the advisory lock that orders the audit chain on PostgreSQL
ERASED = 0xFFFFFFFF
"""A blank OTP word."""
RETRYABLE = ("40001", "40P01")  # PostgreSQL: serialization failure, deadlock detected
T = TypeVar("T")


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


JOBS, DEVICES, KEYS, IMAGES, SLOTS, AUDIT, REVOKED, RESULTS = (
    _table(model) for model in (Job, Device, DeviceKey, SignedImage, JobDevice, AuditRow, Revoked, Result)
)
"""The ORM classes' Core tables: the request paths use Core (a few statements each), built once
with bound parameters (SQLAlchemy then skips building and keying a statement per request)."""
UID, PURPOSE, JOB = (bindparam(name, type_=String()) for name in ("uid", "purpose", "job_id"))
SERIAL = bindparam("serial", type_=String())
LAST_HASH = select(AUDIT.c.hash).order_by(AUDIT.c.id.desc()).limit(1)
AUDIT_INSERT = insert(AUDIT)
AUDIT_LOCKED = text("SELECT pg_advisory_xact_lock(:k)")
REVOKED_SERIAL = select(REVOKED.c.serial).where(REVOKED.c.serial == SERIAL)
DEVICE = select(DEVICES).where(DEVICES.c.uid == UID)
CLAIM = update(DEVICES).where(DEVICES.c.uid == UID).values(line=bindparam("line"))
JOB_INSERT = insert(JOBS)
CLOSE = update(JOBS).where(JOBS.c.id == JOB).values(state="closed").returning(JOBS.c.id)
COUNT = (
    update(JOBS)
    .where(JOBS.c.id == JOB, JOBS.c.used < JOBS.c.quantity, JOBS.c.state == "open")
    .values(used=JOBS.c.used + 1)
    .returning(JOBS.c.used)
)
FIRMWARE = {
    purpose: select(body.label("body"), version.label("version")).where(JOBS.c.id == JOB)
    for purpose, body, version in (
        ("bootloader", JOBS.c.bootloader_body, JOBS.c.bootloader_version),
        ("application", JOBS.c.application_body, JOBS.c.application_version),
    )
}


def _look_statement(image: bool) -> Any:
    """What :meth:`Service._look` reads, in one statement."""
    columns = [JOBS.c.state, JOBS.c.lines, (JOBS.c.used >= JOBS.c.quantity).label("full"), DEVICES.c.obj_id,
               DEVICES.c.line, KEYS.c.handle, KEYS.c.public_key, SLOTS.c.uid.label("counted"),
               exists(REVOKED_SERIAL).label("revoked")]  # fmt: skip
    if image:
        columns += [IMAGES.c.image, IMAGES.c.sha256]
    statement = (
        select(*columns)
        .select_from(JOBS)
        .outerjoin(DEVICES, DEVICES.c.uid == UID)
        .outerjoin(KEYS, (KEYS.c.uid == UID) & (KEYS.c.purpose == PURPOSE))
        .outerjoin(SLOTS, (SLOTS.c.job_id == JOBS.c.id) & (SLOTS.c.uid == UID))
        .where(JOBS.c.id == JOB)
    )
    if image:
        same = (IMAGES.c.uid == UID) & (IMAGES.c.purpose == PURPOSE) & (IMAGES.c.job_id == JOBS.c.id)
        statement = statement.outerjoin(IMAGES, same)
    return statement


LOOK = {image: _look_statement(image) for image in (False, True)}


class _Tx:
    """A transaction (or a read): its statements, and the audit rows it will chain in at its end."""

    def __init__(self) -> None:
        self.audit: list[dict[str, Any]] = []

    def first(self, statement: Any, parameters: Mapping[str, Any] | None = None) -> Any:
        """The first row of ``statement``, or None."""
        raise NotImplementedError

    def many(self, statement: Any, rows: list[dict[str, Any]]) -> None:
        """``statement`` once for each of ``rows`` (which name the same columns)."""
        raise NotImplementedError

    def run(self, statement: Any, parameters: Mapping[str, Any]) -> None:
        """A statement that returns no rows."""
        self.many(statement, [dict(parameters)])

    def scalar(self, statement: Any, parameters: Mapping[str, Any] | None = None) -> Any:
        row = self.first(statement, parameters)
        return None if row is None else row[0]


class _AlchemyTx(_Tx):
    """PostgreSQL's: on SQLAlchemy's connection."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self.conn = conn

    def first(self, statement: Any, parameters: Mapping[str, Any] | None = None) -> Any:
        return self.conn.execute(statement, parameters or {}).first()

    def many(self, statement: Any, rows: list[dict[str, Any]]) -> None:
        self.conn.execute(statement, rows)


class _SqliteTx(_Tx):
    """SQLite's: on sqlite3 itself (:mod:`cloudserver.rawsql`)."""

    def __init__(self, db: sqlite3.Connection, statements: Statements) -> None:
        super().__init__()
        self.db, self.statements = db, statements

    def first(self, statement: Any, parameters: Mapping[str, Any] | None = None) -> Any:
        rows = self.statements.rows(self.db, statement, parameters)
        return rows[0] if rows else None

    def many(self, statement: Any, rows: list[dict[str, Any]]) -> None:
        self.statements.many(self.db, statement, rows)


@dataclass(frozen=True, slots=True)
class _Ask:
    """A station's request about one board: who asks, for which line, job, board and purpose."""

    subject: str
    line: str
    job_id: str
    uid: str
    obj_id: str
    purpose: str
    carries: tuple[int, ...] | None = None
    """The OTP words the board holds for the purpose's key, as the station read them."""
    serial: str = ""
    """The serial of the caller's certificate: refused if revoked, in the request's own read."""


def _revoked(subject: str, serial: str) -> Refused:
    return Refused(403, "revoked", f"certificate {subject} (serial {serial}) is revoked")


def _check_revoked(tx: _Tx, subject: str, serial: str) -> None:
    if serial and tx.scalar(REVOKED_SERIAL, {"serial": serial}) is not None:
        raise _revoked(subject, serial)


def _other_line(uid: str, line: str) -> Refused:
    return Refused(403, "another line's board", f"UID {uid} was registered by line {line}", "uid")


def _words(carries: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if carries is None else tuple(carries)


class _Signed(NamedTuple):
    """An image signed by this request: for which public key, and the firmware's version."""

    public_key: bytes
    image: bytes
    version: str


class _LostRace(Exception):
    """Another request stored the key this request's image was signed with a different key for:
    sign again with the winner's."""


def _retryable(error: DBAPIError) -> bool:
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return isinstance(error, IntegrityError) or code in RETRYABLE


def _each(batch: list[Queued], *args: Any) -> None:
    """Each piece of work of ``batch`` called with ``args``, with its own result or error."""
    for queued in batch:
        try:
            queued.result = queued.work(*args)
        except Exception as error:  # the caller's, raised there
            queued.error = error


class Refused(Exception):
    """A request the cloud will not carry out: an HTTP status, a title and a detail naming the field."""

    def __init__(self, status: int, title: str, detail: str, field: str = "") -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.field = status, title, detail, field


@dataclass(frozen=True, slots=True)
class JobSpec:
    pdid: int
    bootloader: bytes
    bootloader_version: str
    application: bytes
    application_version: str
    quantity: int
    lines: tuple[str, ...] = ()


class Service:
    def __init__(self, engine: AsyncEngine, keystore: KeyStore, profile: TargetProfile) -> None:
        self.engine = engine
        self.keystore = keystore
        self.profile = profile
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._postgres = engine.dialect.name == "postgresql"
        dialect_insert = postgres_insert if self._postgres else sqlite_insert
        self._inserts = {
            table.name: dialect_insert(table).on_conflict_do_nothing().returning(*table.primary_key)
            for table in (DEVICES, SLOTS, KEYS, IMAGES, RESULTS, REVOKED)
        }
        self._keys = None if keystore.quick else BatchThread("keystore", _each)
        self._pending: list[Queued] = []
        self._pending_lock = anyio.Lock()
        """PostgreSQL: the writes waiting for this replica's next batch, one batch at a time."""
        if not self._postgres:
            # SQLite's request paths: sqlite3 in two threads of its own, one reading and one
            # writing, each with its connection, each taking in one hand-off all the work that
            # queued while it ran the last (aiosqlite hands every statement to its thread: 25x).
            path = str(engine.url.database)
            self._statements = Statements()
            self._read_db, self._write_db = rawsql.connect(path), rawsql.connect(path)
            self._reader = BatchThread("sqlite-reads", self._read_batch)
            self._writer = BatchThread("sqlite-writes", self._commit_batch)
        self.unavailable_until = 0.0
        """Until this time.monotonic(), provisioning answers 503 (planned maintenance)."""

    def __repr__(self) -> str:
        return f"<Service keystore={self.keystore.name} profile={self.profile.name}>"

    async def close(self) -> None:
        if self._keys is not None:
            self._keys.close()
        if not self._postgres:
            self._reader.close()
            self._writer.close()
            self._read_db.close()
            self._write_db.close()
        await self.engine.dispose()

    # -- transactions and audit -------------------------------------------------------------------

    async def _run(self, work: Callable[[_Tx], T], *, write: bool) -> T:
        """``work(tx)`` in a write transaction (``write``: grouped with the other writes waiting,
        see :meth:`_batch`) or as one read, on a synchronous connection: SQLite's in its
        threads, PostgreSQL's through SQLAlchemy's ``run_sync`` (asyncpg underneath)."""
        if not self._postgres:
            return await (self._writer if write else self._reader).submit(work)  # type: ignore[no-any-return]
        if write:
            return await self._postgres_grouped(work)
        async with self.engine.connect() as conn:
            return await conn.run_sync(lambda sync: work(_AlchemyTx(sync)))

    def _batch(self, batch: list[Queued], tx_for: Callable[[], _Tx]) -> None:
        """Group commit: the writes of ``batch`` one after another in the caller's transaction,
        then all their audit rows chained in (one read of the chain's end, one insert): one
        flush to disk, and on PostgreSQL one hold of the audit chain's lock, for every write that
        queued while the last batch committed, not one each. The caller rolls a failed batch back
        and runs each write again alone (:meth:`_alone`), so a failure undoes only itself."""
        audit: list[dict[str, Any]] = []
        for queued in batch:
            tx = tx_for()
            queued.result = queued.work(tx)
            audit += tx.audit
        self._chain(tx, audit)

    @staticmethod
    def _alone(batch: list[Queued], error: Exception) -> list[Queued]:
        """After ``batch`` failed with ``error``: the writes to run again, each alone (none when
        the batch was one write, which now has its error)."""
        if len(batch) == 1:
            batch[0].error = error
            return []
        for queued in batch:
            queued.result = None
        return batch

    async def _postgres_grouped(self, work: Callable[[_Tx], T]) -> T:
        """A write joins this replica's next batch; whoever holds the batch lock next commits all
        that queued (the audit chain's lock is held to each commit, so one transaction a write
        would put every write of every replica in one line behind a flush each)."""
        mine = Queued(work, asyncio.get_running_loop().create_future())
        self._pending.append(mine)
        async with self._pending_lock:
            if not mine.future.done():
                batch, self._pending = self._pending, []
                with anyio.CancelScope(shield=True):  # others wait on this batch too
                    await self._commit_postgres(batch)
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[no-any-return]

    async def _commit_postgres(self, batch: list[Queued]) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(lambda sync: self._batch(batch, lambda: _AlchemyTx(sync)))
        except Exception as error:
            for queued in self._alone(batch, error):
                await self._commit_postgres([queued])
        finally:
            for queued in batch:
                if not queued.future.done():
                    queued.future.set_result(None)

    def _read_batch(self, batch: list[Queued]) -> None:
        """SQLite's reads, one after another on one connection (each statement sees the last
        commit), each with its own result or error."""
        _each(batch, _SqliteTx(self._read_db, self._statements))  # reads chain no audit rows

    def _commit_batch(self, batch: list[Queued]) -> None:
        """SQLite's group commit (:meth:`_batch`), in its writer thread."""
        db = self._write_db
        try:
            db.execute("BEGIN IMMEDIATE")  # the writer's lock from the first statement on
            try:
                self._batch(batch, lambda: _SqliteTx(db, self._statements))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except Exception as error:
            for queued in self._alone(batch, error):
                self._commit_batch([queued])

    def _chain(self, tx: _Tx, audit: list[dict[str, Any]]) -> None:
        """The transaction's audit rows, each with the hash of the one before, as its last writes."""
        if not audit:
            return
        if self._postgres:  # held to the commit: one chain, no fork, across replicas
            tx.first(AUDIT_LOCKED, {"k": AUDIT_LOCK})
        last = tx.scalar(LAST_HASH)
        for row in audit:
            row["hash"] = last = chain(last or "", SimpleNamespace(**row))
        tx.many(AUDIT_INSERT, audit)  # ids in list order: the chain's

    async def _write(self, work: Callable[[_Tx], T]) -> T:
        """``work`` as a write transaction, run again when the database aborted it for a race
        (deadlock, serialisation, a unique key another transaction took first); the third time,
        the error."""
        for attempt in range(3):
            try:
                return await self._run(work, write=True)
            except DBAPIError as error:
                if attempt == 2 or not _retryable(error):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _inserted(self, tx: _Tx, table: Table, **values: Any) -> bool:
        """INSERT a row unless a unique key of it is there (another request's, maybe in flight
        on another replica: this waits for it); whether this one went in."""
        return tx.first(self._inserts[table.name], values) is not None

    @staticmethod
    def _audit(
        tx: _Tx,
        subject: str,
        action: str,
        *,
        uid: str | None = None,
        job_id: str | None = None,
        detail: str = "",
        outcome: str = "ok",
    ) -> None:
        """One audit row, written with the transaction (:meth:`_body` chains it in)."""
        tx.audit.append(
            {"time": now(), "subject": subject, "action": action, "outcome": outcome, "uid": uid,
             "job_id": job_id, "detail": detail}
        )  # fmt: skip

    async def refusal(
        self, subject: str, action: str, refused: Refused, uid: str | None = None, job_id: str | None = None
    ) -> None:
        detail = f"{action}: {refused.status} {refused.detail}"
        await self._write(
            lambda tx: self._audit(
                tx, subject, "refuse", uid=uid, job_id=job_id, detail=detail, outcome="refused"
            )
        )

    async def audit_rows(self) -> list[dict[str, Any]]:
        async with self._sessions() as session:
            rows = (await session.execute(select(AuditRow).order_by(AuditRow.id))).scalars()
            return [
                {
                    "id": r.id,
                    "time": r.time.isoformat(),
                    "subject": r.subject,
                    "action": r.action,
                    "outcome": r.outcome,
                    "uid": r.uid,
                    "job_id": r.job_id,
                    "detail": r.detail,
                }
                for r in rows
            ]

    async def verify_audit(self) -> tuple[int, str, str | None]:
        """(rows, the last row's hash, the first broken link or None): each row's hash recomputed
        from the one before; a row changed, inserted or removed behind the server's back breaks it."""
        before, count = "", 0
        async with self._sessions() as session:
            for row in (await session.execute(select(AuditRow).order_by(AuditRow.id))).scalars():
                expected = chain(before, row)
                if row.hash != expected:
                    return count, before, f"row {row.id}: its hash does not follow the row before it"
                before, count = expected, count + 1
        return count, before, None

    # -- certificates ----------------------------------------------------------------------------

    async def check_revoked(self, subject: str, serial: str) -> None:
        """Refused if the certificate ``serial`` is revoked. Read on every request (an indexed
        lookup), so a revocation holds at once on every replica: here, or within the request's
        own first statement for the calls that take ``serial`` (registration, keys, images,
        results)."""
        await self._run(lambda tx: _check_revoked(tx, subject, serial), write=False)

    async def revoke(self, subject: str, serial: str, revoked_subject: str = "", reason: str = "") -> bool:
        """Revoke the certificate ``serial`` (by ``subject``, the person or tool); False when it
        was revoked already."""

        def work(tx: _Tx) -> bool:
            if not self._inserted(
                tx, REVOKED, serial=serial, subject=revoked_subject, reason=reason, revoked=now()
            ):
                return False
            self._audit(tx, subject, "cert_revoke", detail=f"serial {serial} {revoked_subject} {reason}")
            return True

        return await self._write(work)

    async def maintenance(self, subject: str, seconds: int) -> None:
        """Provisioning answers 503 with Retry-After for ``seconds`` (0 ends it)."""
        await self._write(lambda tx: self._audit(tx, subject, "maintenance", detail=f"{seconds} s"))
        self.unavailable_until = time.monotonic() + seconds

    # -- devices ---------------------------------------------------------------------------------

    async def register(self, subject: str, uid: str, line: str = "", *, serial: str = "") -> dict[str, Any]:
        """The board's OBJ_ID, made at its first registration; the board belongs to ``line``."""

        def work(tx: _Tx) -> Any:
            _check_revoked(tx, subject, serial)
            fresh = self._inserted(
                tx, DEVICES, uid=uid, obj_id=secrets.token_hex(16), created=now(), line=line
            )
            device = tx.first(DEVICE, {"uid": uid})
            if line and device.line and device.line != line:
                raise _other_line(uid, device.line)
            if line and not device.line:  # registered before lines (or by an admin): claimed
                tx.run(CLAIM, {"uid": uid, "line": line})
            self._audit(tx, subject, "register", uid=uid, detail="new" if fresh else "repeat")
            return device

        device = await self._write(work)
        return {"uid": device.uid, "obj_id": device.obj_id, "created": device.created.isoformat()}

    async def device(self, uid: str) -> dict[str, Any]:
        async with self._sessions() as session:
            device = await session.get(Device, uid)
            if device is None:
                raise Refused(404, "unknown device", f"UID {uid} is not registered", "uid")
            keys = (await session.execute(select(DeviceKey).where(DeviceKey.uid == uid))).scalars()
            results = (
                await session.execute(select(Result).where(Result.uid == uid).order_by(Result.id))
            ).scalars()
            history = (
                await session.execute(select(AuditRow).where(AuditRow.uid == uid).order_by(AuditRow.id))
            ).scalars()
            return {
                "uid": uid,
                "obj_id": device.obj_id,
                "created": device.created.isoformat(),
                "keys": [
                    {"purpose": k.purpose, "public_key": k.public_key.hex(), "created": k.created.isoformat()}
                    for k in keys
                ],
                "results": [
                    {
                        "job_id": r.job_id,
                        "outcome": r.outcome,
                        "step": r.step,
                        "reason": r.reason,
                        "reported_by": r.reported_by,
                        "time": r.created.isoformat(),
                    }
                    for r in results
                ],
                "history": [
                    {
                        "time": a.time.isoformat(),
                        "action": a.action,
                        "outcome": a.outcome,
                        "job_id": a.job_id,
                        "detail": a.detail,
                    }
                    for a in history
                ],
            }

    # -- jobs ------------------------------------------------------------------------------------

    def _check_body(self, body: bytes, slot_name: str) -> None:
        slot = getattr(self.profile, f"{slot_name}_slot")
        room = slot.size - slot.header_size - 512  # header and TLVs must fit too
        if not 0 < len(body) <= room:
            raise Refused(
                422,
                "invalid image",
                f"{slot_name} body is {len(body)} bytes; the slot takes 1..{room}",
                slot_name,
            )

    async def create_job(self, subject: str, spec: JobSpec) -> dict[str, Any]:
        self._check_body(spec.bootloader, "bootloader")
        self._check_body(spec.application, "application")
        job = Job(
            id=f"job-{secrets.token_hex(6)}",
            pdid=spec.pdid,
            bootloader_body=spec.bootloader,
            bootloader_version=spec.bootloader_version,
            application_body=spec.application,
            application_version=spec.application_version,
            quantity=spec.quantity,
            state="open",
            created=now(),
            created_by=subject,
            lines=",".join(spec.lines),
            used=0,
        )
        detail = f"quantity {spec.quantity} lines {job.lines or 'any'}"

        def work(tx: _Tx) -> None:
            tx.run(JOB_INSERT, {c.name: getattr(job, c.name) for c in JOBS.columns})
            self._audit(tx, subject, "job_create", job_id=job.id, detail=detail)

        await self._write(work)
        return await self.job(job.id)

    async def jobs(self) -> list[dict[str, Any]]:
        async with self._sessions() as session:
            ids = (await session.execute(select(Job.id).order_by(Job.created, Job.id))).scalars().all()
        return [await self.job(job_id) for job_id in ids]

    async def job(self, job_id: str) -> dict[str, Any]:
        async with self._sessions() as session:
            job = await session.get(Job, job_id)
            if job is None:
                raise Refused(404, "unknown job", f"job {job_id} does not exist", "job_id")
            return {
                "id": job.id,
                "pdid": job.pdid,
                "state": job.state,
                "quantity": job.quantity,
                "used": job.used,
                "bootloader": {
                    "version": job.bootloader_version,
                    "size": len(job.bootloader_body),
                    "sha256": hashlib.sha256(job.bootloader_body).hexdigest(),
                },
                "application": {
                    "version": job.application_version,
                    "size": len(job.application_body),
                    "sha256": hashlib.sha256(job.application_body).hexdigest(),
                },
                "created": job.created.isoformat(),
                "created_by": job.created_by,
                "lines": job.lines.split(",") if job.lines else [],
            }

    async def close_job(self, subject: str, job_id: str) -> dict[str, Any]:
        def work(tx: _Tx) -> None:
            if tx.first(CLOSE, {"job_id": job_id}) is None:
                raise Refused(404, "unknown job", f"job {job_id} does not exist", "job_id")
            self._audit(tx, subject, "job_close", job_id=job_id)

        await self._write(work)
        return await self.job(job_id)

    # -- keys and images ---------------------------------------------------------------------------

    @staticmethod
    def _look(tx: _Tx, ask: _Ask, *, image: bool) -> Any:
        """One read of all a request needs: the job, the board, its key and (``image``) its signed
        image for the purpose, and whether it is counted under the job. Refused when the job is
        unknown, closed or not the line's, or the board unknown, of another OBJ_ID or line; first
        of all when the caller's certificate is revoked."""
        parameters = {"uid": ask.uid, "purpose": ask.purpose, "job_id": ask.job_id, "serial": ask.serial}
        found = tx.first(LOOK[image], parameters)
        job_id, uid, line = ask.job_id, ask.uid, ask.line
        if found is None:
            _check_revoked(tx, ask.subject, ask.serial)
            raise Refused(404, "unknown job", f"job {job_id} does not exist", "job_id")
        if found.revoked:
            raise _revoked(ask.subject, ask.serial)
        if found.state != "open":
            raise Refused(409, "job closed", f"job {job_id} is closed", "job_id")
        if found.lines and line not in found.lines.split(","):
            raise Refused(
                403, "not this line's job", f"job {job_id} serves lines {found.lines}, not {line!r}"
            )
        if found.obj_id is None:
            raise Refused(404, "unknown device", f"UID {uid} is not registered", "uid")
        if found.obj_id != ask.obj_id:
            raise Refused(
                409,
                "OBJ_ID mismatch",
                f"OBJ_ID {ask.obj_id} is not the one registered for UID {uid}",
                "obj_id",
            )
        if line and found.line and found.line != line:
            raise _other_line(uid, found.line)
        return found

    @staticmethod
    def _exhausted(job_id: str, uid: str) -> Refused:
        return Refused(
            409,
            "quota exhausted",
            f"job {job_id} has made all its boards; UID {uid} is not one of them",
            "uid",
        )

    def _count(self, tx: _Tx, ask: _Ask) -> None:
        """The board's quota slot under the job, taken now. The job's ``used`` goes up by one
        only below its quantity, in one statement that row-locks the job: concurrent requests,
        on any replica, count one at a time."""
        if not self._inserted(tx, SLOTS, job_id=ask.job_id, uid=ask.uid, counted=now()):
            return  # counted already (by a request that raced this one, maybe)
        if tx.first(COUNT, {"job_id": ask.job_id}) is None:
            raise self._exhausted(ask.job_id, ask.uid)  # the slot's insert is rolled back with it

    def _layout(self, firmware: Any, purpose: str) -> dict[str, Any]:
        slot = getattr(self.profile, f"{purpose}_slot")
        version = mcuboot.Version.parse(firmware.version)
        return {"version": version, "header_size": slot.header_size, "load_addr": slot.base}

    def _digest(self, firmware: Any, purpose: str) -> bytes:
        """The digest the purpose's image of ``firmware`` is signed over (whatever the key)."""
        return mcuboot.image_digest(firmware.body, **self._layout(firmware, purpose))

    def _sign(
        self, firmware: Any, purpose: str, handle: bytes, public_key: bytes, made: NewKey | None = None
    ) -> bytes:
        """The signed image; ``made``: the key just generated, with a signature of the image's
        digest (:meth:`KeyStore.generate`), used instead of signing again with ``handle``."""

        def signer(digest: bytes) -> bytes:
            if made is not None and made.signature is not None and made.digest == digest:
                return made.signature
            return self.keystore.sign_digest(handle, digest)

        return mcuboot.build(
            firmware.body,
            signer=signer,
            public_key=public_key_from_raw(public_key),
            key_format=mcuboot.KeyFormat.HASH if purpose == "bootloader" else mcuboot.KeyFormat.FULL,
            **self._layout(firmware, purpose),
        )

    def _read(self, ask: _Ask, with_image: bool, tx: _Tx) -> tuple[Any, Any]:
        """What :meth:`_serve` finds before it makes anything: (the look, the firmware to sign
        or None); past the quota a new board is refused here, before any work."""
        found = self._look(tx, ask, image=with_image)
        self._check_carried(ask, found.public_key)
        if found.counted is None and found.full:
            raise self._exhausted(ask.job_id, ask.uid)
        firmware = (
            tx.first(FIRMWARE[ask.purpose], {"job_id": ask.job_id})
            if with_image and found.image is None
            else None
        )
        return found, firmware

    async def _serve(self, ask: _Ask, *, with_image: bool) -> dict[str, Any]:
        """The board's key for the purpose (made once, ever) and, ``with_image``, its image signed
        under the job (made once per job). What is missing is made first, outside any
        transaction; the write then keeps what another request stored first, if any."""
        made: NewKey | None = None
        signed: _Signed | None = None
        for _ in range(4):
            found, firmware = await self._run(partial(self._read, ask, with_image), write=False)
            if found.public_key is None:
                if made is None:  # with the image's digest: signed before the key is wrapped
                    digest = None if firmware is None else self._digest(firmware, ask.purpose)
                    made = await self._keystore(self.keystore.generate, digest)
                handle, public = made.handle, made.public_key
            else:
                handle, public = found.handle, found.public_key
            if firmware is not None and (signed is None or signed.public_key != public):
                ready = made if made is not None and made.public_key == public else None
                image = await self._keystore(self._sign, firmware, ask.purpose, handle, public, ready)
                signed = _Signed(public, image, firmware.version)
            if found.counted is not None and found.public_key is not None and (not with_image or found.image):
                return await self._write(partial(self._fetched, ask, found, with_image))
            try:
                return await self._write(partial(self._keep, ask, made, signed, with_image))
            except _LostRace:
                continue
        raise Refused(503, "busy", f"UID {ask.uid}: its {ask.purpose} key kept changing; try again")

    async def _keystore(self, call: Callable[..., T], *args: Any) -> T:
        """A key store call: on the event loop for a quick store, else in the key store's thread."""
        if self._keys is None:
            return call(*args)
        return await self._keys.submit(partial(call, *args))  # type: ignore[no-any-return]

    def _check_carried(self, ask: _Ask, public_key: bytes | None) -> None:
        """What the board already holds in OTP for this key, against what the cloud knows: a
        board carrying a key the cloud has no record of (another line's, or one handed out
        before a restore from an old backup) gets no new key; one carrying words of another key
        is refused too. Blank words and words of the cloud's own key are fine (a burn cut off)."""
        if not ask.carries or all(word == ERASED for word in ask.carries):
            return
        if public_key is None:
            raise Refused(
                409, "key lost",
                f"UID {ask.uid} carries a {ask.purpose} key in OTP that this cloud has no record of "
                "(another line's, or handed out before the database was restored): no new key is made",
                "carries",
            )  # fmt: skip
        entries = (
            self.profile.bootloader_key_entries(public_key)
            if ask.purpose == "bootloader"
            else self.profile.app_key_hash_entries(public_key)
        )
        ours = [word for entry in entries.values() for word in entry]
        if len(ask.carries) != len(ours) or any(
            have not in (want, ERASED) for have, want in zip(ask.carries, ours, strict=True)
        ):
            raise Refused(
                409, "another key burnt",
                f"UID {ask.uid} carries {ask.purpose} key words in OTP that are not its key's", "carries",
            )  # fmt: skip

    def _answer(self, ask: _Ask, public_key: bytes) -> dict[str, Any]:
        return {"uid": ask.uid, "obj_id": ask.obj_id, "job_id": ask.job_id, "purpose": ask.purpose,
                "public_key": public_key.hex()}  # fmt: skip

    def _fetched(self, ask: _Ask, found: Any, with_image: bool, tx: _Tx) -> dict[str, Any]:
        """A repeat: everything was made before; the answer and its audit row."""
        answer = self._answer(ask, found.public_key)
        if with_image:
            answer.update(image=found.image, sha256=found.sha256)
            detail = f"{ask.purpose} sha256 {found.sha256}"
            self._audit(tx, ask.subject, "image_fetch", uid=ask.uid, job_id=ask.job_id, detail=detail)
        else:
            self._audit(tx, ask.subject, "key_fetch", uid=ask.uid, job_id=ask.job_id, detail=ask.purpose)
        return answer

    def _keep(
        self, ask: _Ask, made: NewKey | None, signed: _Signed | None, with_image: bool, tx: _Tx
    ) -> dict[str, Any]:
        """The write of :meth:`_serve`: the key and the image unless stored first by another
        request, the quota slot (:meth:`_count`: last, so the job's row is locked only for the
        commit's tail) and the audit rows; the answer. Locks are taken in one order by every
        request (key, image, job, audit), so no two wait for each other."""
        uid, job_id, purpose = ask.uid, ask.job_id, ask.purpose
        if made is not None and self._inserted(
            tx, KEYS, uid=uid, purpose=purpose, public_key=made.public_key, handle=made.handle,
            keystore=self.keystore.name, created=now(),
        ):  # fmt: skip
            self._audit(tx, ask.subject, "key_create", uid=uid, job_id=job_id, detail=purpose)
        found = self._look(tx, ask, image=with_image)  # with what others stored first
        answer = self._answer(ask, found.public_key)
        if not with_image:
            self._count(tx, ask)
            self._audit(tx, ask.subject, "key_fetch", uid=uid, job_id=job_id, detail=purpose)
            return answer
        image, digest = found.image, found.sha256
        if image is None:
            if signed is None or signed.public_key != found.public_key:
                raise _LostRace  # signed for a key another request stored first
            image, digest = signed.image, hashlib.sha256(signed.image).hexdigest()
            values = {"image": image, "sha256": digest, "created": now()}
            if self._inserted(tx, IMAGES, uid=uid, purpose=purpose, job_id=job_id, **values):
                detail = f"{purpose} {signed.version} sha256 {digest}"
                self._audit(tx, ask.subject, "sign", uid=uid, job_id=job_id, detail=detail)
            else:  # another request's, stored while this one signed
                found = self._look(tx, ask, image=True)
                image, digest = found.image, found.sha256
        self._count(tx, ask)
        answer.update(image=image, sha256=digest)
        self._audit(
            tx, ask.subject, "image_fetch", uid=uid, job_id=job_id, detail=f"{purpose} sha256 {digest}"
        )
        return answer

    async def bootloader(
        self, subject: str, job_id: str, uid: str, obj_id: str, *, line: str = "",
        carries: Sequence[int] | None = None, serial: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        ask = _Ask(subject, line, job_id, uid, obj_id, "bootloader", _words(carries), serial)
        return await self._serve(ask, with_image=True)

    async def application_key(
        self, subject: str, job_id: str, uid: str, obj_id: str, *, line: str = "",
        carries: Sequence[int] | None = None, serial: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        ask = _Ask(subject, line, job_id, uid, obj_id, "application", _words(carries), serial)
        return await self._serve(ask, with_image=False)

    async def application(
        self, subject: str, job_id: str, uid: str, obj_id: str, *, line: str = "",
        carries: Sequence[int] | None = None, serial: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        ask = _Ask(subject, line, job_id, uid, obj_id, "application", _words(carries), serial)
        return await self._serve(ask, with_image=True)

    async def result(
        self,
        subject: str,
        job_id: str,
        uid: str,
        obj_id: str,
        *,
        outcome: str,
        step: int,
        reason: str,
        line: str = "",
        serial: str = "",
    ) -> dict[str, Any]:
        """A board's outcome, from the line that provisioned it, on an open job (a PASS only for
        a board counted under the job); a repeat is taken once."""
        ask = _Ask(subject, line, job_id, uid, obj_id, "", serial=serial)

        def work(tx: _Tx) -> None:
            found = self._look(tx, ask, image=False)
            if outcome == "PASS" and found.counted is None:
                raise Refused(
                    409, "not provisioned", f"UID {uid} has no key under job {job_id}: no PASS for it", "uid"
                )
            self._inserted(
                tx, RESULTS, uid=uid, job_id=job_id, outcome=outcome, step=step, reason=reason,
                reported_by=subject, created=now(),
            )  # fmt: skip
            self._audit(
                tx, subject, "result", uid=uid, job_id=job_id, detail=f"{outcome} step {step}: {reason}"[:500]
            )

        await self._write(work)
        return {"uid": uid, "job_id": job_id, "outcome": outcome, "step": step, "reason": reason}


def new_master_key() -> bytes:
    return os.urandom(32)
