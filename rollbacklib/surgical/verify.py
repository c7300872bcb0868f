"""Each table verified after the surgical reversal: rows matched, values restored, nothing lost.

- *rows matched*: the backup's keys found in the live table (the rest were deleted after the
  migration and stay deleted), and the live rows the backup never had (written since);
- *values restored*: for every matched row, the hash of the restored columns in the live table
  equals the hash of the same columns in the side copy (``md5(ROW(...)::text)``, both sessions
  set alike), computed on the server and joined by key in a temporary table; a whole table
  copied back must match row for row;
- *nothing lost*: the live table's fingerprint over its key and kept columns (``apply.fingerprint``)
  equals the one read under the reversal's locks, before any statement ran: every row the live
  database had is still there, unchanged. With the services up, other sessions may write
  meanwhile: a difference is then reported as theirs, not failed.
"""

from __future__ import annotations

from psycopg import sql

from rollbacklib.surgical.apply import fingerprint, set_session
from rollbacklib.surgical.reverse import Backfill

TEMP = "surgical_verify"


def _ids(names) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, names))


def _row(alias: str, columns: list[str]) -> sql.Composable:
    return sql.SQL("md5(ROW({})::text)").format(sql.SQL(", ").join(sql.Identifier(alias, c) for c in columns))


def statements(fill: Backfill, conn) -> dict[str, str]:
    """Every statement ``values_restored`` runs for ``fill``, rendered once (the plan shows them)."""
    table = sql.Identifier(fill.schema, fill.table)
    key = fill.key or fill.columns  # a whole table without a key is matched on every column
    temp = sql.Identifier(TEMP)
    match = sql.SQL(" AND ").join(sql.SQL("l.{c} = f.{c}").format(c=sql.Identifier(k)) for k in key)
    s = lambda c: c.as_string(conn)  # noqa: E731
    return {
        "temp": s(sql.SQL("CREATE TEMP TABLE {} AS SELECT {}, ''::text AS h FROM {} WITH NO DATA").format(
            temp, _ids(key), table)),
        "copy_out": s(sql.SQL("COPY (SELECT {}, {} FROM {} s) TO STDOUT").format(_ids(key), _row("s", fill.columns),
                                                                              table)),
        "copy_in": s(sql.SQL("COPY {} ({}, h) FROM STDIN").format(temp, _ids(key))),
        "compare": s(sql.SQL(
            "SELECT count(*), count(l.{k}), count(*) FILTER (WHERE l.{k} IS NOT NULL AND {h} IS DISTINCT FROM f.h), "
            "(SELECT count(*) FROM {table}) FROM {t} f LEFT JOIN {table} l ON {match}").format(
            k=sql.Identifier(key[0]), h=_row("l", fill.columns), t=temp, table=table, match=match)),
        "drop": s(sql.SQL("DROP TABLE {}").format(temp)),
    }


def values_restored(fill: Backfill, texts: dict[str, str], live, side) -> dict:
    """Backup rows, matched keys, and matched rows whose restored columns differ from the side copy's."""
    set_session(live)
    set_session(side)
    live.execute(texts["temp"].encode())
    with side.cursor().copy(texts["copy_out"].encode()) as source, live.cursor().copy(texts["copy_in"].encode()) as sink:
        for chunk in source:
            sink.write(chunk)
    side.commit()
    backup_rows, matched, differ, live_rows = live.execute(texts["compare"].encode()).fetchone()
    live.execute(texts["drop"].encode())
    live.commit()
    return {"table": fill.qualified, "columns": fill.columns, "backup_rows": backup_rows, "matched": matched,
            "deleted_since": backup_rows - matched, "written_since": live_rows - matched, "values_differ": differ,
            "live_rows": live_rows}


def nothing_lost(name: str, query: str, before: dict, live) -> dict:
    """The fingerprint of ``name`` now against the one taken under the reversal's locks."""
    now = fingerprint(live, query)
    live.commit()
    return {"table": name, "before": before, "after": now, "same": now == before}
