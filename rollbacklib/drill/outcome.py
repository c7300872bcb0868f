"""What a fault drill observed, read from the server itself: the catalog and the rows, never the run's records.

These reads are independent of the runbook's code on purpose: the drill judges the runbook,
so it does not ask the runbook what happened. Rows are compared whole: per table, the count
and the md5 of every row's text in a stable order.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg import sql

from rollbacklib.postgres.client import with_database


@dataclass(frozen=True)
class Database:
    name: str
    oid: int
    allows_connections: bool
    connection_limit: int


@dataclass
class Snapshot:
    """The server as one moment showed it: the databases of the live name's family, and the live rows."""

    databases: dict[str, Database]
    tables: dict[str, tuple[int, str]]  # "schema.table" -> (rows, md5 of the rows)

    def live(self, name: str) -> Database | None:
        return self.databases.get(name)


@dataclass
class Verdict:
    """Each check with whether it held; the drill passes when every one did."""

    checks: list[tuple[bool, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, ok: bool, text: str) -> bool:
        self.checks.append((bool(ok), text))
        return bool(ok)

    @property
    def differences(self) -> list[str]:
        return [text for ok, text in self.checks if not ok]


def databases(admin_url: str, live: str) -> dict[str, Database]:
    """The live database and every database named after it (kept, restored, failed copies)."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        rows = admin.execute("SELECT datname, oid, datallowconn, datconnlimit FROM pg_database "
                             "WHERE datname = %s OR left(datname, %s) = %s",
                             (live, len(live) + 2, live + "__")).fetchall()
    return {name: Database(name, oid, allow, limit) for name, oid, allow, limit in rows}


def table_rows(conn: psycopg.Connection) -> dict[str, tuple[int, str]]:
    """Per user table: its row count and the md5 of all its rows (as text, in text order)."""
    tables = conn.execute("SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = "
                          "'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema') "
                          "ORDER BY 1, 2").fetchall()
    found = {}
    for schema, table in tables:
        query = sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
                        "FROM {}.{} t").format(sql.Identifier(schema), sql.Identifier(table))
        count, digest = conn.execute(query).fetchone()
        found[f"{schema}.{table}"] = (count, digest)
    return found


def snapshot(url: str, admin_url: str, live: str) -> Snapshot:
    with psycopg.connect(url, autocommit=True) as conn:
        tables = table_rows(conn)
    return Snapshot(databases(admin_url, live), tables)


@contextmanager
def opened(admin_url: str, url: str, name: str) -> Iterator[psycopg.Connection]:
    """A superuser connection to ``name``; a database the runbook keeps closed is opened for it only, closed again."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        allowed = admin.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (name,)).fetchone()[0]
        if not allowed:
            admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
        try:
            with psycopg.connect(with_database(url, name), autocommit=True) as conn:
                yield conn
        finally:
            if not allowed:
                admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))


def read_closed(admin_url: str, url: str, name: str) -> dict[str, tuple[int, str]]:
    with opened(admin_url, url, name) as conn:
        return table_rows(conn)


def differing_tables(expected: dict[str, tuple[int, str]], found: dict[str, tuple[int, str]]) -> list[str]:
    out = []
    for table in sorted(set(expected) | set(found)):
        a, b = expected.get(table), found.get(table)
        if a != b:
            out.append(f"{table}: {a[0] if a else 'absent'} row(s) before, {b[0] if b else 'absent'} now"
                       + (" (same count, other rows)" if a and b and a[0] == b[0] else ""))
    return out


@dataclass
class Target:
    """Where to look: the live name on the drill's server, the run, and what the rollback must restore."""

    url: str
    admin_url: str
    database: str
    migration_id: str
    columns: list  # the config's ColumnExpectation list for the migration
    backup: Path

    def kept(self, run_id: str) -> str:
        return f"{self.database}__pre_rollback_{run_id}"


def check_unchanged(target: Target, before: Snapshot, verdict: Verdict) -> None:
    """Nothing changed: the same databases with the same settings, the live rows as they were."""
    now = snapshot_or_none(target)
    if not verdict.check(now is not None, f"{target.database} answers through the application's URL"):
        return
    verdict.check(now.databases == before.databases, "the databases and their settings are as they were"
                  + ("" if now.databases == before.databases else
                     f": before {_names(before.databases)}, now {_names(now.databases)}"))
    diff = differing_tables(before.tables, now.tables)
    verdict.check(not diff, "every row of the live database is as it was" + (": " + "; ".join(diff) if diff else ""))


def check_original_serves(target: Target, before: Snapshot, verdict: Verdict) -> None:
    """The original database (same oid) still has the live name, open, with its rows; copies left closed."""
    now = snapshot_or_none(target)
    original = before.live(target.database)
    live = now.live(target.database) if now else None
    verdict.check(live is not None and live.oid == original.oid and live.allows_connections,
                  f"{target.database} is the original database (oid {original.oid}) and accepts connections"
                  + ("" if live else ": the live name is missing or refuses connections"))
    if now is not None:
        diff = differing_tables(before.tables, now.tables)
        verdict.check(not diff, "every row of the live database is as it was" + (": " + "; ".join(diff) if diff else ""))
        _copies(now, verdict)


def check_rolled_back(target: Target, before: Snapshot, run_id: str, verdict: Verdict, *, serving: bool = True) -> None:
    """Production is back on the restored data, the original kept whole and closed, no copy left open."""
    cat = databases(target.admin_url, target.database)
    live, kept = cat.get(target.database), cat.get(target.kept(run_id))
    original = before.live(target.database)
    if serving:
        verdict.check(live is not None and live.allows_connections and live.connection_limit == original.connection_limit,
                      f"{target.database} exists and accepts connections as before"
                      + ("" if live else ": production is down, the live name is missing"))
    else:
        verdict.check(live is not None, f"{target.database} exists (the restored copy holds the name)")
    verdict.check(live is not None and live.oid != original.oid,
                  f"{target.database} is no longer the original database (oid {original.oid})")
    if live is not None:
        _restored_data(target, verdict)
    verdict.check(kept is not None and kept.oid == original.oid,
                  f"{target.kept(run_id)} is the original database (oid {original.oid})"
                  + ("" if kept else ": not found"))
    if kept is not None:
        verdict.check(not kept.allows_connections, f"{kept.name} is closed to connections")
        diff = differing_tables(before.tables, read_closed(target.admin_url, target.url, kept.name))
        verdict.check(not diff, f"{kept.name} holds every original row (counts and hashes as read before the fault)"
                      + (": " + "; ".join(diff) if diff else ""))
    _copies(Snapshot(cat, {}), verdict)


def _restored_data(target: Target, verdict: Verdict) -> None:
    """The bad migration is gone from the live ``_prisma_migrations``, the columns are as configured, the rows the backup's."""
    try:
        with opened(target.admin_url, target.url, target.database) as conn:
            applied = conn.execute("SELECT count(*) FROM _prisma_migrations WHERE migration_name = %s",
                                   (target.migration_id,)).fetchone()[0]
            verdict.check(applied == 0, f"{target.migration_id} is not in the live _prisma_migrations")
            for c in target.columns:
                found = conn.execute("SELECT 1 FROM information_schema.columns WHERE table_name = %s AND "
                                     "column_name = %s", (c.table, c.column)).fetchone() is not None
                verdict.check(found == c.exists, f"{c.table}.{c.column} {'exists' if c.exists else 'is absent'} live")
            _restored_rows(target, verdict, table_rows(conn))
    except psycopg.Error as err:
        verdict.check(False, f"the live database could not be read: {str(err).strip().splitlines()[0]}")


def _restored_rows(target: Target, verdict: Verdict, tables: dict) -> None:
    """The live row counts equal the backup's manifest (the restore brought back the backup's rows)."""
    manifest = target.backup.parent / (target.backup.name + ".manifest.json")
    if not manifest.exists():
        return
    expected = json.loads(manifest.read_text()).get("row_counts", {})
    live = {name.split(".", 1)[1]: count for name, (count, _) in tables.items()}
    wrong = {t: (n, live.get(t)) for t, n in expected.items() if live.get(t) != n}
    verdict.check(not wrong, "the live row counts equal the backup's manifest"
                  + ("" if not wrong else ": " + ", ".join(f"{t} {a} expected, {b} found" for t, (a, b) in wrong.items())))


def _copies(now: Snapshot, verdict: Verdict) -> None:
    copies = [d for d in now.databases.values() if "__restored_" in d.name]
    open_copies = [d.name for d in copies if d.allows_connections]
    verdict.check(not open_copies, "no restored copy is left open" + (f": {open_copies}" if open_copies else ""))
    for d in copies:
        if not d.allows_connections:
            verdict.notes.append(f"a closed copy is left behind: {d.name} (drop it once the run is closed: "
                                 f'DROP DATABASE IF EXISTS "{d.name}")')


def snapshot_or_none(target: Target) -> Snapshot | None:
    try:
        return snapshot(target.url, target.admin_url, target.database)
    except psycopg.Error:
        return None


def _names(found: dict[str, Database]) -> str:
    return ", ".join(f"{d.name}({'open' if d.allows_connections else 'closed'}, limit {d.connection_limit})"
                     for d in sorted(found.values(), key=lambda d: d.name))
