"""Storage: SQLAlchemy 2 (async). SQLite by default; PostgreSQL is a URL change
(``postgresql+asyncpg://...``), since only portable types and constraints are used.

Idempotency lives in the schema: one key per (UID, purpose) forever, one signed image per (UID,
purpose, job), one quota slot per (job, UID). Migrations are numbered steps recorded in
``schema_version``; :func:`migrate` applies the missing ones at start.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Awaitable, Callable

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


class Base(DeclarativeBase):
    pass


class Device(Base):
    __tablename__ = "devices"
    uid: Mapped[str] = mapped_column(String(24), primary_key=True)
    obj_id: Mapped[str] = mapped_column(String(32), unique=True)
    created: Mapped[datetime.datetime]


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    pdid: Mapped[int] = mapped_column(BigInteger)
    bootloader_body: Mapped[bytes] = mapped_column(LargeBinary)
    bootloader_version: Mapped[str] = mapped_column(String(32))
    application_body: Mapped[bytes] = mapped_column(LargeBinary)
    application_version: Mapped[str] = mapped_column(String(32))
    quantity: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(8), default="open")
    created: Mapped[datetime.datetime]
    created_by: Mapped[str] = mapped_column(Text)


class JobDevice(Base):
    """A board counted against a job's quota: once, when its first key pair is made under the job."""

    __tablename__ = "job_devices"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    uid: Mapped[str] = mapped_column(ForeignKey("devices.uid"), primary_key=True)
    counted: Mapped[datetime.datetime]


class DeviceKey(Base):
    __tablename__ = "device_keys"
    __table_args__ = (UniqueConstraint("uid", "purpose"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(ForeignKey("devices.uid"))
    purpose: Mapped[str] = mapped_column(String(16))
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    handle: Mapped[bytes] = mapped_column(LargeBinary)
    keystore: Mapped[str] = mapped_column(String(16))
    created: Mapped[datetime.datetime]


class SignedImage(Base):
    __tablename__ = "signed_images"
    __table_args__ = (UniqueConstraint("uid", "purpose", "job_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(ForeignKey("devices.uid"))
    purpose: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    image: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime.datetime]


class Result(Base):
    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("uid", "job_id", "outcome", "step", "reason"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(ForeignKey("devices.uid"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    outcome: Mapped[str] = mapped_column(String(10))
    step: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(500))
    reported_by: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime.datetime]


class AuditRow(Base):
    """Append-only: the server never updates or deletes a row (a trigger refuses it on SQLite),
    and each row's ``hash`` chains it to the one before (:func:`chain`), so a row changed or
    removed behind the server's back shows (``cloudserver audit verify``)."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime.datetime]
    subject: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    uid: Mapped[str | None] = mapped_column(String(24), nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    hash: Mapped[str] = mapped_column(String(64), default="")


class Revoked(Base):
    """A client certificate the cloud no longer takes (``cloudserver cert revoke``), by serial."""

    __tablename__ = "revoked"
    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    """Upper-case hex, no separators, as ``openssl x509 -serial`` prints it."""
    subject: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    revoked: Mapped[datetime.datetime]


def chain(before: str, row: AuditRow) -> str:
    """SHA-256 (hex) of the hash of the row before and this row's fields, canonically."""
    moment = row.time if row.time.tzinfo is None else row.time.astimezone(datetime.UTC).replace(tzinfo=None)
    fields = [moment.isoformat(), row.subject, row.action, row.outcome, row.uid, row.job_id, row.detail]
    return hashlib.sha256(f"{before}\n{json.dumps(fields)}".encode()).hexdigest()


async def _v1(connection: AsyncConnection) -> None:
    await connection.run_sync(Base.metadata.create_all)  # a new database: the chain's column too
    if connection.dialect.name == "sqlite":
        await _append_only(connection)


async def _v2(connection: AsyncConnection) -> None:
    """The audit hash chain: a column, filled for the rows already there (the SQLite triggers
    step aside for it)."""
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        for verb in ("update", "delete"):
            await connection.execute(text(f"DROP TRIGGER IF EXISTS audit_no_{verb}"))
    columns = await connection.run_sync(lambda sync: [c["name"] for c in inspect(sync).get_columns("audit")])
    if "hash" not in columns:  # a database made before the chain
        await connection.execute(text("ALTER TABLE audit ADD COLUMN hash VARCHAR(64) NOT NULL DEFAULT ''"))
    before = ""
    for row in (await connection.execute(select(AuditRow).order_by(AuditRow.id))).all():
        before = chain(before, row)  # type: ignore[arg-type]  # a Row with the same fields
        await connection.execute(text("UPDATE audit SET hash = :h WHERE id = :i"), {"h": before, "i": row.id})
    if sqlite:
        await _append_only(connection)


async def _append_only(connection: AsyncConnection) -> None:
    for verb in ("UPDATE", "DELETE"):
        await connection.execute(
            text(
                f"CREATE TRIGGER audit_no_{verb.lower()} BEFORE {verb} ON audit "
                "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
            )
        )


async def _v3(connection: AsyncConnection) -> None:
    """Certificate revocation."""
    await connection.run_sync(lambda sync: Base.metadata.tables["revoked"].create(sync, checkfirst=True))


MIGRATIONS: list[Callable[[AsyncConnection], Awaitable[None]]] = [_v1, _v2, _v3]


async def migrate(engine: AsyncEngine) -> int:
    """Apply the migrations the database lacks; the schema version afterwards."""
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
        found = (await connection.execute(text("SELECT MAX(version) FROM schema_version"))).scalar()
        version = int(found or 0)
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            await step(connection)
            await connection.execute(text("INSERT INTO schema_version (version) VALUES (:v)"), {"v": number})
            version = number
    return version


def engine_for(url: str) -> AsyncEngine:
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(connection: object, _record: object) -> None:
            cursor = connection.cursor()  # type: ignore[attr-defined]
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


__all__ = [
    "AuditRow",
    "Device",
    "DeviceKey",
    "Job",
    "JobDevice",
    "Result",
    "Revoked",
    "SignedImage",
    "engine_for",
    "migrate",
    "select",
]
