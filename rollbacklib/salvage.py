"""Salvage: the rows a full restore discards, listed before the gate, and carried over after the reopen when asked.

The restored copy's rows are hashed by key at its validation (``postgres.rowdiff.snapshot``).
Any database can be compared with those hashes by streaming its own ``(key, md5(row))``:

- ``preview``, before the gate: the LIVE database (still serving) against them. What it finds is a
  projection: the live database takes writes until the outage window blocks it, so the final
  count is ``compare-rows``' (the kept database, closed, after the window). Per table: the counts,
  a sample, and every key in ``salvage/preview/<table>.jsonl`` with ``createdAt``/``updatedAt``
  (or ``created_at``/``updated_at``) where the table has them: an insert or an update as the
  live database holds the row now, a delete as the backup holds it.
- ``carry``, after the reopen: the KEPT database (closed, final) against them, and each row
  written after the backup carried into the restored database where its schema accepts it:
  an insert as ``INSERT ... OVERRIDING SYSTEM VALUE ... ON CONFLICT DO NOTHING`` (over the
  columns both have), an update as an ``UPDATE``, a delete as a ``DELETE``, both only while the
  restored row is still the backup's (its hash, in the same statement's ``WHERE``): a row
  changed since the reopen is never overwritten. Each statement commits on its own. What a
  statement does not change is a conflict, with its reason, in ``salvage/conflicts.jsonl``.
  Tables go parents first (foreign keys) for inserts and updates, children first for deletes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import psycopg
import psycopg.rows
from psycopg import sql

from rollbacklib.journal import utc_now
from rollbacklib.lost_rows import _rows
from rollbacklib.postgres import database as db
from rollbacklib.postgres import rowdiff

TIMESTAMPS = ("createdAt", "updatedAt", "created_at", "updated_at")
FOLDER = "salvage"
SAMPLE = 5
KINDS = ("inserted", "updated", "deleted")


def _collect(conn: psycopg.Connection, snapshot: Path) -> tuple[dict, dict[str, dict[str, list[tuple]]]]:
    keys: dict[str, dict[str, list[tuple]]] = defaultdict(lambda: {k: [] for k in KINDS})
    lost = rowdiff.diff_against_snapshot(conn, snapshot, lambda t, kind, key: keys[t][kind].append(key))
    return lost, dict(keys)


def _index(snapshot: Path) -> dict:
    return json.loads((snapshot / rowdiff.SNAPSHOT_INDEX).read_text())


def _file_name(table: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in table) + ".jsonl"


def _stamps(conn: psycopg.Connection, table: str) -> list[str]:
    columns = rowdiff._columns(conn, table)
    return [c for c in TIMESTAMPS if c in columns]


def _plain(value):
    return rowdiff._plain(value)


# --- before the gate ------------------------------------------------------------------------------

def preview(live: psycopg.Connection, copy: psycopg.Connection | None, snapshot: Path, out: Path) -> dict:
    """What the restore would discard if the window opened now: per table counts, a sample, every key in a file.

    ``copy``: the restored copy, for the timestamps of the rows deleted after the backup; None once it is
    closed (a resumed run): those rows are then listed by key alone."""
    measured_at = utc_now()
    lost, keys = _collect(live, snapshot)
    index = _index(snapshot)
    out.mkdir(parents=True, exist_ok=True)
    tables = {}
    for table, d in lost["tables"].items():
        entry = {k: d[k] for k in ("key", "inserted", "updated", "deleted", "lost", "note")}
        if table in keys:
            spec = index["tables"][table]
            entry["file"], entry["sample"] = _write_keys(live, copy, table, spec, keys[table], out / _file_name(table))
        tables[table] = entry
    summary = {"measured_at": measured_at, "projection": True, "total": lost["total"], "inserted": lost["inserted"],
               "updated": lost["updated"], "deleted": lost["deleted"], "not_compared": lost["not_compared"],
               "tables": tables}
    (out / "preview.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _write_keys(live, copy, table: str, spec: dict, keys: dict[str, list[tuple]], path: Path) -> tuple[str, list]:
    sample = []
    with open(path, "w", encoding="utf-8") as fh:
        for kind in KINDS:
            source = copy if kind == "deleted" else live  # a delete: the row as the backup holds it
            if source is None:
                for key in keys[kind]:
                    record = {"kind": kind, "key": [_plain(v) for v in key]}
                    fh.write(json.dumps(record, default=str) + "\n")
                    if sum(r["kind"] == kind for r in sample) < SAMPLE:
                        sample.append(record)
                continue
            stamps = _stamps(source, table)
            for row in _rows(source, table, spec["key"], spec["native"], keys[kind]):
                record = {"kind": kind, "key": [_plain(row[c]) for c in spec["key"]],
                          **{c: _plain(row.get(c)) for c in stamps}}
                fh.write(json.dumps(record, default=str) + "\n")
                if sum(r["kind"] == kind for r in sample) < SAMPLE:
                    sample.append(record)
    return path.name, sample


# --- after the reopen -----------------------------------------------------------------------------

def carry(kept: psycopg.Connection, live: psycopg.Connection, snapshot: Path, out: Path) -> dict:
    """Carry every row written after the backup (kept) into the restored database (live) where it is accepted."""
    lost, keys = _collect(kept, snapshot)
    index = _index(snapshot)
    out.mkdir(parents=True, exist_ok=True)
    live_tables = set(rowdiff._tables(live))
    order = foreign_key_order(live, sorted(keys))
    result = {t: {"carried": {k: 0 for k in KINDS}, "conflicts": {k: 0 for k in KINDS}, "reasons": {}}
              for t in keys}
    with open(out / "conflicts.jsonl", "w", encoding="utf-8") as conflicts:
        def conflict(table: str, kind: str, key, reason: str) -> None:
            result[table]["conflicts"][kind] += 1
            result[table]["reasons"][reason] = result[table]["reasons"].get(reason, 0) + 1
            conflicts.write(json.dumps({"table": table, "kind": kind, "key": [_plain(v) for v in key],
                                        "reason": reason}, default=str) + "\n")

        for table in order:
            if table not in live_tables:
                for kind in ("inserted", "updated"):
                    for key in keys[table][kind]:
                        conflict(table, kind, key, "the restored database has no such table")
                continue
            _carry_rows(kept, live, snapshot, table, index["tables"][table], keys[table], result[table], conflict)
        for table in reversed(order):
            if table in live_tables:
                _carry_deletes(live, snapshot, table, index["tables"][table], keys[table]["deleted"], result[table],
                               conflict)
    for table, d in lost["tables"].items():
        if table not in keys and d["lost"]:
            result[table] = {"carried": {k: 0 for k in KINDS}, "conflicts": {k: d[k] for k in KINDS},
                             "reasons": {d["note"] or "not compared row by row": d["lost"]}}
    summary = {"at": utc_now(), "rows_lost": {k: lost[k] for k in ("total", *KINDS)},
               "carried": sum(sum(r["carried"].values()) for r in result.values()),
               "conflicts": sum(sum(r["conflicts"].values()) for r in result.values()), "tables": result}
    (out / "carried.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _guard(spec: dict) -> sql.Composable:
    """The row's hash exactly as the copy's was taken at its validation: equal means untouched since."""
    casts = spec.get("converted") or {}
    row = sql.SQL(", ").join(sql.SQL("CAST({} AS {})").format(sql.Identifier(c), sql.SQL(casts[c])) if c in casts
                             else sql.Identifier(c) for c in spec["common"])
    return sql.SQL("md5(ROW({})::text)").format(row)


def _where_key(spec: dict) -> sql.Composable:
    target = sql.SQL(", ").join(rowdiff._key_expr(c, n) for c, n in zip(spec["key"], spec["native"]))
    return sql.SQL("({}) = ({})").format(target, sql.SQL(", ").join(sql.Placeholder() * len(spec["key"])))


def _backup_hashes(snapshot: Path, spec: dict, wanted: set[tuple]) -> dict[tuple, str]:
    width = len(spec["key"])
    return {tuple(r[:width]): r[width] for r in rowdiff._read_snapshot(snapshot / spec["file"])
            if tuple(r[:width]) in wanted}


def _args(key: tuple) -> list:
    return [bytes(v) if isinstance(v, memoryview) else v for v in key]


def _row(conn: psycopg.Connection, table: str, spec: dict, key: tuple) -> dict | None:
    query = sql.SQL("SELECT * FROM {} WHERE {}").format(db._ident(table), _where_key(spec))
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(query, _args(key)).fetchone()


def _required_columns(conn: psycopg.Connection, table: str) -> list[str]:
    """Columns an INSERT must give: NOT NULL, no default, not an identity or generated column."""
    return [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "AND attnotnull AND NOT atthasdef AND attidentity = '' AND attgenerated = '' ORDER BY attnum",
        (db._ident(table).as_string(conn),)).fetchall()]


def foreign_key_order(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    """``tables`` with every referenced table before the tables referencing it (a cycle keeps the given order)."""
    default = db.default_schema(conn)
    edges = [(db._table_key(a, b, default), db._table_key(c, d, default)) for a, b, c, d in conn.execute(
        "SELECT cn.nspname, cr.relname, pn.nspname, pr.relname FROM pg_constraint k "
        "JOIN pg_class cr ON cr.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = cr.relnamespace "
        "JOIN pg_class pr ON pr.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = pr.relnamespace "
        "WHERE k.contype = 'f' AND k.conrelid <> k.confrelid").fetchall()]
    left, order = list(tables), []
    while left:
        ready = [t for t in left if not any(child == t and parent in left for child, parent in edges)] or left[:1]
        order += ready
        left = [t for t in left if t not in ready]
    return order


def _carry_rows(kept, live, snapshot: Path, table: str, spec: dict, keys: dict, result: dict, conflict) -> None:
    kept_cols, live_cols = rowdiff._columns(kept, table), rowdiff._columns(live, table)
    common = [c for c in kept_cols if c in live_cols]
    missing = [c for c in _required_columns(live, table) if c not in kept_cols]
    ident = db._ident(table)
    insert = sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({}) ON CONFLICT DO NOTHING").format(
        ident, sql.SQL(", ").join(map(sql.Identifier, common)), sql.SQL(", ").join(sql.Placeholder() * len(common)))
    sets = [c for c in common if c not in spec["key"]]
    update = sql.SQL("UPDATE {} SET {} WHERE {} AND {} = {}").format(
        ident, sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder()) for c in sets),
        _where_key(spec), _guard(spec), sql.Placeholder())
    hashes = _backup_hashes(snapshot, spec, set(keys["updated"])) if keys["updated"] else {}
    for kind in ("inserted", "updated"):
        for key in keys[kind]:
            row = _row(kept, table, spec, key)
            if row is None:
                conflict(table, kind, key, "the row is no longer in the kept database")
                continue
            if kind == "inserted" and missing:
                conflict(table, kind, key, "the restored schema requires " + ", ".join(missing)
                         + ", which the row does not have")
                continue
            try:
                if kind == "inserted":
                    done = live.execute(insert, [row[c] for c in common]).rowcount
                    reason = "its key (or another unique value) is taken in the restored database"
                else:
                    done = live.execute(update, [row[c] for c in sets] + _args(key) + [hashes.get(key)]).rowcount
                    reason = "changed or deleted in the restored database since it went live"
            except psycopg.Error as err:
                done, reason = 0, f"refused: {str(err).splitlines()[0]}"
            if done == 1:
                result["carried"][kind] += 1
            else:
                conflict(table, kind, key, reason)


def _carry_deletes(live, snapshot: Path, table: str, spec: dict, wanted: list[tuple], result: dict,
                   conflict) -> None:
    if not wanted:
        return
    hashes = _backup_hashes(snapshot, spec, set(wanted))
    delete = sql.SQL("DELETE FROM {} WHERE {} AND {} = {}").format(db._ident(table), _where_key(spec), _guard(spec),
                                                                  sql.Placeholder())
    for key in wanted:
        try:
            done = live.execute(delete, _args(key) + [hashes.get(key)]).rowcount
            reason = "changed or already deleted in the restored database since it went live"
        except psycopg.Error as err:
            done, reason = 0, f"refused: {str(err).splitlines()[0]}"
        if done == 1:
            result["carried"]["deleted"] += 1
        else:
            conflict(table, "deleted", key, reason)
