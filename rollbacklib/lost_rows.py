"""``rollback lost-rows``: the rows a rollback discarded, exported per table from the kept database.

After a swap the pre-rollback database is kept (closed to connections) and the restored one is
live. The same comparison as step ``compare-rows`` (``postgres.rowdiff``) is made again, this
time keeping every key, and the rows are written one file per table (CSV or JSON Lines), each
with a first column ``_lost``: ``inserted`` or ``updated`` (the row as the kept database holds
it: what the application wrote after the backup) or ``deleted`` (deleted after the backup; the
row as the live database holds it again). The kept database is read through a private
connection (opened for the instant it takes to connect, closed again, other sessions evicted),
as ``compare-rows`` reads it; nothing is written to either database or to the run folder.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psycopg
import psycopg.rows
from psycopg import sql

from rollbacklib.errors import ConfigError
from rollbacklib.journal import read_events
from rollbacklib.postgres import database as db
from rollbacklib.postgres import rowdiff
from rollbacklib.postgres.client import database_name, with_database
from rollbacklib.state import load_state

FORMATS = ("csv", "jsonl")
BATCH = 500  # keys per SELECT


@dataclass
class Exported:
    table: str
    rows: dict[str, int] = field(default_factory=dict)  # kind -> rows written
    path: Path | None = None
    note: str = ""


def _sides(run_dir: Path, events: list[dict], live: str) -> tuple[str, int | None, str, bool]:
    """The database the restore replaced (kept closed) and the oid it must have, the restored one, and whether the
    restored one is live.

    Swap: the kept pre-rollback database (the original, by oid) and the copy (live once promoted); in-place: the
    safety copy this run took (by the oid it journaled) and the live database, restored in place."""
    from rollbacklib.live import safety_copy_oid, safety_name
    from rollbacklib.steps import StepName

    state = load_state(run_dir)
    if state.swap is not None and any(e["step"] == StepName.SWAP_KEEP and e["status"] == "changed" for e in events):
        return (state.swap.kept, state.original_oid, state.swap.live if state.swap.completed else state.swap.restored,
                state.swap.completed)
    if (taken := safety_copy_oid(events)) is not None:
        return safety_name(live, run_dir.name), taken, live, True
    raise ConfigError(f"The run in {run_dir} kept no database from before its restore (no swap, no in-place safety "
                      "copy): the rows the restore discarded cannot be read back.",
                      next_action="pass the folder of a run that swapped the databases, or of an in-place run that "
                      "took its safety copy.", step="lost-rows")


def export_lost_rows(run_dir: Path, out_dir: Path, fmt: str = "csv", config_path: str | None = None) -> list[Exported]:
    """Write every row the run's restore discarded into ``out_dir``, one file per table; return what was written.

    The lost keys are the ones ``compare-rows`` counted: the kept side against the restored side's row hashes
    taken before production served again (``copy_rows/``), so a row the application wrote since is never listed.
    A run without those hashes (an older run) is compared with the restored database as it is now, and says so.
    """
    from rollbacklib.way_back import run_environment

    if fmt not in FORMATS:
        raise ConfigError(f"Unknown format {fmt!r}.", next_action="use --format csv or --format jsonl.",
                          step="lost-rows")
    run_dir = Path(run_dir)
    events = read_events(run_dir)
    _, env = run_environment(run_dir, config_path, events)
    url = env.parsed_database_url().conninfo
    kept_name, kept_oid, restored_name, restored_live = _sides(run_dir, events, database_name(url))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hashes = run_dir / rowdiff.SNAPSHOT_FOLDER
    with db.connect(with_database(url, env.maintenance_database), step="lost-rows") as admin:
        found = admin.execute("SELECT oid::bigint FROM pg_database WHERE datname = %s", (kept_name,)).fetchone()
        if found is None or (kept_oid is not None and found[0] != kept_oid):
            raise ConfigError(f"{kept_name} is not on the server as this run kept it (oid {kept_oid}, found "
                              f"{found[0] if found else 'none'}): nothing was read.",
                              next_action="find out what happened to it (the journal has what the run did); the rows "
                              "the run counted are in run.json's rows_lost.", step="lost-rows")
        with _private(admin, url, kept_name) as kept, _restored(admin, url, restored_name, restored_live) as restored:
            if (hashes / rowdiff.SNAPSHOT_INDEX).exists():
                return _export_against_hashes(kept, restored, hashes, out_dir, fmt)
            tables = sorted(set(rowdiff._tables(kept)) | set(rowdiff._tables(restored)))
            exported = [_export_table(kept, restored, table, out_dir, fmt) for table in tables
                        if table not in rowdiff.BOOKKEEPING]
    for table in exported:  # compared with the restored database as it is now: said on every table
        table.note = "; ".join(filter(None, [table.note, "no row hashes from before the reopen: compared with the "
                                             "restored database as it is now (rows written since show as lost)"]))
    return exported


def _export_against_hashes(kept: psycopg.Connection, restored: psycopg.Connection, hashes: Path, out_dir: Path,
                           fmt: str) -> list[Exported]:
    keys: dict[str, dict[str, list[tuple]]] = {}
    lost = rowdiff.diff_against_snapshot(
        kept, hashes, on_table_key=lambda table, kind, key: keys.setdefault(
            table, {"inserted": [], "updated": [], "deleted": []})[kind].append(key))
    index = json.loads((hashes / rowdiff.SNAPSHOT_INDEX).read_text())
    done = []
    for table, diff in sorted(lost["tables"].items()):
        exported = Exported(table, note=diff.get("note", ""))
        spec = index["tables"].get(table)
        if spec is None and diff.get("inserted"):  # created after the backup: every row of it is lost
            rows = [("inserted", row) for row in _all_rows(kept, table)]
            columns = list(rowdiff._columns(kept, table))
        elif table in keys:
            found = keys[table]
            rows = [(kind, row) for kind in ("inserted", "updated")
                    for row in _rows(kept, table, spec["key"], spec["native"], found[kind])]
            rows += [("deleted", row) for row in _rows(restored, table, spec["key"], spec["native"], found["deleted"])]
            columns = list(dict.fromkeys([*rowdiff._columns(kept, table), *rowdiff._columns(restored, table)]))
        else:
            rows = []
        if rows:
            _write(exported, rows, columns, out_dir, fmt)
        done.append(exported)
    return done


def _private(admin, url: str, database: str):
    statements = [s.as_string(admin) for s in db.private_connection_statements(database)]
    return db.private_connection(admin, url, database, statements)


def _restored(admin, url: str, database: str, live: bool):
    """The live database after a swap; the copy still closed (a run that stopped before the promote) privately."""
    return psycopg.connect(with_database(url, database), autocommit=True) if live else _private(admin, url, database)


def _export_table(kept: psycopg.Connection, restored: psycopg.Connection, table: str, out_dir: Path,
                  fmt: str) -> Exported:
    keys: dict[str, list[tuple]] = {"inserted": [], "updated": [], "deleted": []}
    diff = rowdiff.diff_table(kept, restored, table, on_key=lambda kind, key: keys[kind].append(key))
    done = Exported(table, note=diff.note)
    if not diff.comparable:
        return done
    in_restored = table in rowdiff._tables(restored)
    if diff.inserted and not in_restored:  # created after the backup: every row of it is lost
        rows = [("inserted", row) for row in _all_rows(kept, table)]
        columns = list(rowdiff._columns(kept, table))
    else:
        native = rowdiff.key_native(kept, restored, table, diff.key)
        rows = [(kind, row) for kind in ("inserted", "updated") for row in _rows(kept, table, diff.key, native,
                                                                                  keys[kind])]
        rows += [("deleted", row) for row in _rows(restored, table, diff.key, native, keys["deleted"])]
        columns = list(dict.fromkeys([*rowdiff._columns(kept, table), *rowdiff._columns(restored, table)]))
    if rows:
        _write(done, rows, columns, out_dir, fmt)
    return done


def _write(done: Exported, rows: list[tuple[str, dict]], columns: list[str], out_dir: Path, fmt: str) -> None:
    done.path = out_dir / f"{done.table}.{fmt}"
    with open(done.path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh) if fmt == "csv" else None
        if writer:
            writer.writerow(["_lost", *columns])
        for kind, row in rows:
            done.rows[kind] = done.rows.get(kind, 0) + 1
            if writer:
                writer.writerow([kind, *(_text(row.get(c)) for c in columns)])
            else:
                fh.write(json.dumps({"_lost": kind, **{c: row.get(c) for c in columns}}, default=str) + "\n")


def _text(value) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value, default=str) \
        if isinstance(value, (dict, list)) else str(value)


def _all_rows(conn: psycopg.Connection, table: str) -> Iterator[dict]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        yield from cur.execute(sql.SQL("SELECT * FROM {}").format(db._ident(table)))


def _rows(conn: psycopg.Connection, table: str, key: list[str], native: list[bool], keys: list[tuple]) -> list[dict]:
    """The rows of ``table`` whose keys (as ``rowdiff`` streams them) are in ``keys``, in that order."""
    found = []
    target = sql.SQL("({})").format(sql.SQL(", ").join(rowdiff._key_expr(c, n) for c, n in zip(key, native)))
    for start in range(0, len(keys), BATCH):
        batch = keys[start:start + BATCH]
        values = sql.SQL(", ").join(sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(key)))
                                    for _ in batch)
        query = sql.SQL("SELECT * FROM {} WHERE {} IN ({}) ORDER BY {}").format(
            db._ident(table), target, values, sql.SQL(", ").join(sql.Identifier(c) for c in key))
        with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            found += cur.execute(query, [bytes(v) if isinstance(v, memoryview) else v for k in batch for v in k])
    return found
