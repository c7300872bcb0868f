"""The backup's side of the comparison, on the same server as the live database but never in it.

- The backup's schema: restored with ``pg_restore --schema-only`` into a scratch database, read
  from its catalog (``catalog.read_schema``) and dropped again. A schema restore creates no rows,
  so it costs the same whatever the database's size (measured in phase 01 and journaled).
- The side restore: a database holding only the affected tables' rows from the backup:
  ``pg_restore --section=pre-data`` (tables, types, sequences; no keys, constraints or indexes, so
  a few tables load without the tables their foreign keys point at), then
  ``pg_restore --data-only -n SCHEMA -t TABLE ...`` for the affected tables alone. The live
  database is never copied.

A plain ``.sql``/``.sql.gz`` dump goes through ``plain_dump`` (``filter | psql``): the same
selection, but the whole script is read and decompressed to find it, so its cost grows with the
backup, not with the affected tables (said in the plan).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from psycopg import sql

from rollbacklib.errors import StepError
from rollbacklib.postgres import database as db
from rollbacklib.postgres.backup import ARCHIVE_FORMATS, backup_format
from rollbacklib.postgres.client import ClientTools, display_command, libpq_env, with_database
from rollbacklib.surgical import plain_dump
from rollbacklib.surgical.catalog import Schema, read_schema

PIPE = "|"  # separates the two programs of a pipeline in an action's argv
MAX_NAME = 63


def _name(database: str, tag: str, run_id: str) -> str:
    """``<database>__<tag>_<run_id>``, the database's name cut to fit 63 characters (as ``live.restored_name``)."""
    suffix = f"__{tag}_{run_id}"
    return database[: MAX_NAME - len(suffix)] + suffix


def scratch_name(database: str, run_id: str) -> str:
    """Where the backup's schema is read (dropped right after)."""
    return _name(database, "schema", run_id)


def side_name(database: str, run_id: str) -> str:
    """Where the affected tables' rows are restored from the backup."""
    return _name(database, "side", run_id)


def create_statements(name: str) -> list[sql.Composable]:
    return [sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))]


def drop_statements(name: str) -> list[sql.Composable]:
    return [db.drop_database_statement(name)]


def is_plain(backup: Path) -> bool:
    return backup_format(backup) not in ARCHIVE_FORMATS


def psql_command(name: str, tools: ClientTools) -> list[str]:
    return [tools.path("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", f"--dbname={name}"]


def schema_commands(backup: Path, name: str, tools: ClientTools) -> list[list[str]]:
    """What restores the backup's schema (no rows) into the empty database ``name``."""
    if is_plain(backup):
        return [plain_dump.command(backup, schema_only=True) + [PIPE] + psql_command(name, tools)]
    return [[tools.path("pg_restore"), "--schema-only", "--no-owner", "--no-privileges", "--exit-on-error",
             f"--dbname={name}", str(backup)]]


def side_commands(backup: Path, name: str, tables: list[tuple[str, str]], tools: ClientTools) -> list[list[str]]:
    """What fills the empty database ``name`` with the backup's tables (no keys) and the rows of ``tables``
    (nothing without tables: a data-only restore with no table named would restore every table)."""
    if not tables:
        return []
    if is_plain(backup):
        return [plain_dump.command(backup, data=tables) + [PIPE] + psql_command(name, tools)]
    restore = [tools.path("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", f"--dbname={name}"]
    selection = [arg for nsp in sorted({s for s, _ in tables}) for arg in ("-n", nsp)]
    selection += [arg for _, t in sorted(tables) for arg in ("-t", t)]
    return [restore + ["--section=pre-data", str(backup)], restore + ["--data-only", *selection, str(backup)]]


def shown(argv: list[str]) -> str:
    """A command (or a ``filter | psql`` pipeline) as the plan shows it."""
    if PIPE in argv:
        i = argv.index(PIPE)
        return f"{display_command(argv[:i])} | {display_command(argv[i + 1:])}"
    return display_command(argv)


def run_command(argv: list[str], url: str, step: str) -> float:
    """Run a command or a pipeline exactly as shown; a failure of either program is an error. Returns seconds."""
    started = time.monotonic()
    if PIPE not in argv:
        ClientTools.run_argv(argv, url=url, step=step, stdout=subprocess.DEVNULL)
        return time.monotonic() - started
    i = argv.index(PIPE)
    env = libpq_env(url)
    feeder = subprocess.Popen(argv[:i], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    reader = subprocess.run(argv[i + 1:], stdin=feeder.stdout, capture_output=True, env=env)
    feeder.stdout.close()
    feeder_err = feeder.stderr.read().decode(errors="replace")
    feeder.wait()
    if reader.returncode != 0 or feeder.returncode != 0:
        said = (reader.stderr.decode(errors="replace") + feeder_err).strip()[-2000:]
        raise StepError(f"{shown(argv)} failed (filter exit {feeder.returncode}, psql exit {reader.returncode}): "
                        f"{said}", next_action="read the error above; the live database was not touched by it.",
                        step=step)
    return time.monotonic() - started


def read_backup_schema(admin, url: str, backup: Path, name: str, tools: ClientTools, step: str,
                       migration_sql: Path | None = None) -> tuple[Schema, Schema | str | None, float]:
    """The backup's schema, from a scratch database ``name`` created, restored (schema only), read and dropped.

    With ``migration_sql``, also the migration's intended result: the script run on that schema in a
    transaction, read, rolled back (a ``str`` saying why when the script does not run there).
    """
    started = time.monotonic()
    for statement in drop_statements(name) + create_statements(name):
        admin.execute(statement)
    intended: Schema | str | None = None
    try:
        for argv in schema_commands(backup, name, tools):
            run_command(argv, with_database(url, name), step)
        with db.connect(with_database(url, name), step=step) as conn:
            schema = read_schema(conn)
            if migration_sql is not None:
                intended = _intended(conn, migration_sql)
    finally:
        for statement in drop_statements(name):
            admin.execute(statement)
    return schema, intended, time.monotonic() - started


def _intended(conn, migration_sql: Path) -> Schema | str:
    import psycopg

    conn.autocommit = False
    try:
        conn.execute(migration_sql.read_text(encoding="utf-8").encode())
        return read_schema(conn)  # commits: on a scratch database that is dropped next
    except psycopg.Error as err:
        conn.rollback()
        return f"the migration's script does not run on the backup's schema: {str(err).strip()}"
