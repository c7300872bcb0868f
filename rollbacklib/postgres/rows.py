"""Rows one database has and another lacks, found by the table's real primary key.

Typically the kept pre-rollback database against the restored one: the rows a rollback lost.
They are two databases on one server, so no query sees both. Each side streams its key
tuples from a server-side cursor, both in the same order, and the two streams are merged
here: memory stays bounded whatever the table's size, every lost row is counted, and the
first ``limit`` keys are kept to show.

The order has to be one Python compares the same way. Integer and uuid columns are ordered
natively (the primary key's index serves it); any other type by the UTF-8 bytes of its text
form, which PostgreSQL (as bytea) and Python sort alike whatever the database's collation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable

import psycopg
from psycopg import sql

from rollbacklib.postgres import database as db

NO_PRIMARY_KEY = "cannot compare: no primary key"
FETCH_ROWS = 10_000  # key tuples per round trip
_NATIVE_ORDER = {"smallint", "integer", "bigint", "oid", "uuid"}  # Python orders their values as PostgreSQL does


@dataclass
class LostRows:
    """Rows of ``table`` in the first database whose primary key the second does not have."""

    table: str
    key: list[str] = field(default_factory=list)  # the primary key columns, in key order
    count: int | None = None  # every such row; None when the table cannot be compared
    keys: list[tuple] = field(default_factory=list)  # the first of them, in key order
    reason: str = ""  # why the table cannot be compared

    @property
    def comparable(self) -> bool:
        return self.count is not None

    def to_dict(self) -> dict:
        record = asdict(self)
        record["keys"] = [[_plain(v) for v in k] for k in self.keys]
        return record


def _plain(value: object) -> object:
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def lost_rows(first: psycopg.Connection, second: psycopg.Connection, table: str, limit: int = 100) -> LostRows:
    """Primary keys of ``table`` present in ``first`` and absent from ``second``: all counted, ``limit`` listed.

    ``table`` is ``name`` or ``schema.name``. A table without a primary key cannot be compared
    (``reason`` says so); a table the second database lacks has lost every row.
    """
    if not _exists(first, table):
        return LostRows(table, reason=f"cannot compare: no table {table} in the first database")
    key = db.primary_key_columns(first, table)
    if not key:
        return LostRows(table, reason=NO_PRIMARY_KEY)
    ours = _column_types(first, table, key)
    theirs = _column_types(second, table, key) if _exists(second, table) else None
    if theirs is not None and len(theirs) < len(key):
        missing = [c for c in key if c not in theirs]
        return LostRows(table, key, reason=f"cannot compare: the second database's {table} lacks {', '.join(missing)}")
    native = [ours[c] in _NATIVE_ORDER and (theirs is None or theirs[c] == ours[c]) for c in key]
    query = _keys_query(table, key, native)
    with first.transaction(), first.cursor(name="rollbacklib_lost_rows") as a:
        a.itersize = FETCH_ROWS
        a.execute(query)
        if theirs is None:
            count, keys = missing_keys(a, [], limit)
        else:
            with second.transaction(), second.cursor(name="rollbacklib_lost_rows") as b:
                b.itersize = FETCH_ROWS
                b.execute(query)
                count, keys = missing_keys(a, b, limit)
    shown = [tuple(v.decode() if isinstance(v, bytes) else v for v in k) for k in keys]
    return LostRows(table, key, count, shown)


def missing_keys(first: Iterable[tuple], second: Iterable[tuple], limit: int) -> tuple[int, list[tuple]]:
    """Merge two ascending streams of unique keys: how many of ``first`` are not in ``second``, and the first ``limit``."""
    count, keys = 0, []
    others = iter(second)
    other = next(others, None)
    for key in first:
        key = tuple(key)
        while other is not None and tuple(other) < key:
            other = next(others, None)
        if other is not None and tuple(other) == key:
            continue
        count += 1
        if len(keys) < limit:
            keys.append(key)
    return count, keys


def _exists(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (db._ident(table).as_string(conn),)).fetchone()[0]


def _column_types(conn: psycopg.Connection, table: str, columns: list[str]) -> dict[str, str]:
    rows = conn.execute(
        "SELECT attname, atttypid::regtype::text FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attname = ANY(%s) AND attnum > 0 AND NOT attisdropped",
        (db._ident(table).as_string(conn), columns),
    ).fetchall()
    return dict(rows)


def _keys_query(table: str, key: list[str], native: list[bool]) -> sql.Composable:
    exprs = [sql.Identifier(c) if n else sql.SQL("convert_to({}::text, 'UTF8')").format(sql.Identifier(c))
             for c, n in zip(key, native)]
    positions = sql.SQL(", ").join(sql.Literal(i) for i in range(1, len(key) + 1))
    return sql.SQL("SELECT {exprs} FROM {table} ORDER BY {positions}").format(
        exprs=sql.SQL(", ").join(exprs), table=db._ident(table), positions=positions)
