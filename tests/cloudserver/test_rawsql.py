"""SQLite's request paths on sqlite3 (cloudserver.rawsql) write and read rows as SQLAlchemy does."""

from __future__ import annotations

import datetime
from pathlib import Path

import anyio
import pytest
from sqlalchemy import insert, select

from cloudserver.db import engine_for, migrate
from cloudserver.rawsql import Statements, connect
from cloudserver.service import DEVICE, DEVICES

MOMENT = datetime.datetime(2026, 12, 4, 17, 45, 27, tzinfo=datetime.UTC)


def _migrated(path: Path) -> None:
    async def run() -> None:
        engine = engine_for(f"sqlite+aiosqlite:///{path}")
        await migrate(engine)
        await engine.dispose()

    anyio.run(run)


def test_rows_written_by_either_path_read_the_same_by_either(tmp_path: Path) -> None:
    path = tmp_path / "cloud.db"
    _migrated(path)
    db, statements = connect(str(path)), Statements()
    later = MOMENT.astimezone(datetime.timezone(datetime.timedelta(hours=8)))  # the same moment
    statements.rows(db, insert(DEVICES), {"uid": "A" * 24, "obj_id": "1" * 32, "created": later, "line": "a"})

    async def through_sqlalchemy() -> datetime.datetime:
        engine = engine_for(f"sqlite+aiosqlite:///{path}")
        async with engine.begin() as conn:
            mine = (
                await conn.execute(select(DEVICES.c.created).where(DEVICES.c.uid == "A" * 24))
            ).scalar_one()
            await conn.execute(
                insert(DEVICES).values(uid="B" * 24, obj_id="2" * 32, created=MOMENT, line="b")
            )
        await engine.dispose()
        return mine  # type: ignore[no-any-return]  # a row of a Core select

    assert anyio.run(through_sqlalchemy) == MOMENT
    (row,) = statements.rows(db, DEVICE, {"uid": "B" * 24})
    assert row.created == MOMENT
    assert row.created.tzinfo is datetime.UTC
    assert (row.uid, row.obj_id, row.line) == ("B" * 24, "2" * 32, "b")


def test_a_missing_parameter_a_naive_moment_or_an_unnamed_column_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cloud.db"
    _migrated(path)
    db, statements = connect(str(path)), Statements()
    with pytest.raises(ValueError, match="no value for parameter 'uid' of SELECT"):
        statements.rows(db, DEVICE, {})
    naive = {"uid": "C" * 24, "obj_id": "3" * 32, "created": MOMENT.replace(tzinfo=None), "line": ""}
    with pytest.raises(ValueError, match="naive datetime"):
        statements.rows(db, insert(DEVICES), naive)
    with pytest.raises(ValueError, match=r"insert into devices names no \['line'\]"):
        statements.rows(db, insert(DEVICES), {"uid": "C" * 24, "obj_id": "3" * 32, "created": MOMENT})
