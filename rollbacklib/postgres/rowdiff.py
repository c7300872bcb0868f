"""Rows two databases disagree on, table by table, found by primary key: the rows a rollback lost.

Typically the kept pre-rollback database (``kept``) against the restored one (``restored``).
A row is

- *inserted* when its key is only in ``kept`` (written after the backup, gone with the restore),
- *deleted* when its key is only in ``restored`` (deleted after the backup, back again),
- *updated* when both have its key and the rows differ (over the columns both tables have).

All three are writes made after the backup that the restore discarded. Two databases on one
server share no query, so each side streams ``(key..., md5(row))`` ordered by key from a
server-side cursor, and the two streams are merged here: memory stays bounded whatever the
table's size. The order must be one Python compares the same way as PostgreSQL: integer and
uuid keys are ordered natively, any other type by the UTF-8 bytes of its text form (as
``bytea``, which both sort bytewise whatever the collation), as ``rows.lost_rows`` does (which
compares keys only; this compares rows too). Composite keys are tuples.

Columns only one side has (a column the migration dropped or added) are left out of the row
hash and listed, so a schema change alone does not count every row as updated. A column both
have with another type (the migration converted it: DOUBLE PRECISION to DECIMAL(65,30)) is
compared after the restored side's values are converted the way the migration converted them
(cast to the kept side's type), so the migration's own conversion is not counted as a write; a
value the cast cannot take makes the table compare as written, and says so.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import queue
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import psycopg
from psycopg import sql

from rollbacklib.postgres import database as db
from rollbacklib.postgres.rows import _NATIVE_ORDER, FETCH_ROWS

EXAMPLES = 10  # keys listed per kind of change
BOOKKEEPING = ("_prisma_migrations",)  # reset to the backup's by design: not data the application wrote


@dataclass
class TableDiff:
    table: str
    key: list[str] = field(default_factory=list)
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    kept_rows: int | None = None
    restored_rows: int | None = None
    columns_left_out: list[str] = field(default_factory=list)
    examples: dict[str, list] = field(default_factory=dict)
    note: str = ""  # how the table was compared, when not plainly
    comparable: bool = True

    @property
    def lost(self) -> int | None:
        return self.inserted + self.updated + self.deleted if self.comparable else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["lost"] = self.lost
        data["examples"] = {k: [[_plain(v) for v in key] for key in keys] for k, keys in self.examples.items()}
        return data


def _plain(value: object) -> object:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def merge(kept: Iterable[tuple], restored: Iterable[tuple], width: int, diff: TableDiff,
          on_key: Callable[[str, tuple], None] | None = None) -> TableDiff:
    """Merge two key-ordered streams of ``(key..., md5)`` (keys ``width`` wide) into ``diff``'s counts.

    ``on_key`` hears of every key that differs, with its kind (``inserted``, ``updated``, ``deleted``).
    """
    a_iter, b_iter = iter(kept), iter(restored)
    a, b = next(a_iter, None), next(b_iter, None)
    kept_rows = restored_rows = 0
    while a is not None or b is not None:
        ka = tuple(a[:width]) if a is not None else None
        kb = tuple(b[:width]) if b is not None else None
        if kb is None or (ka is not None and ka < kb):
            _count(diff, "inserted", ka, on_key)
            kept_rows += 1
            a = next(a_iter, None)
        elif ka is None or kb < ka:
            _count(diff, "deleted", kb, on_key)
            restored_rows += 1
            b = next(b_iter, None)
        else:
            if a[width] != b[width]:
                _count(diff, "updated", ka, on_key)
            kept_rows += 1
            restored_rows += 1
            a, b = next(a_iter, None), next(b_iter, None)
    diff.kept_rows, diff.restored_rows = kept_rows, restored_rows
    return diff


def _count(diff: TableDiff, kind: str, key: tuple, on_key=None) -> None:
    setattr(diff, kind, getattr(diff, kind) + 1)
    if on_key is not None:
        on_key(kind, key)
    shown = diff.examples.setdefault(kind, [])
    if len(shown) < EXAMPLES:
        shown.append(key)


# --- the catalog of each side -------------------------------------------------------------------

def _tables(conn: psycopg.Connection) -> list[str]:
    default = db.default_schema(conn)
    return [db._table_key(schema, table, default) for schema, table in db.user_tables(conn)]


def _columns(conn: psycopg.Connection, table: str) -> dict[str, str]:
    """Column name -> type, in the table's order."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (db._ident(table).as_string(conn),)).fetchall()
    return dict(rows)


def _key_expr(column: str, native: bool) -> sql.Composable:
    ident = sql.Identifier(column)
    return ident if native else sql.SQL("convert_to({}::text, 'UTF8')").format(ident)


def _row_hash(columns: list[str], casts: dict[str, str]) -> sql.Composable:
    row = sql.SQL(", ").join(sql.SQL("CAST({} AS {})").format(sql.Identifier(c), sql.SQL(casts[c])) if c in casts
                             else sql.Identifier(c) for c in columns)
    return sql.SQL("md5(ROW({})::text)").format(row)


def rows_query(table: str, key: list[str], native: list[bool], columns: list[str],
               casts: dict[str, str] | None = None) -> sql.Composable:
    """``SELECT key..., md5(ROW(columns)::text) FROM table ORDER BY key``: one side's stream.

    ``casts``: column -> type (as ``format_type`` gives it) to convert that column to before hashing.
    """
    keys = sql.SQL(", ").join(_key_expr(c, n) for c, n in zip(key, native))
    order = sql.SQL(", ").join(sql.Literal(i) for i in range(1, len(key) + 1))
    return sql.SQL("SELECT {keys}, {row} FROM {table} ORDER BY {order}").format(
        keys=keys, row=_row_hash(columns, casts or {}), table=db._ident(table), order=order)


def _json_key(column: str, native: bool, type_: str) -> sql.Composable:
    """A key value in a snapshot line, made by the server: a number, ``{"u": uuid}``, or ``{"b": hex}`` (the
    UTF-8 bytes of its text, as ``rows_query`` orders it); ``_decode`` reads it back."""
    ident = sql.Identifier(column)
    if native and type_ == "uuid":
        return sql.SQL("{} || {}::text || {}").format(sql.Literal('{"u":"'), ident, sql.Literal('"}'))
    if native:
        return sql.SQL("{}::text").format(ident)
    return sql.SQL("{} || encode({}, 'hex') || {}").format(sql.Literal('{"b":"'), _key_expr(column, False),
                                                           sql.Literal('"}'))


def lines_query(table: str, key: list[str], native: list[bool], key_types: list[str], columns: list[str],
                casts: dict[str, str] | None = None) -> sql.Composable:
    """``rows_query``'s stream with each row already its JSON line ``[key..., md5]``, made by the server.

    Inside in-place's window this runs on the clock: Python only joins the lines it fetches.
    """
    parts = [_json_key(c, n, t) for c, n, t in zip(key, native, key_types)]
    parts.append(sql.SQL("{} || {} || {}").format(sql.Literal('"'), _row_hash(columns, casts or {}), sql.Literal('"')))
    line = sql.SQL("{} || {} || {}").format(sql.Literal("["), sql.SQL(" || ',' || ").join(parts), sql.Literal("]"))
    order = sql.SQL(", ").join(_key_expr(c, n) for c, n in zip(key, native))
    return sql.SQL("SELECT {line} FROM {table} ORDER BY {order}").format(line=line, table=db._ident(table),
                                                                          order=order)


def _stream(conn: psycopg.Connection, query: sql.Composable, name: str) -> Iterator[tuple]:
    with conn.transaction(), conn.cursor(name=name) as cur:
        cur.itersize = FETCH_ROWS
        cur.execute(query)
        yield from cur


def _count_rows(conn: psycopg.Connection, table: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(db._ident(table))).fetchone()[0]


def key_native(kept: psycopg.Connection, restored: psycopg.Connection, table: str, key: list[str]) -> list[bool]:
    """For each key column: are its values streamed as they are (ordered natively), or as UTF-8 bytes of their text?"""
    ours, theirs = _columns(restored, table), _columns(kept, table)
    return [ours[c] in _NATIVE_ORDER and theirs[c] == ours[c] for c in key]


def diff_table(kept: psycopg.Connection, restored: psycopg.Connection, table: str,
               on_key: Callable[[str, tuple], None] | None = None) -> TableDiff:
    """The rows of ``table`` that differ between ``kept`` and ``restored``, by primary key (``on_key``: see merge)."""
    in_kept, in_restored = table in _tables(kept), table in _tables(restored)
    if not in_restored:  # created after the backup: every row it holds is lost
        n = _count_rows(kept, table)
        return TableDiff(table, db.primary_key_columns(kept, table), inserted=n, kept_rows=n, restored_rows=0,
                         note="only in the pre-rollback database (created after the backup): every row is lost")
    if not in_kept:  # dropped after the backup: the restore brought its rows back, none lost
        n = _count_rows(restored, table)
        return TableDiff(table, db.primary_key_columns(restored, table), kept_rows=0, restored_rows=n,
                         note="not in the pre-rollback database (dropped after the backup): the restore brought "
                         "it back; not counted as lost")
    key = db.primary_key_columns(restored, table)
    if not key or db.primary_key_columns(kept, table) != key:
        why = "no primary key" if not key else "the primary key differs between the two databases"
        return TableDiff(table, key, comparable=False, kept_rows=_count_rows(kept, table),
                         restored_rows=_count_rows(restored, table), note=f"cannot compare row by row: {why}")
    ours, theirs = _columns(restored, table), _columns(kept, table)
    common = [c for c in ours if c in theirs]
    left_out = [c for c in ours if c not in theirs] + [c for c in theirs if c not in ours]
    native = key_native(kept, restored, table, key)  # the order rows.lost_rows uses
    converted = {c: theirs[c] for c in common if theirs[c] != ours[c]}  # restored value -> the kept one's type
    query = rows_query(table, key, native, common)
    notes = ["compared over the columns both have; left out: " + ", ".join(left_out)] if left_out else []
    if converted:
        try:
            diff = _merged(kept, restored, table, query, rows_query(table, key, native, common, converted), key,
                           left_out, on_key)
            diff.note = "; ".join(notes + ["the migration's type changes applied to the restored values before "
                                           "comparing (" + ", ".join(f"{c} to {t}" for c, t in converted.items())
                                           + "): its own conversions are not writes"])
            return diff
        except psycopg.Error as err:
            notes.append(f"the migration's type changes could not be applied ({type(err).__name__}): converted "
                         "values count as updated")
    diff = _merged(kept, restored, table, query, query, key, left_out, on_key)
    diff.note = "; ".join(notes)
    return diff


def _merged(kept: psycopg.Connection, restored: psycopg.Connection, table: str, kept_query: sql.Composable,
            restored_query: sql.Composable, key: list[str], left_out: list[str], on_key=None) -> TableDiff:
    ours, theirs = _stream(kept, kept_query, "rollbacklib_kept"), _stream(restored, restored_query,
                                                                          "rollbacklib_restored")
    heard: list[tuple[str, tuple]] = []  # told to on_key only once the merge went through (a cast may fail)
    try:
        diff = merge(ours, theirs, len(key), TableDiff(table, key, columns_left_out=left_out),
                     (lambda kind, k: heard.append((kind, k))) if on_key else None)
    finally:
        ours.close()
        theirs.close()
    for kind, k in heard:
        on_key(kind, k)
    return diff


def diff_databases(kept: psycopg.Connection, restored: psycopg.Connection,
                   skip: tuple[str, ...] = BOOKKEEPING) -> dict:
    """Every user table of either database compared; the total of rows lost and what could not be counted."""
    tables = sorted(set(_tables(kept)) | set(_tables(restored)))
    diffs = [diff_table(kept, restored, t) for t in tables if t not in skip]
    return totals(diffs, [t for t in tables if t in skip])


def totals(diffs: list[TableDiff], left_out: list[str]) -> dict:
    """The rows lost over every table compared, each table's diff, and what could not be counted."""
    counted = [d for d in diffs if d.comparable]
    return {
        "total": sum(d.lost for d in counted),
        "inserted": sum(d.inserted for d in counted),
        "updated": sum(d.updated for d in counted),
        "deleted": sum(d.deleted for d in counted),
        "tables": {d.table: d.to_dict() for d in sorted(diffs, key=lambda d: d.table)},
        "not_compared": [d.table for d in diffs if not d.comparable],
        "left_out": left_out,
    }


# --- one side hashed ahead, the other compared later ---------------------------------------------
#
# The restored side is hashed while it is open to the runbook alone: the swap's copy before it
# is closed and checked by identity only, in-place's restored live database before the reopen.
# The kept side (the swap's original, in-place's safety copy) is compared against that file
# after the window. The columns compared are fixed at hashing time from the kept side's shapes
# (``table_shapes``, read before it was closed); a table whose schema changed since is reported
# as not comparable.

SNAPSHOT_FOLDER = "copy_rows"  # in the run folder: the restored side's row hashes
SNAPSHOT_INDEX = "index.json"


def _decode(value: object) -> object:
    """A key value of a snapshot line (``_json_key``) as the kept side's stream gives it: int, uuid or bytes."""
    if isinstance(value, dict):
        return bytes.fromhex(value["b"]) if "b" in value else uuid.UUID(value["u"])
    return value


def table_shapes(conn: psycopg.Connection, skip: tuple[str, ...] = ()) -> dict:
    """Each user table's primary key and columns (name -> type): what ``snapshot`` fixes the comparison on.

    Read from the side that will be kept, before it is closed; a plain dict, so it can be stored.
    """
    return {t: {"key": db.primary_key_columns(conn, t), "columns": _columns(conn, t)}
            for t in _tables(conn) if t not in skip}


def _table_spec(restored: psycopg.Connection, live: dict | None, table: str) -> dict:
    """``live``: the kept side's shape of ``table`` (``table_shapes``), None when it has no such table."""
    key = db.primary_key_columns(restored, table)
    if live is None:
        return {"table": table, "key": key, "only": "restored", "rows": _count_rows(restored, table)}
    live_key, theirs = live["key"], live["columns"]
    ours = _columns(restored, table)
    spec = {"table": table, "key": key, "live_key": live_key, "live_columns": theirs}
    if not key or live_key != key:
        why = "no primary key" if not key else "the primary key differs between the two databases"
        return {**spec, "comparable": False, "note": f"cannot compare row by row: {why}",
                "rows": _count_rows(restored, table)}
    common = [c for c in ours if c in theirs]
    left_out = [c for c in ours if c not in theirs] + [c for c in theirs if c not in ours]
    native = [ours[c] in _NATIVE_ORDER and theirs[c] == ours[c] for c in key]
    converted = {c: theirs[c] for c in common if theirs[c] != ours[c]}  # restored value -> the live one's type
    return {**spec, "comparable": True, "common": common, "native": native, "left_out": left_out,
            "converted": converted, "restored_columns": ours}


def snapshot(restored: psycopg.Connection, live: dict, folder: Path, skip: tuple[str, ...] = BOOKKEEPING) -> dict:
    """Hash every table of ``restored`` by key, over the columns the kept side has too, into ``folder``.

    ``live``: the kept side's ``table_shapes`` (the database that is compared with the hashes
    later), read before that side is closed.

    Returns the index written to ``folder/index.json``: each table's spec and file, and the
    sha256 of every file (the copy's validation digest covers them).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SNAPSHOT_INDEX).unlink(missing_ok=True)  # an attempt cut short leaves no index to be read
    live_tables, restored_tables = set(live), set(_tables(restored))
    index = {"tables": {}, "skip": list(skip),
             "left_out": sorted(t for t in live_tables | restored_tables if t in skip)}
    for n, table in enumerate(t for t in _tables(restored) if t not in skip):
        spec = _table_spec(restored, live.get(table), table)
        if spec.get("comparable"):
            path = folder / f"{n:04d}.jsonl.gz"
            casts = spec["converted"]
            ours = spec.pop("restored_columns")
            types = [ours[c] for c in spec["key"]]
            try:
                rows, sha = _write_hashes(restored, lines_query(table, spec["key"], spec["native"], types,
                                                                spec["common"], casts), path)
                if casts:
                    spec["note"] = ("the migration's type changes applied to the restored values before comparing ("
                                    + ", ".join(f"{c} to {t}" for c, t in casts.items())
                                    + "): its own conversions are not writes")
            except psycopg.Error as err:
                if not casts:
                    raise
                rows, sha = _write_hashes(restored, lines_query(table, spec["key"], spec["native"], types,
                                                                spec["common"]), path)
                spec["note"] = (f"the migration's type changes could not be applied ({type(err).__name__}): "
                                "converted values count as updated")
            spec.update(file=path.name, rows=rows, sha256=sha)
        index["tables"][table] = spec
    (folder / SNAPSHOT_INDEX).write_text(json.dumps(index, indent=1, sort_keys=True))
    return index


def _write_hashes(conn: psycopg.Connection, query: sql.Composable, path: Path) -> tuple[int, str]:
    """``lines_query``'s lines gzipped as they are fetched (level 1: the fastest); their count and sha256.

    Fetched through a server-side cursor, many rows a round trip (``COPY TO STDOUT`` would hand
    them over one message a row, which costs Python more than the server's work). The file is
    compressed by a thread of its own while the next rows are fetched: zlib lets go of the GIL.
    """
    digest, rows = hashlib.sha256(), 0
    with gzip.open(path, "wb", compresslevel=1) as out, _Writer(out, digest) as writer:
        with conn.transaction(), conn.cursor(name="rollbacklib_snapshot") as cur:
            cur.execute(query)
            while batch := cur.fetchmany(FETCH_ROWS):
                writer.put(("\n".join(line for (line,) in batch) + "\n").encode())
                rows += len(batch)
    return rows, digest.hexdigest()


class _Writer:
    """Writes (and digests) the chunks it is given, in order, from a thread of its own."""

    def __init__(self, out, digest):
        self.out, self.digest = out, digest
        self.chunks: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while (data := self.chunks.get()) is not None:
            if self.error is None:
                try:
                    self.out.write(data)
                    self.digest.update(data)
                except BaseException as err:  # noqa: BLE001 - raised again in the caller's thread
                    self.error = err

    def put(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.chunks.put(data)

    def __enter__(self) -> "_Writer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.chunks.put(None)
        self.thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error


def _read_snapshot(path: Path) -> Iterator[tuple]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            yield tuple(_decode(v) for v in json.loads(line))


def diff_against_snapshot(kept: psycopg.Connection, folder: Path,
                          on_table_key: Callable[[str, str, tuple], None] | None = None) -> dict:
    """The kept database against the copy's hashes in ``folder``: the same answer ``diff_databases`` gives.

    ``on_table_key(table, kind, key)`` hears of every key that differs (salvage lists and carries them)."""
    index = json.loads((folder / SNAPSHOT_INDEX).read_text())
    kept_tables = set(_tables(kept))
    diffs = []
    for table, spec in sorted(index["tables"].items()):
        if table not in kept_tables:
            diffs.append(TableDiff(table, spec["key"], kept_rows=0, restored_rows=spec["rows"],
                                   note="not in the pre-rollback database (dropped after the backup): the restore "
                                   "brought it back; not counted as lost"))
            continue
        if not spec.get("comparable"):
            diffs.append(TableDiff(table, spec["key"], comparable=False, kept_rows=_count_rows(kept, table),
                                   restored_rows=spec.get("rows"), note=spec.get("note", "")))
            continue
        if db.primary_key_columns(kept, table) != spec["live_key"] or _columns(kept, table) != spec["live_columns"]:
            diffs.append(TableDiff(table, spec["key"], comparable=False, kept_rows=_count_rows(kept, table),
                                   restored_rows=spec["rows"], note="cannot compare: its schema changed after the "
                                   "copy was hashed"))
            continue
        diff = TableDiff(table, spec["key"], columns_left_out=spec["left_out"])
        notes = ["compared over the columns both have; left out: " + ", ".join(spec["left_out"])] \
            if spec["left_out"] else []
        diff.note = "; ".join(notes + ([spec["note"]] if spec.get("note") else []))
        query = rows_query(table, spec["key"], spec["native"], spec["common"])
        heard = (lambda kind, key, t=table: on_table_key(t, kind, key)) if on_table_key else None
        diffs.append(merge(_stream(kept, query, "rollbacklib_kept"), _read_snapshot(folder / spec["file"]),
                           len(spec["key"]), diff, heard))
    for table in sorted(kept_tables - set(index["tables"]) - set(index["skip"])):
        n = _count_rows(kept, table)
        diffs.append(TableDiff(table, db.primary_key_columns(kept, table), inserted=n, kept_rows=n, restored_rows=0,
                               note="only in the pre-rollback database (created after the backup): every row is lost"))
    return totals(diffs, sorted(set(index["left_out"]) | {t for t in kept_tables if t in index["skip"]}))
