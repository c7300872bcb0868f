"""A drill scenario: a Prisma project folder plus the SQL that fills it with data.

A scenario folder holds ``scenario.toml``::

    name = "auth-platform"
    description = "..."
    migrations_dir = "prisma/migrations"        # Prisma's migrations folder
    generate_sql = "data/generate.sql"          # fills the database; %(users)s = user count
    after_migration_sql = "data/after_migration.sql"  # what the app writes after the bad one
    database = "automation_platform"            # database the drill creates
    failing_data_sql = "data/failing_data.sql"  # optional: rows the bad migration's new constraint rejects
                                                # (rollback drill --migration-fails runs it before the backup)

Paths are relative to the folder. Nothing here knows which migration is the bad one: the
caller names it.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import psycopg

from rollbacklib.postgres.database import row_counts
from rollbacklib.errors import ConfigError
from rollbacklib.drill.prisma_migrate import apply_migrations
from rollbacklib.prisma import MIGRATIONS_TABLE, MigrationFile, list_migrations, validate_migration_id

SCENARIO_FILE = "scenario.toml"
DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

_REQUIRED = ("name", "migrations_dir", "generate_sql", "after_migration_sql", "database")
_OPTIONAL = ("description", "failing_data_sql")


@dataclass(frozen=True)
class Scenario:
    """A loaded scenario; every path is absolute and exists."""

    root: Path
    name: str
    description: str
    migrations_dir: Path
    generate_sql: Path
    after_migration_sql: Path
    database: str
    failing_data_sql: Path | None = None

    def migrations(self) -> list[MigrationFile]:
        return list_migrations(self.migrations_dir)


def _scenario_error(file: Path, key: str | None, problem: str, next_action: str) -> ConfigError:
    where = f"{file}: {key}" if key else str(file)
    return ConfigError(f"{where}: {problem}", next_action=next_action, step="scenario")


def load_scenario(path: str | os.PathLike) -> Scenario:
    """Read ``scenario.toml`` from a scenario folder (or the file itself) and check it."""
    path = Path(path).expanduser().resolve()
    file = path / SCENARIO_FILE if path.is_dir() else path
    if not file.is_file():
        raise _scenario_error(
            file, None, "not found.", f"pass a scenario folder that holds {SCENARIO_FILE}."
        )
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise _scenario_error(file, None, f"not valid TOML: {err}", f"fix the syntax in {file}.") from None

    for key in _REQUIRED:
        if key not in data:
            raise _scenario_error(file, key, "missing.", f"add {key} = \"...\" to {file}.")
    for key, value in data.items():
        if key not in _REQUIRED + _OPTIONAL:
            known = ", ".join(_REQUIRED + _OPTIONAL)
            raise _scenario_error(file, key, "unknown key.", f"remove it; the keys are: {known}.")
        if not isinstance(value, str):
            raise _scenario_error(file, key, f"must be a string, found {value!r}.", f"quote the value of {key}.")

    root = file.parent

    def existing(key: str, want_dir: bool) -> Path:
        resolved = (root / data[key]).resolve()
        if not (resolved.is_dir() if want_dir else resolved.is_file()):
            kind = "folder" if want_dir else "file"
            raise _scenario_error(
                file, key, f"{kind} {resolved} not found.", f"fix {key} (relative to {root})."
            )
        return resolved

    if not DATABASE_NAME.fullmatch(data["database"]):
        raise _scenario_error(
            file,
            "database",
            f"{data['database']!r} is not a plain PostgreSQL database name.",
            "use letters, digits and underscores (not starting with a digit), at most 63.",
        )
    scenario = Scenario(
        root=root,
        name=data["name"],
        description=data.get("description", "").strip(),
        migrations_dir=existing("migrations_dir", want_dir=True),
        generate_sql=existing("generate_sql", want_dir=False),
        after_migration_sql=existing("after_migration_sql", want_dir=False),
        database=data["database"],
        failing_data_sql=existing("failing_data_sql", want_dir=False) if "failing_data_sql" in data else None,
    )
    scenario.migrations()  # the folder must be a Prisma migrations folder
    return scenario


def _commit(conn: psycopg.Connection) -> None:
    if not conn.autocommit:
        conn.commit()


def table_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Exact row count of every user table but Prisma's own, by name."""
    counts = {name: n for name, n in row_counts(conn).items() if name != MIGRATIONS_TABLE}
    _commit(conn)
    return counts


def generate_data(conn: psycopg.Connection, scenario: Scenario, users: int) -> dict[str, int]:
    """Run the scenario's generate_sql for ``users`` users; return the row count of each table."""
    if isinstance(users, bool) or not isinstance(users, int) or users < 1:
        raise ConfigError(
            f"users must be a positive whole number, found {users!r}.",
            next_action="pass the number of users to generate, e.g. 2000.",
            step="scenario",
        )
    # Client-side binding, because only the simple query protocol takes several statements.
    with psycopg.ClientCursor(conn) as cur:
        cur.execute(scenario.generate_sql.read_text(encoding="utf-8"), {"users": users})
    _commit(conn)
    return table_counts(conn)


def write_after_migration(conn: psycopg.Connection, scenario: Scenario) -> dict[str, int]:
    """Run the scenario's after_migration_sql; return how many rows each table gained."""
    before = table_counts(conn)
    conn.execute(scenario.after_migration_sql.read_text(encoding="utf-8"))
    _commit(conn)
    after = table_counts(conn)
    return {name: count - before.get(name, 0) for name, count in after.items()}


def prepare_until(conn: psycopg.Connection, scenario: Scenario, migration_id: str) -> list[dict]:
    """Apply every migration before ``migration_id`` (not it); return the rows written."""
    validate_migration_id(migration_id)
    return apply_migrations(conn, scenario.migrations_dir, until=migration_id, including=False)
