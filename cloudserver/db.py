"""Storage: SQLAlchemy 2 (async). SQLite for one server (the default); PostgreSQL
(``postgresql+asyncpg://...``, the ``postgres`` extra) for a fleet of replicas.

Idempotency lives in the schema: one key per (UID, purpose) forever, one signed image per (UID,
purpose, job), one quota slot per (job, UID); the quota itself is counted under a row lock on the
job (:mod:`cloudserver.service`). Every time is UTC and time-zone aware (:class:`UtcDateTime`).
The schema is Alembic's (cloudserver/migrations/): :func:`migrate` brings a database to the head
revision under a lock (PostgreSQL: an advisory lock; SQLite: a lock file beside it), so replicas
that start together do not race.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import time
from pathlib import Path
from typing import Any, ClassVar

import anyio
from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MIGRATIONS = Path(__file__).parent / "migrations"
HEAD = "0003"
"""The newest revision in MIGRATIONS (a test checks that Alembic agrees)."""
MIGRATE_LOCK = 0x6E7570726F76  # "nuprov": the advisory lock replicas take to migrate


_NOW = (0, datetime.datetime.fromtimestamp(0, datetime.UTC))


def now() -> datetime.datetime:
    """This second, in UTC (one object a second: a request path asks several times a request)."""
    global _NOW  # noqa: PLW0603  # one (second, moment) pair, replaced whole: safe across threads
    second, moment = _NOW
    if second != (this := int(time.time())):
        second, moment = _NOW = (this, datetime.datetime.fromtimestamp(this, datetime.UTC))
    return moment


class UtcDateTime(TypeDecorator[datetime.datetime]):
    """A moment in UTC: ``timestamp with time zone`` on PostgreSQL, naive UTC text on SQLite;
    always aware UTC to the code. A naive value is refused (it would mean local time somewhere)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: the database holds UTC moments only")
        utc = value.astimezone(datetime.UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=datetime.UTC) if value.tzinfo is None else value.astimezone(datetime.UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime.datetime: UtcDateTime}


class Device(Base):
    __tablename__ = "devices"
    uid: Mapped[str] = mapped_column(String(24), primary_key=True)
    obj_id: Mapped[str] = mapped_column(String(32), unique=True)
    created: Mapped[datetime.datetime]
    line: Mapped[str] = mapped_column(String(64), default="", server_default="")
    """The line whose station registered it ('' before lines): only that line may provision it."""


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
    lines: Mapped[str] = mapped_column(Text, default="", server_default="")
    """The lines that may draw on it, comma-separated; '' is every line."""
    used: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Boards counted against ``quantity`` (rows in job_devices), kept under the job's row lock."""

    def serves(self, line: str) -> bool:
        return not self.lines or line in self.lines.split(",")


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
    """Append-only: the server never updates or deletes a row (a trigger refuses it, and on
    PostgreSQL the service's role has no UPDATE or DELETE on it), and each row's ``hash`` chains
    it to the one before (:func:`chain`), so a row changed or removed behind the server's back
    shows (``cloudserver audit verify``)."""

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


def chain(before: str, row: Any) -> str:
    """SHA-256 (hex) of the hash of the row before and this row's fields, canonically (``row``:
    anything with an audit row's attributes)."""
    moment = row.time if row.time.tzinfo is None else row.time.astimezone(datetime.UTC).replace(tzinfo=None)
    # (naive UTC, as SQLite held it when the chain began: the same hash on either database)
    fields = [moment.isoformat(), row.subject, row.action, row.outcome, row.uid, row.job_id, row.detail]
    return hashlib.sha256(f"{before}\n{json.dumps(fields)}".encode()).hexdigest()


def _legacy(connection: Connection) -> None:
    """A database from the numbered runner (``schema_version`` 1-3, before Alembic): its missing
    steps, then stamped as revision 0001, which is schema version 3."""
    tables = inspect(connection).get_table_names()
    if "schema_version" not in tables or "alembic_version" in tables:
        return
    version = int(connection.execute(text("SELECT MAX(version) FROM schema_version")).scalar() or 0)
    if version < 2:  # the audit hash chain: a column, filled for the rows there (triggers step aside)
        for verb in ("update", "delete"):
            connection.execute(text(f"DROP TRIGGER IF EXISTS audit_no_{verb}"))
        if "hash" not in [c["name"] for c in inspect(connection).get_columns("audit")]:
            connection.execute(text("ALTER TABLE audit ADD COLUMN hash VARCHAR(64) NOT NULL DEFAULT ''"))
        before = ""
        for row in connection.execute(select(AuditRow).order_by(AuditRow.id)).all():
            before = chain(before, row)  # (a Row with the same fields)
            connection.execute(text("UPDATE audit SET hash = :h WHERE id = :i"), {"h": before, "i": row.id})
        append_only(connection)
    if version < 3:
        Base.metadata.tables["revoked"].create(connection, checkfirst=True)
    connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
    connection.execute(text("INSERT INTO alembic_version VALUES ('0001')"))
    connection.execute(text("DROP TABLE schema_version"))


def append_only(connection: Connection) -> None:
    """Triggers that refuse UPDATE and DELETE on the audit log."""
    if connection.dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            connection.execute(
                text(
                    f"CREATE TRIGGER audit_no_{verb.lower()} BEFORE {verb} ON audit "
                    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
                )
            )
        return
    connection.execute(
        text(
            "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$"
        )
    )
    connection.execute(
        text(
            "CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON audit "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"
        )
    )


def _upgrade(connection: Connection, revision: str) -> str:
    from alembic import command  # noqa: PLC0415  # Alembic loads its scripts: only when migrating
    from alembic.config import Config  # noqa: PLC0415
    from alembic.migration import MigrationContext  # noqa: PLC0415

    if connection.dialect.name == "postgresql":  # held to the transaction's end: one replica migrates
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATE_LOCK})
    _legacy(connection)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)
    return str(MigrationContext.configure(connection).get_current_revision())


async def migrate(engine: AsyncEngine, revision: str = "head") -> str:
    """Bring the database to ``revision`` (Alembic's); the revision it is at afterwards."""
    lock = None
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if database and database != ":memory:":  # SQLite: DDL is not under its write lock; a file is
        lock = Path(f"{database}.migrate-lock").open("w")  # noqa: ASYNC230, SIM115  # tiny, local
        await anyio.to_thread.run_sync(fcntl.flock, lock, fcntl.LOCK_EX)
    try:
        async with engine.begin() as connection:
            return await connection.run_sync(_upgrade, revision)
    finally:
        if lock is not None:
            lock.close()


PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
)
"""Every SQLite connection's, whichever driver opens it."""


def _sqlite_pragmas(connection: Any, _record: object) -> None:
    cursor = connection.cursor()
    for pragma in PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


def engine_for(url: str) -> AsyncEngine:
    """An engine for ``url``. PostgreSQL's pool holds 20 connections and no more: a request
    beyond waits for one (reads are one statement or two; writes are committed in batches of
    one connection), instead of opening and closing a connection of its own each time (a new
    backend process and a TLS handshake for every request past the twentieth)."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=20, max_overflow=0, pool_pre_ping=True)


__all__ = [
    "AuditRow",
    "Device",
    "DeviceKey",
    "Job",
    "JobDevice",
    "Result",
    "Revoked",
    "SignedImage",
    "append_only",
    "engine_for",
    "migrate",
    "select",
]
