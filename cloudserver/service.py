"""What the cloud does, independent of HTTP: every call takes the caller's certificate subject.

Every action and its audit row commit in one transaction: if the audit row cannot be written, the
action does not happen. Audit actions: ``register``, ``key_create``, ``sign``, ``image_fetch``,
``key_fetch``, ``result``, ``job_create``, ``job_close`` and ``refuse`` (any 4xx), one row each time
they happen. Keys are made once per (UID, purpose) forever; a signed image is made once per (UID,
purpose, job) and the same bytes are served on every repeat (ECDSA signatures are randomised).
Mutations are serialised in the process; the unique constraints keep replicas honest.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
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
from cloudserver.keystore import KeyStore
from nuwire import mcuboot
from nuwire.keys import public_key_from_raw
from nuwire.profiles import TargetProfile

PURPOSES = ("bootloader", "application")


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


class Service:
    def __init__(self, engine: AsyncEngine, keystore: KeyStore, profile: TargetProfile) -> None:
        self.engine = engine
        self.keystore = keystore
        self.profile = profile
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._lock = anyio.Lock()
        self.unavailable_until = 0.0
        """Until this time.monotonic(), provisioning answers 503 (planned maintenance)."""

    def __repr__(self) -> str:
        return f"<Service keystore={self.keystore.name} profile={self.profile.name}>"

    # -- audit ------------------------------------------------------------------------------------

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
        """One audit row, chained to the last (every caller holds ``_lock``: one chain, no fork)."""
        last = await session.scalar(select(AuditRow.hash).order_by(AuditRow.id.desc()).limit(1))
        row = AuditRow(
            time=now(), subject=subject, action=action, outcome=outcome, uid=uid, job_id=job_id, detail=detail
        )
        row.hash = chain(last or "", row)
        session.add(row)

    async def refusal(
        self, subject: str, action: str, refused: Refused, uid: str | None = None, job_id: str | None = None
    ) -> None:
        async with self._lock, self._sessions.begin() as session:
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
        async with self._lock, self._sessions.begin() as session:
            if await session.get(Revoked, serial) is not None:
                return False
            session.add(Revoked(serial=serial, subject=revoked_subject, reason=reason, revoked=now()))
            await self._audit(
                session, subject, "cert_revoke", detail=f"serial {serial} {revoked_subject} {reason}"
            )
        return True

    async def maintenance(self, subject: str, seconds: int) -> None:
        """Provisioning answers 503 with Retry-After for ``seconds`` (0 ends it)."""
        async with self._lock, self._sessions.begin() as session:
            await self._audit(session, subject, "maintenance", detail=f"{seconds} s")
        self.unavailable_until = time.monotonic() + seconds

    # -- devices ---------------------------------------------------------------------------------

    async def register(self, subject: str, uid: str) -> dict[str, Any]:
        async with self._lock, self._sessions.begin() as session:
            device = await session.get(Device, uid)
            created = device is None
            if device is None:
                device = Device(uid=uid, obj_id=secrets.token_hex(16), created=now())
                session.add(device)
            await self._audit(session, subject, "register", uid=uid, detail="new" if created else "repeat")
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
        )
        async with self._lock, self._sessions.begin() as session:
            session.add(job)
            await self._audit(
                session, subject, "job_create", job_id=job.id, detail=f"quantity {spec.quantity}"
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
            }

    async def close_job(self, subject: str, job_id: str) -> dict[str, Any]:
        async with self._lock, self._sessions.begin() as session:
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

    async def _checked(self, session: AsyncSession, job_id: str, uid: str, obj_id: str) -> Job:
        job = await session.get(Job, job_id)
        if job is None:
            raise Refused(404, "unknown job", f"job {job_id} does not exist", "job_id")
        if job.state != "open":
            raise Refused(409, "job closed", f"job {job_id} is closed", "job_id")
        device = await session.get(Device, uid)
        if device is None:
            raise Refused(404, "unknown device", f"UID {uid} is not registered", "uid")
        if device.obj_id != obj_id:
            raise Refused(
                409, "OBJ_ID mismatch", f"OBJ_ID {obj_id} is not the one registered for UID {uid}", "obj_id"
            )
        return job

    async def _key(self, session: AsyncSession, subject: str, job: Job, uid: str, purpose: str) -> DeviceKey:
        if await session.get(JobDevice, (job.id, uid)) is None:
            used = await self._used(session, job.id)
            if used >= job.quantity:
                raise Refused(
                    409,
                    "quota exhausted",
                    f"job {job.id} has made all {job.quantity} boards; UID {uid} is not one of them",
                    "uid",
                )
            session.add(JobDevice(job_id=job.id, uid=uid, counted=now()))
        key = (
            await session.execute(select(DeviceKey).where(DeviceKey.uid == uid, DeviceKey.purpose == purpose))
        ).scalar()
        if key is None:
            made = await anyio.to_thread.run_sync(self.keystore.generate)
            key = DeviceKey(
                uid=uid,
                purpose=purpose,
                public_key=made.public_key,
                handle=made.handle,
                keystore=self.keystore.name,
                created=now(),
            )
            session.add(key)
            await self._audit(session, subject, "key_create", uid=uid, job_id=job.id, detail=purpose)
        return key

    async def _image(
        self, session: AsyncSession, subject: str, job: Job, key: DeviceKey, purpose: str
    ) -> SignedImage:
        found = (
            await session.execute(
                select(SignedImage).where(
                    SignedImage.uid == key.uid, SignedImage.purpose == purpose, SignedImage.job_id == job.id
                )
            )
        ).scalar()
        if found is not None:
            return found
        slot = getattr(self.profile, f"{purpose}_slot")
        body = job.bootloader_body if purpose == "bootloader" else job.application_body
        version = job.bootloader_version if purpose == "bootloader" else job.application_version
        handle = key.handle

        def sign() -> bytes:
            return mcuboot.build(
                body,
                signer=lambda digest: self.keystore.sign_digest(handle, digest),
                public_key=public_key_from_raw(key.public_key),
                version=mcuboot.Version.parse(version),
                key_format=mcuboot.KeyFormat.HASH if purpose == "bootloader" else mcuboot.KeyFormat.FULL,
                header_size=slot.header_size,
                load_addr=slot.base,
            )

        image = await anyio.to_thread.run_sync(sign)
        signed = SignedImage(
            uid=key.uid,
            purpose=purpose,
            job_id=job.id,
            image=image,
            sha256=hashlib.sha256(image).hexdigest(),
            created=now(),
        )
        session.add(signed)
        await self._audit(
            session,
            subject,
            "sign",
            uid=key.uid,
            job_id=job.id,
            detail=f"{purpose} {version} sha256 {signed.sha256}",
        )
        return signed

    async def _serve(
        self, subject: str, job_id: str, uid: str, obj_id: str, *, purpose: str, with_image: bool
    ) -> dict[str, Any]:
        for attempt in range(2):
            try:
                async with self._lock, self._sessions.begin() as session:
                    job = await self._checked(session, job_id, uid, obj_id)
                    key = await self._key(session, subject, job, uid, purpose)
                    answer: dict[str, Any] = {
                        "uid": uid,
                        "obj_id": obj_id,
                        "job_id": job_id,
                        "purpose": purpose,
                        "public_key": key.public_key.hex(),
                    }
                    if with_image:
                        signed = await self._image(session, subject, job, key, purpose)
                        answer.update(image=signed.image, sha256=signed.sha256)
                        await self._audit(
                            session,
                            subject,
                            "image_fetch",
                            uid=uid,
                            job_id=job_id,
                            detail=f"{purpose} sha256 {signed.sha256}",
                        )
                    else:
                        await self._audit(
                            session, subject, "key_fetch", uid=uid, job_id=job_id, detail=purpose
                        )
                return answer
            except IntegrityError:
                if attempt:  # another replica won the race twice: give up with a retryable error
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def bootloader(self, subject: str, job_id: str, uid: str, obj_id: str) -> dict[str, Any]:
        return await self._serve(subject, job_id, uid, obj_id, purpose="bootloader", with_image=True)

    async def application_key(self, subject: str, job_id: str, uid: str, obj_id: str) -> dict[str, Any]:
        return await self._serve(subject, job_id, uid, obj_id, purpose="application", with_image=False)

    async def application(self, subject: str, job_id: str, uid: str, obj_id: str) -> dict[str, Any]:
        return await self._serve(subject, job_id, uid, obj_id, purpose="application", with_image=True)

    async def result(
        self, subject: str, job_id: str, uid: str, obj_id: str, *, outcome: str, step: int, reason: str
    ) -> dict[str, Any]:
        async with self._lock, self._sessions.begin() as session:
            job = await session.get(Job, job_id)
            if job is None:
                raise Refused(404, "unknown job", f"job {job_id} does not exist", "job_id")
            device = await session.get(Device, uid)
            if device is None or device.obj_id != obj_id:
                raise Refused(
                    409, "OBJ_ID mismatch", f"UID {uid} with OBJ_ID {obj_id} is not registered", "obj_id"
                )
            exists = (
                await session.execute(
                    select(Result).where(
                        Result.uid == uid,
                        Result.job_id == job_id,
                        Result.outcome == outcome,
                        Result.step == step,
                        Result.reason == reason,
                    )
                )
            ).scalar()
            if exists is None:
                session.add(
                    Result(
                        uid=uid,
                        job_id=job_id,
                        outcome=outcome,
                        step=step,
                        reason=reason,
                        reported_by=subject,
                        created=now(),
                    )
                )
            await self._audit(
                session,
                subject,
                "result",
                uid=uid,
                job_id=job_id,
                detail=f"{outcome} step {step}: {reason}"[:500],
            )
        return {"uid": uid, "job_id": job_id, "outcome": outcome, "step": step, "reason": reason}


def new_master_key() -> bytes:
    return os.urandom(32)
