"""What phase 01 reads before choosing a strategy: the migration's state, the live schema against the backup's
and the migration's intended result, what a restore would discard, and how long a restore takes here. Reads only.

Every figure is read from the live database, the backup's manifest or earlier runs' journals at
the moment of asking, never typed: ``read_situation`` is what each strategy's ``assess`` judges.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from psycopg import sql

from rollbacklib.postgres import backup as bk
from rollbacklib.postgres import database as db
from rollbacklib.prisma import MIGRATION_SCRIPT, MIGRATIONS_TABLE, applied_migrations, migration_state
from rollbacklib.strategies.migration_sql import effect_status, intended_effects

# When no earlier restore on this machine was measured: labelled as assumed wherever it is shown.
FALLBACK_THROUGHPUT_BYTES_PER_SECOND = 20 * 1024 * 1024
FIRST_KEYS = 10  # keys shown of the rows that block a failed statement


@dataclass
class Situation:
    migration_id: str
    state: str  # applied, failed, rolled-back, absent (rollbacklib.prisma.migration_state)
    logs: str | None  # Prisma's logged error of a failed migration
    schema_equal: bool | None  # the live schema equals the backup's (None: the backup has no catalog)
    schema_diff: list[dict]  # live against the backup: dropped, added, changed objects
    effects: list[dict]  # the migration's intended effects, each with its status now
    blockers: list[dict]  # read-only queries of a failed statement's condition, with what they found
    backup_taken_at: str | None
    backup_bytes: int | None
    seconds_since_backup: float | None
    swap_loss: dict  # what a full restore discards (projected): totals and per table
    throughput: dict  # bytes per second of a restore on this server, and where the figure comes from
    migration_sql: str | None = None  # where migration.sql was read from
    notes: list[str] = field(default_factory=list)

    @property
    def partly_applied(self) -> bool:
        return self.state == "failed" and self.schema_equal is False

    @property
    def restore_seconds(self) -> float | None:
        if not self.backup_bytes or not self.throughput.get("bytes_per_second"):
            return None
        return self.backup_bytes / self.throughput["bytes_per_second"]

    def to_dict(self) -> dict:
        return {**asdict(self), "partly_applied": self.partly_applied, "restore_seconds": self.restore_seconds}


def migration_script(ctx) -> Path | None:
    """The migration's ``migration.sql``: in the configured release's migrations folder, when it is there."""
    release = ctx.env.release
    if release and release.migrations_dir:
        path = Path(release.migrations_dir) / ctx.migration_id / MIGRATION_SCRIPT
        if path.is_file():
            return path
    return None


def schema_diff(live: dict, backup: dict) -> list[dict]:
    """Every column, constraint and index that differs between the backup's catalog and the live one."""
    diff = []
    for kind, plural, key, compared in (
            ("column", "columns", ("schema", "table", "column"), ("type", "nullable", "default")),
            ("constraint", "constraints", ("schema", "table", "name"), ("definition",)),
            ("index", "indexes", ("schema", "table", "name"), ("definition",))):
        before = {tuple(o[k] for k in key): o for o in backup.get(plural, [])}
        now = {tuple(o[k] for k in key): o for o in live.get(plural, [])}
        for ident in sorted(before.keys() | now.keys()):
            name = ".".join(ident[1:])
            if ident not in now:
                diff.append({"object": kind, "name": name, "change": "missing live (in the backup)",
                             "backup": {k: before[ident][k] for k in compared}, "live": None})
            elif ident not in before:
                diff.append({"object": kind, "name": name, "change": "added live (not in the backup)",
                             "backup": None, "live": {k: now[ident][k] for k in compared}})
            elif any(before[ident][k] != now[ident][k] for k in compared):
                diff.append({"object": kind, "name": name, "change": "changed",
                             "backup": {k: before[ident][k] for k in compared},
                             "live": {k: now[ident][k] for k in compared}})
    return diff


def invalid_indexes(conn) -> set[str]:
    return {r[0] for r in conn.execute("SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
                                       "WHERE NOT x.indisvalid").fetchall()}


def blocker_query(table: str, column: str, key: list[str]) -> sql.Composable:
    """The rows that make ``SET NOT NULL`` on ``table.column`` fail: a read-only count and the first keys."""
    order = sql.SQL(", ").join(map(sql.Identifier, key)) if key else sql.SQL("ctid")
    shown = sql.SQL(" || ', ' || ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in key) if key \
        else sql.SQL("ctid::text")
    return sql.SQL("SELECT count(*), (array_agg({shown} ORDER BY {order}))[1:{n}] FROM {table} WHERE {column} IS NULL"
                   ).format(shown=shown, order=order, n=sql.Literal(FIRST_KEYS), table=sql.Identifier(table),
                            column=sql.Identifier(column))


def _blockers(conn, effects: list[dict]) -> list[dict]:
    found = []
    for effect in effects:
        if effect["kind"] != "set-not-null" or effect["status"] != "not applied":
            continue
        key = db.primary_key_columns(conn, effect["table"])
        query = blocker_query(effect["table"], effect["name"], key)
        count, keys = conn.execute(query).fetchone()
        found.append({"statement": effect["statement"], "condition": f'{effect["table"]}.{effect["name"]} IS NULL',
                      "query": query.as_string(conn), "rows": count, "key": key, "first_keys": keys or [],
                      "must_change": f'{count} row(s) of {effect["table"]} have {effect["name"]} NULL: give them a '
                      f'value (or delete them) before the next deploy, or the migration fails again'})
    return found


def _timestamp_column(columns: set[str], *names: str) -> str | None:
    return next((n for n in names if n in columns), None)


def projected_swap_loss(conn, manifest: dict, taken_at: datetime | None) -> dict:
    """What a full restore to the backup would discard, counted now on the live database against the manifest.

    Rows created after the backup (``createdAt``/``created_at`` later than its time) are inserts,
    rows updated after it (``updatedAt``/``updated_at``) updates, and rows the backup had that are
    gone now deletions (its row count against the live one). A table without those columns is
    counted by its row count alone, and says so. The exact rows are counted after a swap by
    ``compare-rows``.
    """
    counts_before = manifest.get("row_counts") or {}
    catalog = manifest.get("schema") or {}
    live_counts = db.row_counts(conn)
    live_columns: dict[str, set[str]] = {}
    for column in db.schema_catalog(conn)["columns"]:
        live_columns.setdefault(column["table"], set()).add(column["column"])
    tables, totals = {}, {"inserted": 0, "updated": 0, "deleted": 0}
    for table, now in sorted(live_counts.items()):
        if table == MIGRATIONS_TABLE:
            continue
        before = counts_before.get(table)
        columns = live_columns.get(table.split(".")[-1], set())
        created = _timestamp_column(columns, "createdAt", "created_at")
        updated = _timestamp_column(columns, "updatedAt", "updated_at")
        entry = {"rows_now": now, "rows_in_backup": before}
        if before is None:
            entry.update(inserted=now, updated=0, deleted=0, basis="table not in the backup: every row")
        elif taken_at is not None and created:
            ident, at = sql.Identifier(*table.split(".")), taken_at.astimezone(timezone.utc).replace(tzinfo=None)
            changed_after = sql.SQL("{c} <= %(at)s AND {u} > %(at)s").format(
                c=sql.Identifier(created), u=sql.Identifier(updated)) if updated else sql.SQL("false")
            since = conn.execute(sql.SQL("SELECT count(*) FILTER (WHERE {c} > %(at)s), count(*) FILTER (WHERE {changed}) "
                                         "FROM {t}").format(c=sql.Identifier(created), changed=changed_after, t=ident),
                                 {"at": at}).fetchone()
            inserted, changed = since
            entry.update(inserted=inserted, updated=changed, deleted=max(0, before - (now - inserted)),
                         basis=f"{created}" + (f"/{updated}" if updated else "") + " after the backup; deletions by "
                         "row count")
        else:
            entry.update(inserted=max(0, now - before), updated=None, deleted=max(0, before - now),
                         basis="row counts only (no createdAt/updatedAt column)")
        entry["lost"] = entry["inserted"] + (entry["updated"] or 0) + entry["deleted"]
        for k in totals:
            totals[k] += entry[k] or 0
        tables[table] = entry
    dropped = sorted({c["table"] for c in catalog.get("columns", [])} - set(live_columns))
    return {"total": sum(totals.values()), **totals, "tables": tables, "tables_gone_live": dropped,
            "exact": False, "basis": "projected from the live database against the backup's manifest"}


def measured_throughput(reports_root: Path, this_run: Path | None = None) -> dict:
    """Bytes per second restored on this machine, from earlier runs' journals (step ``restore``) and states."""
    samples = []
    for journal in sorted(Path(reports_root).glob("*/*/*/journal.jsonl")) if Path(reports_root).is_dir() else []:
        folder = journal.parent
        if folder == this_run or not (folder / "state.json").exists():
            continue
        try:
            size = (json.loads((folder / "state.json").read_text()).get("backup") or {}).get("size_bytes")
            started = ended = None
            for line in journal.read_text().splitlines():
                event = json.loads(line)
                if event.get("step") == "restore" and event.get("status") == "started":
                    started = datetime.fromisoformat(event["ts"])
                elif event.get("step") == "restore" and event.get("status") == "ok" and started:
                    ended = datetime.fromisoformat(event["ts"])
        except (OSError, ValueError):
            continue
        if size and started and ended and ended > started:
            samples.append((size, (ended - started).total_seconds(), str(folder)))
    if not samples:
        return {"bytes_per_second": FALLBACK_THROUGHPUT_BYTES_PER_SECOND, "measured": False,
                "basis": f"assumed {FALLBACK_THROUGHPUT_BYTES_PER_SECOND // (1024 * 1024)} MiB/s: no earlier restore "
                f"journaled under {reports_root}"}
    size, seconds = sum(s[0] for s in samples), sum(s[1] for s in samples)
    return {"bytes_per_second": size / seconds, "measured": True, "runs": len(samples),
            "basis": f"measured: {len(samples)} earlier restore(s) journaled under {reports_root} "
            f"({size} bytes in {seconds:.1f} s)"}


def read_situation(ctx, conn) -> Situation:
    """Everything a strategy is judged on, read now from ``conn`` (the live database), the backup and the journals."""
    state = ctx.state()
    backup = state.need("backup", "verify_backup (01_prepare)")
    manifest = bk.load_manifest(Path(backup.path)) or {}
    rows = applied_migrations(conn)
    mine = [r for r in rows if r["migration_name"] == ctx.migration_id]
    live_catalog = db.schema_catalog(conn)
    backup_catalog = manifest.get("schema")
    notes = []
    if backup_catalog is None:
        notes.append("the backup has no manifest with its schema: the live schema is not compared with it")
    effects, script = [], migration_script(ctx)
    if script is not None:
        invalid = invalid_indexes(conn)
        for effect in intended_effects(script.read_text(encoding="utf-8")):
            effects.append({**effect.to_dict(), "status": effect_status(effect, live_catalog, backup_catalog or {},
                                                                          invalid)})
    else:
        notes.append(f"{ctx.migration_id}/{MIGRATION_SCRIPT} not found (release.migrations_dir): the migration's "
                     "intended result is not compared")
    taken = datetime.fromisoformat(backup.taken_at) if backup.taken_at else None
    return Situation(
        migration_id=ctx.migration_id, state=migration_state(rows, ctx.migration_id),
        logs=next((r["logs"] for r in reversed(mine) if r["finished_at"] is None and r["rolled_back_at"] is None),
                  None),
        schema_equal=None if backup_catalog is None else
        db.schema_fingerprint(live_catalog) == manifest.get("schema_fingerprint"),
        schema_diff=schema_diff(live_catalog, backup_catalog) if backup_catalog is not None else [],
        effects=effects, blockers=_blockers(conn, effects), backup_taken_at=backup.taken_at,
        backup_bytes=backup.size_bytes,
        seconds_since_backup=(datetime.now(timezone.utc) - taken).total_seconds() if taken else None,
        swap_loss=projected_swap_loss(conn, manifest, taken),
        throughput=measured_throughput(ctx.run_dir.parent.parent.parent, ctx.run_dir),
        migration_sql=str(script) if script else None, notes=notes)
