"""The drill's stand-in for ``prisma migrate deploy``: applies migration folders and writes
``_prisma_migrations`` exactly as Prisma's schema engine does on PostgreSQL.

Only the drill and the tests use it, to stage an incident; the runbook never writes Prisma's
bookkeeping (after a full restore it is the backup's, and the runbook asserts that).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg

from rollbacklib.errors import AbortedError, ConfigError, FailedError
from rollbacklib.prisma import (MIGRATIONS_TABLE, MigrationFile, _commit, _migrations_table_exists, _SELECT_ROW,
                                _serializable, applied_migrations, list_migrations, migration_state,
                                validate_migration_id)

#: Exactly what the schema engine runs on PostgreSQL (prisma-engines,
#: sql-schema-connector/src/flavour/postgres.rs, ``create_migrations_table``).
PRISMA_MIGRATIONS_DDL = """\
CREATE TABLE _prisma_migrations (
    id                      VARCHAR(36) PRIMARY KEY NOT NULL,
    checksum                VARCHAR(64) NOT NULL,
    finished_at             TIMESTAMPTZ,
    migration_name          VARCHAR(255) NOT NULL,
    logs                    TEXT,
    rolled_back_at          TIMESTAMPTZ,
    started_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_steps_count     INTEGER NOT NULL DEFAULT 0
);
"""


def _find_migration(migrations_dir: str | Path, name: str) -> MigrationFile:
    migrations = list_migrations(migrations_dir)
    for migration in migrations:
        if migration.name == name:
            return migration
    known = ", ".join(m.name for m in migrations) or "none"
    raise ConfigError(
        f"Migration {name} is not in {migrations_dir}.",
        next_action=f"use one of: {known}.",
        step="config",
    )


def _ensure_migrations_table(conn: psycopg.Connection) -> None:
    if not _migrations_table_exists(conn):
        conn.execute(PRISMA_MIGRATIONS_DDL)
    _commit(conn)


def _row_by_id(conn: psycopg.Connection, row_id: str) -> dict:
    return _serializable(conn.execute(f"{_SELECT_ROW} WHERE id = %s", (row_id,)).fetchone())


def apply_migration(conn: psycopg.Connection, migrations_dir: str | Path, name: str) -> dict:
    """Apply one migration the way ``prisma migrate deploy`` does, and return its row.

    Like the schema engine: record the start (own commit), run the script (on its own, so it
    is all-or-nothing), then count the step and set ``finished_at``. When the script fails,
    the row keeps ``finished_at`` NULL and gets the error in ``logs``, which is what Prisma
    calls a failed migration; FailedError is raised.
    """
    migration = _find_migration(migrations_dir, name)
    script = migration.path.read_text(encoding="utf-8")
    _ensure_migrations_table(conn)
    row_id = str(uuid.uuid4())
    conn.execute(
        f"INSERT INTO {MIGRATIONS_TABLE} (id, checksum, started_at, migration_name) "
        "VALUES (%s, %s, now(), %s)",
        (row_id, migration.checksum, migration.name),
    )
    _commit(conn)
    try:
        # No parameters: psycopg sends the text as one simple query, so the script may hold
        # several statements and its % signs are left alone.
        conn.execute(script)
        _commit(conn)
    except psycopg.Error as err:
        if not conn.autocommit:
            conn.rollback()
        logs = f"Database error code: {err.sqlstate}\n\nDatabase error:\n{err}"
        conn.execute(f"UPDATE {MIGRATIONS_TABLE} SET logs = %s WHERE id = %s", (logs, row_id))
        _commit(conn)
        raise FailedError(
            f"Migration {name} failed: {err}",
            next_action="the database is unchanged by the script and the migration is recorded as "
            "failed; fix the cause, then `prisma migrate resolve --rolled-back "
            f"{name}` before deploying again.",
            step="apply-migration",
            expected="the script runs without error",
            found=f"SQLSTATE {err.sqlstate}",
        ) from err
    conn.execute(
        f"UPDATE {MIGRATIONS_TABLE} "
        "SET applied_steps_count = applied_steps_count + 1, finished_at = now() WHERE id = %s",
        (row_id,),
    )
    _commit(conn)
    return _row_by_id(conn, row_id)


def apply_migrations(
    conn: psycopg.Connection,
    migrations_dir: str | Path,
    until: str | None = None,
    including: bool = True,
) -> list[dict]:
    """Apply pending migrations in order, like ``prisma migrate deploy``; return the new rows.

    ``until`` stops at that migration (applied too when ``including``). Migrations already
    applied are skipped. A failed migration in the database stops everything before any
    change (AbortedError), as Prisma's P3009 does.
    """
    migrations = list_migrations(migrations_dir)
    if until is not None:
        validate_migration_id(until)
        _find_migration(migrations_dir, until)  # ConfigError naming the known migrations
        names = [m.name for m in migrations]
        migrations = migrations[: names.index(until) + (1 if including else 0)]
    rows = applied_migrations(conn)
    failed = [r["migration_name"] for r in rows if migration_state(rows, r["migration_name"]) == "failed"]
    if failed:
        raise AbortedError(
            f"Failed migrations in the database: {', '.join(sorted(set(failed)))}; "
            "new migrations will not be applied (Prisma P3009).",
            next_action="resolve them first: restore the database, then "
            "`prisma migrate resolve --rolled-back NAME` for each.",
            step="apply-migration",
        )
    applied = []
    for migration in migrations:
        if migration_state(rows, migration.name) != "applied":
            applied.append(apply_migration(conn, migrations_dir, migration.name))
    return applied


