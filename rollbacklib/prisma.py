"""Prisma Migrate's bookkeeping as the runbook reads it: migration IDs, folders and ``_prisma_migrations``.

This module knows how Prisma names, checksums and records migrations on PostgreSQL; it never
writes them (the drill's ``prisma migrate deploy`` emulation is in ``rollbacklib.drill``) and
knows nothing about any particular project.

Every function that takes ``conn`` expects a psycopg 3 connection; autocommit may be on or off,
and what the function writes is committed before it returns.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from rollbacklib.errors import ConfigError

MIGRATIONS_TABLE = "_prisma_migrations"
MIGRATION_SCRIPT = "migration.sql"
MIGRATION_LOCK = "migration_lock.toml"
EXPECTED_PROVIDER = "postgresql"

#: Prisma's folder name for a migration: a UTC timestamp, an underscore, then the name given
#: to ``prisma migrate dev --name`` with everything but letters, digits and ``_`` replaced.
MIGRATION_ID_PATTERN = re.compile(r"(?P<timestamp>[0-9]{14})_(?P<name>[A-Za-z0-9_]+)")
MIGRATION_ID_FORM = "YYYYMMDDHHMMSS_name"
MAX_MIGRATION_NAME = 255  # _prisma_migrations.migration_name is VARCHAR(255)
MIGRATION_ID_EXAMPLE = "20251202020032_update_user_schema_final"

_ROW_COLUMNS = (
    "id",
    "checksum",
    "finished_at",
    "migration_name",
    "logs",
    "rolled_back_at",
    "started_at",
    "applied_steps_count",
)
_SELECT_ROW = f"SELECT {', '.join(_ROW_COLUMNS)} FROM {MIGRATIONS_TABLE}"


@dataclass(frozen=True)
class MigrationFile:
    """One migration folder of a Prisma project."""

    name: str
    path: Path  # the migration.sql file
    checksum: str


def validate_migration_id(migration_id: str) -> str:
    """Return ``migration_id`` unchanged if it has Prisma's ``YYYYMMDDHHMMSS_name`` form."""
    match = MIGRATION_ID_PATTERN.fullmatch(migration_id) if isinstance(migration_id, str) else None
    problem = None if match else "wrong form"
    if match and len(migration_id) > MAX_MIGRATION_NAME:
        problem = f"{len(migration_id)} characters; Prisma's migration_name holds at most {MAX_MIGRATION_NAME}"
    if match:
        try:
            datetime.strptime(match["timestamp"], "%Y%m%d%H%M%S")
        except ValueError:
            problem = f"{match['timestamp']} is not a valid date and time"
    if problem:
        raise ConfigError(
            f"{migration_id!r} is not a Prisma migration ID ({problem}). Expected "
            f"{MIGRATION_ID_FORM}: a UTC timestamp, an underscore, then letters, digits or "
            f"underscores, for example {MIGRATION_ID_EXAMPLE}.",
            next_action="pass the full folder name from prisma/migrations/ (ls prisma/migrations), "
            "exactly as `prisma migrate status` prints it.",
            step="config",
            expected=MIGRATION_ID_FORM,
            found=migration_id,
        )
    return migration_id


def migration_checksum(path: str | Path) -> str:
    """Lowercase hex SHA-256 of the file's bytes, as Prisma stores it in ``checksum``."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def list_migrations(migrations_dir: str | Path) -> list[MigrationFile]:
    """Every migration folder under ``migrations_dir``, sorted by name (Prisma's apply order)."""
    migrations_dir = Path(migrations_dir)
    if not migrations_dir.is_dir():
        raise ConfigError(
            f"Migrations folder {migrations_dir} not found.",
            next_action="point migrations_dir at the prisma/migrations folder of the project.",
            step="config",
        )
    _check_lock_file(migrations_dir / MIGRATION_LOCK)
    migrations = []
    for folder in sorted(p for p in migrations_dir.iterdir() if p.is_dir()):
        script = folder / MIGRATION_SCRIPT
        if not script.is_file():
            raise ConfigError(
                f"Migration folder {folder} has no {MIGRATION_SCRIPT}.",
                next_action=f"restore {script} from version control, or remove the stray folder.",
                step="config",
            )
        migrations.append(MigrationFile(folder.name, script, migration_checksum(script)))
    return migrations


def _check_lock_file(lock: Path) -> None:
    if not lock.is_file():
        raise ConfigError(
            f"{lock} not found: this is not a Prisma migrations folder.",
            next_action="point migrations_dir at the folder `prisma migrate dev` created "
            f"(it holds {MIGRATION_LOCK} next to the migration folders).",
            step="config",
        )
    try:
        provider = tomllib.loads(lock.read_text(encoding="utf-8")).get("provider")
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(
            f"{lock} is not valid TOML: {err}",
            next_action=f"restore {lock} from version control.",
            step="config",
        ) from None
    if provider != EXPECTED_PROVIDER:
        raise ConfigError(
            f"{lock} says provider = {provider!r}; this runbook handles PostgreSQL only.",
            next_action="use the migrations folder of the PostgreSQL project.",
            step="config",
            expected=EXPECTED_PROVIDER,
            found=provider,
        )


def _commit(conn: psycopg.Connection) -> None:
    if not conn.autocommit:
        conn.commit()


def _migrations_table_exists(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (MIGRATIONS_TABLE,)).fetchone()[0]


def _serializable(row: tuple) -> dict:
    record = dict(zip(_ROW_COLUMNS, row))
    for key, value in record.items():
        if isinstance(value, datetime):
            # In UTC, so rows read by sessions with different TimeZone settings compare equal.
            record[key] = value.astimezone(timezone.utc).isoformat()
    return record


def applied_migrations(conn: psycopg.Connection) -> list[dict]:
    """The rows of ``_prisma_migrations`` (ordered by started_at, then name), JSON-serializable.

    Timestamps are ISO-8601 strings in UTC (``+00:00``). ``[]`` when the table does not exist.
    """
    if not _migrations_table_exists(conn):
        _commit(conn)
        return []
    rows = conn.execute(f"{_SELECT_ROW} ORDER BY started_at, migration_name").fetchall()
    _commit(conn)
    return [_serializable(row) for row in rows]


def migration_state(rows: list[dict], migration_id: str) -> str:
    """What Prisma considers ``migration_id`` to be, given the rows of ``_prisma_migrations``.

    - ``"failed"``: a row not finished and not rolled back (``prisma migrate deploy`` refuses to
      go on while one exists: P3009);
    - ``"applied"``: otherwise, a row finished and not rolled back;
    - ``"rolled-back"``: rows exist, but all have ``rolled_back_at`` set;
    - ``"absent"``: no row at all.

    Prisma facts that matter for a rollback:

    - ``prisma migrate resolve --rolled-back NAME`` only accepts a *failed* migration. It fails
      with P3012 ("cannot be rolled back because it is not in a failed state") when the
      migration is applied, and with P3011 ("cannot be rolled back because it was never applied
      to the database") when there is no row.
    - With no row (for example after restoring a backup taken before the migration), ``prisma
      migrate status`` reports the migration as not yet applied, so the next
      ``prisma migrate deploy`` applies it again.
    - A rolled-back migration is also applied again by the next ``prisma migrate deploy``.
    """
    live = [r for r in rows if r["migration_name"] == migration_id and r["rolled_back_at"] is None]
    if any(r["finished_at"] is None for r in live):
        return "failed"
    if live:
        return "applied"
    if any(r["migration_name"] == migration_id for r in rows):
        return "rolled-back"
    return "absent"
