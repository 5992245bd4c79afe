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

import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

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
from nuwire import mcuboot
from nuwire.keys import public_key_from_raw
from nuwire.profiles import TargetProfile

PURPOSES = ("bootloader", "application")
AUDIT_LOCK = 0x61756469  # "audi": the advisory lock that orders the audit chain on PostgreSQL
RETRYABLE = ("40001", "40P01")  # PostgreSQL: serialization failure, deadlock detected
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Ask:
    """A station's request about one board: who asks, for which line, job, board and purpose."""

    subject: str
    line: str
    job_id: str
    uid: str
    obj_id: str
    purpose: str


class _LostRace(Exception):
    """Another request stored the key this request's image was signed with a different key for:
    sign again with the winner's."""


def _retryable(error: DBAPIError) -> bool:
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return isinstance(error, IntegrityError) or code in RETRYABLE


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
        self._writer = anyio.Lock()
        """SQLite: one write transaction at a time in the process (it has one writer anyway)."""
        self.unavailable_until = 0.0
        """Until this time.monotonic(), provisioning answers 503 (planned maintenance)."""

    def __repr__(self) -> str:
        return f"<Service keystore={self.keystore.name} profile={self.profile.name}>"

    # -- audit ------------------------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """A write transaction whose audit rows are chained in at its end (:meth:`_audit`)."""
        async with AsyncExitStack() as stack:
            if not self._postgres:
                await stack.enter_async_context(self._writer)
            session = await stack.enter_async_context(self._sessions.begin())
            yield session
            rows: list[AuditRow] = session.info.pop("audit", [])
            if rows:
                if self._postgres:  # held to the commit: one chain, no fork, across replicas
                    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK})
                last = await session.scalar(select(AuditRow.hash).order_by(AuditRow.id.desc()).limit(1))
                for row in rows:
                    row.hash = last = chain(last or "", row)
                    session.add(row)
                    await session.flush()  # ids in chain order

    async def _retrying(self, work: Callable[[], Awaitable[T]]) -> T:
        """``work`` again when the database aborted it for a race (deadlock, serialisation,
        a unique key another transaction took first); the third time, the error."""
        for attempt in range(3):
            try:
                return await work()
            except DBAPIError as error:
                if attempt == 2 or not _retryable(error):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _inserted(self, session: AsyncSession, model: type[Any], **values: Any) -> bool:
        """INSERT a row unless a unique key of it is there (another request's, maybe in flight
        on another replica: this waits for it); whether this one went in."""
        insert = (postgres_insert if self._postgres else sqlite_insert)(model)
        statement = insert.values(**values).on_conflict_do_nothing().returning(*model.__table__.primary_key)
        return (await session.execute(statement)).first() is not None

    @staticmethod
    async def _audit(
        session: AsyncSession,
        subject: str,
        action: str,
        *,
        uid: str | None = None,
        job_id: str | None = None,
        detail: str = "",
        outcome: str = "ok",
    ) -> None:
        """One audit row, written with the transaction (:meth:`_write` chains it in)."""
        row = AuditRow(
            time=now(), subject=subject, action=action, outcome=outcome, uid=uid, job_id=job_id, detail=detail
        )
        session.info.setdefault("audit", []).append(row)

    async def refusal(
        self, subject: str, action: str, refused: Refused, uid: str | None = None, job_id: str | None = None
    ) -> None:
        async with self._write() as session:
            await self._audit(
                session,
                subject,
                "refuse",
                uid=uid,
                job_id=job_id,
                detail=f"{action}: {refused.status} {refused.detail}",
                outcome="refused",
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

    async def is_revoked(self, serial: str) -> bool:
        """Read on every request (an indexed lookup), so a revocation holds at once on every replica."""
        async with self._sessions() as session:
            return await session.get(Revoked, serial) is not None

    async def revoke(self, subject: str, serial: str, revoked_subject: str = "", reason: str = "") -> bool:
        """Revoke the certificate ``serial`` (by ``subject``, the person or tool); False when it
        was revoked already."""
        async with self._write() as session:
            if await session.get(Revoked, serial) is not None:
                return False
            session.add(Revoked(serial=serial, subject=revoked_subject, reason=reason, revoked=now()))
            await self._audit(
                session, subject, "cert_revoke", detail=f"serial {serial} {revoked_subject} {reason}"
            )
        return True

    async def maintenance(self, subject: str, seconds: int) -> None:
        """Provisioning answers 503 with Retry-After for ``seconds`` (0 ends it)."""
        async with self._write() as session:
            await self._audit(session, subject, "maintenance", detail=f"{seconds} s")
        self.unavailable_until = time.monotonic() + seconds

    # -- devices ---------------------------------------------------------------------------------

    async def register(self, subject: str, uid: str, line: str = "") -> dict[str, Any]:
        """The board's OBJ_ID, made at its first registration; the board belongs to ``line``."""

        async def work() -> Device:
            async with self._write() as session:
                fresh = await self._inserted(
                    session, Device, uid=uid, obj_id=secrets.token_hex(16), created=now(), line=line
                )
                device = await session.get(Device, uid, populate_existing=True)
                assert device is not None  # noqa: S101  # inserted or there before
                if line and device.line and device.line != line:
                    raise Refused(
                        403, "another line's board", f"UID {uid} was registered by line {device.line}", "uid"
                    )
                if line and not device.line:  # registered before lines (or by an admin): claimed
                    device.line = line
                await self._audit(session, subject, "register", uid=uid, detail="new" if fresh else "repeat")
            return device

        device = await self._retrying(work)
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
        )
        async with self._write() as session:
            session.add(job)
            await self._audit(
                session,
                subject,
                "job_create",
                job_id=job.id,
                detail=f"quantity {spec.quantity} lines {job.lines or 'any'}",
            )
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
            used = await self._used(session, job_id)
            return {
                "id": job.id,
                "pdid": job.pdid,
                "state": job.state,
                "quantity": job.quantity,
                "used": used,
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
        async with self._write() as session:
            job = await session.get(Job, job_id)
            if job is None:
                raise Refused(404, "unknown job", f"job {job_id} does not exist", "job_id")
            job.state = "closed"
            await self._audit(session, subject, "job_close", job_id=job_id)
        return await self.job(job_id)

    @staticmethod
    async def _used(session: AsyncSession, job_id: str) -> int:
        return int(
            (await session.execute(select(func.count()).where(JobDevice.job_id == job_id))).scalar_one()
        )

    # -- keys and images ---------------------------------------------------------------------------

    async def _checked(self, session: AsyncSession, ask: _Ask, *, lock: bool = False) -> Job:
        """The job, if it is open and serves the line and the board is registered, with this
        OBJ_ID, by the line; ``lock``: the job's row locked to the transaction's end."""
        job_id, uid, obj_id, line = ask.job_id, ask.uid, ask.obj_id, ask.line
        job = await session.get(Job, job_id, with_for_update=lock, populate_existing=lock)
        if job is None:
            raise Refused(404, "unknown job", f"job {job_id} does not exist", "job_id")
        if job.state != "open":
            raise Refused(409, "job closed", f"job {job_id} is closed", "job_id")
        if not job.serves(line):
            raise Refused(403, "not this line's job", f"job {job_id} serves lines {job.lines}, not {line!r}")
        device = await session.get(Device, uid)
        if device is None:
            raise Refused(404, "unknown device", f"UID {uid} is not registered", "uid")
        if device.obj_id != obj_id:
            raise Refused(
                409, "OBJ_ID mismatch", f"OBJ_ID {obj_id} is not the one registered for UID {uid}", "obj_id"
            )
        if line and device.line and device.line != line:
            raise Refused(
                403, "another line's board", f"UID {uid} was registered by line {device.line}", "uid"
            )
        return job

    async def _count(self, session: AsyncSession, job: Job, uid: str, *, take: bool = True) -> None:
        """The board's quota slot under ``job`` (``take``: taken now if it has none); refused past
        the quota."""
        if await session.get(JobDevice, (job.id, uid)) is not None:
            return
        if await self._used(session, job.id) >= job.quantity:
            raise Refused(
                409,
                "quota exhausted",
                f"job {job.id} has made all {job.quantity} boards; UID {uid} is not one of them",
                "uid",
            )
        if take:
            session.add(JobDevice(job_id=job.id, uid=uid, counted=now()))
            await session.flush()

    @staticmethod
    async def _stored(session: AsyncSession, ask: _Ask) -> tuple[Any, Any]:
        """(the key, the signed image under the job) for (UID, purpose): None where not made."""
        job_id, uid, purpose = ask.job_id, ask.uid, ask.purpose
        key = await session.scalar(
            select(DeviceKey).where(DeviceKey.uid == uid, DeviceKey.purpose == purpose)
        )
        image = await session.scalar(
            select(SignedImage).where(
                SignedImage.uid == uid, SignedImage.purpose == purpose, SignedImage.job_id == job_id
            )
        )
        return key, image

    def _sign(self, job: Job, purpose: str, handle: bytes, public_key: bytes) -> bytes:
        slot = getattr(self.profile, f"{purpose}_slot")
        body = job.bootloader_body if purpose == "bootloader" else job.application_body
        return mcuboot.build(
            body,
            signer=lambda digest: self.keystore.sign_digest(handle, digest),
            public_key=public_key_from_raw(public_key),
            version=mcuboot.Version.parse(self._version(job, purpose)),
            key_format=mcuboot.KeyFormat.HASH if purpose == "bootloader" else mcuboot.KeyFormat.FULL,
            header_size=slot.header_size,
            load_addr=slot.base,
        )

    @staticmethod
    def _version(job: Job, purpose: str) -> str:
        return job.bootloader_version if purpose == "bootloader" else job.application_version

    async def _serve(self, ask: _Ask, *, with_image: bool) -> dict[str, Any]:
        """The board's key for the purpose (made once, ever) and, ``with_image``, its image signed
        under the job (made once per job). What is missing is made first, outside any
        transaction; the write then keeps what another request stored first, if any."""
        made: NewKey | None = None
        signed: tuple[bytes, bytes] | None = None  # (public key it was signed for, image)
        for _ in range(4):
            async with self._sessions() as session:
                job = await self._checked(session, ask)
                key, image = await self._stored(session, ask)
                if key is None:
                    await self._count(session, job, ask.uid, take=False)  # past the quota: no work
            if key is None:
                made = made or await anyio.to_thread.run_sync(self.keystore.generate)
                assert made is not None  # noqa: S101  # (for the type checker)
                handle, public = made.handle, made.public_key
            else:
                handle, public = key.handle, key.public_key
            if with_image and image is None and (signed is None or signed[0] != public):
                signed = (
                    public,
                    await anyio.to_thread.run_sync(self._sign, job, ask.purpose, handle, public),
                )
            try:
                return await self._retrying(partial(self._keep, ask, made, signed, with_image=with_image))
            except _LostRace:
                continue
        raise Refused(503, "busy", f"UID {ask.uid}: its {ask.purpose} key kept changing; try again")

    async def _keep(
        self, ask: _Ask, made: NewKey | None, signed: tuple[bytes, bytes] | None, *, with_image: bool
    ) -> dict[str, Any]:
        """The write of :meth:`_serve`: the quota slot under the job's row lock, the key and the
        image unless stored first by another request, and the audit rows; the answer."""
        uid, job_id, purpose = ask.uid, ask.job_id, ask.purpose
        async with self._write() as session:
            job = await self._checked(session, ask, lock=True)
            await self._count(session, job, uid)
            key, image = await self._stored(session, ask)
            if key is None and made is not None:
                if await self._inserted(
                    session, DeviceKey, uid=uid, purpose=purpose, public_key=made.public_key,
                    handle=made.handle, keystore=self.keystore.name, created=now(),
                ):  # fmt: skip
                    await self._audit(
                        session, ask.subject, "key_create", uid=uid, job_id=job_id, detail=purpose
                    )
                key, image = await self._stored(session, ask)
            if key is None:  # cannot be: made is set whenever no key was found
                raise _LostRace
            answer: dict[str, Any] = {
                "uid": uid, "obj_id": ask.obj_id, "job_id": job_id, "purpose": purpose,
                "public_key": key.public_key.hex(),
            }  # fmt: skip
            if not with_image:
                await self._audit(session, ask.subject, "key_fetch", uid=uid, job_id=job_id, detail=purpose)
                return answer
            if image is None:
                if signed is None or signed[0] != key.public_key:
                    raise _LostRace  # signed for a key another request stored first
                digest = hashlib.sha256(signed[1]).hexdigest()
                if await self._inserted(
                    session, SignedImage, uid=uid, purpose=purpose, job_id=job_id, image=signed[1],
                    sha256=digest, created=now(),
                ):  # fmt: skip
                    detail = f"{purpose} {self._version(job, purpose)} sha256 {digest}"
                    await self._audit(session, ask.subject, "sign", uid=uid, job_id=job_id, detail=detail)
                _, image = await self._stored(session, ask)
                assert image is not None  # noqa: S101  # ours, or the one that was there first
            answer.update(image=image.image, sha256=image.sha256)
            detail = f"{purpose} sha256 {image.sha256}"
            await self._audit(session, ask.subject, "image_fetch", uid=uid, job_id=job_id, detail=detail)
        return answer

    async def bootloader(
        self, subject: str, job_id: str, uid: str, obj_id: str, line: str = ""
    ) -> dict[str, Any]:
        return await self._serve(_Ask(subject, line, job_id, uid, obj_id, "bootloader"), with_image=True)

    async def application_key(
        self, subject: str, job_id: str, uid: str, obj_id: str, line: str = ""
    ) -> dict[str, Any]:
        return await self._serve(_Ask(subject, line, job_id, uid, obj_id, "application"), with_image=False)

    async def application(
        self, subject: str, job_id: str, uid: str, obj_id: str, line: str = ""
    ) -> dict[str, Any]:
        return await self._serve(_Ask(subject, line, job_id, uid, obj_id, "application"), with_image=True)

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
    ) -> dict[str, Any]:
        """A board's outcome, from the line that provisioned it, on an open job (a PASS only for
        a board counted under the job); a repeat is taken once."""

        async def work() -> None:
            async with self._write() as session:
                await self._checked(session, _Ask(subject, line, job_id, uid, obj_id, ""))
                if outcome == "PASS" and await session.get(JobDevice, (job_id, uid)) is None:
                    raise Refused(
                        409,
                        "not provisioned",
                        f"UID {uid} has no key under job {job_id}: no PASS for it",
                        "uid",
                    )
                await self._inserted(
                    session, Result, uid=uid, job_id=job_id, outcome=outcome, step=step, reason=reason,
                    reported_by=subject, created=now(),
                )  # fmt: skip
                detail = f"{outcome} step {step}: {reason}"[:500]
                await self._audit(session, subject, "result", uid=uid, job_id=job_id, detail=detail)

        await self._retrying(work)
        return {"uid": uid, "job_id": job_id, "outcome": outcome, "step": step, "reason": reason}


def new_master_key() -> bytes:
    return os.urandom(32)
