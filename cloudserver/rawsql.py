"""SQLite's request paths on the stdlib's sqlite3, with the statements SQLAlchemy built.

The service defines each statement once in SQLAlchemy Core, for PostgreSQL and SQLite alike. On
PostgreSQL they run through SQLAlchemy (asyncpg underneath). On SQLite each is compiled once to
sqlite3's SQL and then run on the driver directly: SQLAlchemy's execution context, cache lookups
and result objects cost about 0.2 ms a statement on the line's cloud machine, several times the
indexed read itself. Values are bound as SQLAlchemy binds them (a moment as UTC text in its
format, :data:`MOMENT`), so rows written either way read the same either way.
"""

from __future__ import annotations

import datetime
import sqlite3
from collections import namedtuple
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Insert, Integer
from sqlalchemy.dialects import sqlite as sqlite_dialect

from cloudserver.db import PRAGMAS, UtcDateTime

DIALECT = sqlite_dialect.dialect(paramstyle="qmark")
MOMENT = "%Y-%m-%d %H:%M:%S.%f"
"""How SQLAlchemy's SQLite dialect stores a DATETIME (naive, here always UTC)."""


def connect(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are begun explicitly) with the server's pragmas."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    for pragma in PRAGMAS:
        db.execute(pragma)
    return db


_LAST = (datetime.datetime.fromtimestamp(0, datetime.UTC), "1970-01-01 00:00:00.000000")


def _moment(value: datetime.datetime | None) -> str | None:
    global _LAST  # noqa: PLW0603  # the last one, replaced whole: moments repeat within a second
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value.isoformat()}: the database holds UTC moments only")
    last, text = _LAST
    if value != last:
        text = value.astimezone(datetime.UTC).strftime(MOMENT)
        _LAST = (value, text)
    return text


class _Compiled:
    """One statement as sqlite3 runs it: its SQL, the order of its parameters, the values it
    bound itself, and a row type named as its columns (moments read back as aware UTC)."""

    def __init__(self, statement: Any, keys: Sequence[str] | None) -> None:
        if isinstance(statement, Insert) and keys is not None:
            table = statement.table
            unnamed = {c.name for c in table.columns if not (c.primary_key and isinstance(c.type, Integer))}
            if unnamed - set(keys):  # SQLAlchemy would fill Python-side defaults; this path does not
                raise ValueError(f"insert into {table.name} names no {sorted(unnamed - set(keys))}")
        compiled = statement.compile(dialect=DIALECT, column_keys=list(keys) if keys is not None else None)
        self.statement = statement  # held: the cache is keyed by its id
        self.sql = compiled.string
        self.names = tuple(compiled.positiontup or ())
        self.moment_parameters = [
            i for i, name in enumerate(self.names) if isinstance(compiled.binds[name].type, UtcDateTime)
        ]
        self.defaults = {  # what the statement binds itself; any other parameter must be given
            name: value for name, value in compiled.params.items() if not compiled.binds[name].required
        }
        columns = getattr(statement, "selected_columns", None)
        if columns is None:
            columns = statement.exported_columns  # RETURNING, or none
        self.row: Any = namedtuple("Row", list(columns.keys()))  # type: ignore[misc]  # names known at run time
        self.moments = [i for i, column in enumerate(columns) if isinstance(column.type, UtcDateTime)]

    def parameters(self, given: Mapping[str, Any]) -> list[Any]:
        try:
            values = [given[name] if name in given else self.defaults[name] for name in self.names]
        except KeyError as missing:
            raise ValueError(f"no value for parameter {missing} of {self.sql.split()[0]}") from None
        for i in self.moment_parameters:
            values[i] = _moment(values[i])
        return values

    def rows(self, cursor: sqlite3.Cursor) -> list[Any]:
        rows = cursor.fetchall()
        if self.moments:
            rows = [list(row) for row in rows]
            for row in rows:
                for i in self.moments:
                    if row[i] is not None:
                        row[i] = datetime.datetime.fromisoformat(row[i]).replace(tzinfo=datetime.UTC)
        return [self.row._make(row) for row in rows]


class Statements:
    """The compiled statements, each made at its first use."""

    def __init__(self) -> None:
        self._compiled: dict[tuple[int, tuple[str, ...] | None], _Compiled] = {}

    def _get(self, statement: Any, given: Mapping[str, Any]) -> _Compiled:
        keys = tuple(given) if isinstance(statement, Insert) else None  # an insert's columns: those given
        key = (id(statement), keys)
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = _Compiled(statement, keys)
        return found

    def rows(
        self, db: sqlite3.Connection, statement: Any, given: Mapping[str, Any] | None = None
    ) -> list[Any]:
        given = given or {}
        compiled = self._get(statement, given)
        return compiled.rows(db.execute(compiled.sql, compiled.parameters(given)))

    def many(self, db: sqlite3.Connection, statement: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        """One statement for each of ``rows``, all naming the same columns."""
        compiled = self._get(statement, rows[0])
        db.executemany(compiled.sql, [compiled.parameters(row) for row in rows])
