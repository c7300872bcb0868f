"""Bringing the values back: from the side restore into the live database, by primary key, in batches.

For dropped columns, the side copy's ``(key, columns)`` rows stream by ``COPY`` (never held in
memory) into a temporary table of the live session, numbered in key order; then one ``UPDATE``
per batch of ``batch_rows`` numbers sets the columns on the live rows with the same key (any
key: composite ones compare as rows), each batch its own transaction. So:

- a row created after the migration has no key in the backup: it keeps the column's default or NULL;
- a row deleted after the migration is not in the live table: nothing updates it, it stays deleted;
- the statements only ever set the restored columns: no other value is touched.

A table the migration dropped is copied back whole (``COPY`` out of the side copy, ``COPY`` into the
re-created table), in one transaction. Progress (rows done / total) goes to ``on_progress``.
"""

from __future__ import annotations

import time
from typing import Callable

from psycopg import sql

from rollbacklib.surgical.apply import set_session
from rollbacklib.surgical.reverse import Backfill

TEMP = "surgical_backfill"
OnProgress = Callable[[str, int, int], None]


def _ids(names: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, names))


def statements(fill: Backfill, conn) -> dict[str, str]:
    """Every statement the backfill of ``fill`` runs, rendered once (what the plan shows; what runs)."""
    table = sql.Identifier(fill.schema, fill.table)
    s = lambda c: c.as_string(conn)  # noqa: E731
    if fill.whole_table:
        cols = _ids(fill.columns)
        return {"copy_out": s(sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(cols, table)),
                "copy_in": s(sql.SQL("COPY {} ({}) FROM STDIN").format(table, cols))}
    names = [*fill.key, *fill.columns]
    temp = sql.Identifier(TEMP)
    match = sql.SQL(" AND ").join(sql.SQL("l.{c} = f.{c}").format(c=sql.Identifier(k)) for k in fill.key)
    sets = sql.SQL(", ").join(sql.SQL("{c} = f.{c}").format(c=sql.Identifier(c)) for c in fill.columns)
    return {
        "temp": s(sql.SQL("CREATE TEMP TABLE {} AS SELECT {} FROM {} WITH NO DATA").format(temp, _ids(names), table)),
        "number": s(sql.SQL("ALTER TABLE {} ADD COLUMN surgical_n bigint GENERATED ALWAYS AS IDENTITY").format(temp)),
        "copy_out": s(sql.SQL("COPY (SELECT {} FROM {} ORDER BY {}) TO STDOUT").format(_ids(names), table,
                                                                                         _ids(fill.key))),
        "copy_in": s(sql.SQL("COPY {} ({}) FROM STDIN").format(temp, _ids(names))),
        "index": s(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (surgical_n)").format(temp)),
        "batch": s(sql.SQL("UPDATE {} l SET {} FROM {} f WHERE f.surgical_n > %(after)s AND f.surgical_n <= "
                           "%(upto)s AND {}").format(table, sets, temp, match)),
        "drop": s(sql.SQL("DROP TABLE {}").format(temp)),
    }


def _stream(side, live, out_text: str, in_text: str, label: str, on_progress: OnProgress, total: int) -> int:
    """COPY out of the side copy into the live session, chunk by chunk; the rows moved."""
    moved, last = 0, time.monotonic()
    with side.cursor().copy(out_text.encode()) as source, live.cursor().copy(in_text.encode()) as sink:
        for chunk in source:
            sink.write(chunk)
            moved += bytes(chunk).count(b"\n")  # COPY text: one line per row, newlines inside values escaped
            if time.monotonic() - last > 1:
                on_progress(label, moved, total)
                last = time.monotonic()
    return moved


def run(fill: Backfill, texts: dict[str, str], live, side, *, batch_rows: int,
        on_progress: OnProgress = lambda label, done, total: None) -> dict:
    """Backfill ``fill`` with the rendered ``texts``; ``live`` and ``side`` are autocommit-off connections."""
    started = time.monotonic()
    set_session(live)
    set_session(side)
    label = fill.qualified
    total = side.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(fill.schema, fill.table))
                         ).fetchone()[0]
    side.commit()
    if fill.whole_table:
        moved = _stream(side, live, texts["copy_out"], texts["copy_in"], label, on_progress, total)
        live.commit()
        side.commit()
        on_progress(label, moved, total)
        return {"table": label, "whole_table": True, "backup_rows": total, "copied": moved,
                "seconds": round(time.monotonic() - started, 3)}
    for name in ("temp", "number"):
        live.execute(texts[name].encode())
    _stream(side, live, texts["copy_out"], texts["copy_in"], label, on_progress, total)
    side.commit()
    live.execute(texts["index"].encode())
    live.commit()
    updated, batches = 0, 0
    for after in range(0, total, max(batch_rows, 1)):
        cur = live.execute(texts["batch"].encode(), {"after": after, "upto": after + batch_rows})
        updated += cur.rowcount
        batches += 1
        live.commit()
        on_progress(label, min(after + batch_rows, total), total)
    live.execute(texts["drop"].encode())
    live.commit()
    if total == 0:
        on_progress(label, 0, 0)
    return {"table": label, "columns": fill.columns, "key": fill.key, "backup_rows": total, "updated": updated,
            "deleted_since": total - updated, "batches": batches, "batch_rows": batch_rows,
            "seconds": round(time.monotonic() - started, 3)}
