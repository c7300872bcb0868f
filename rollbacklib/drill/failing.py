"""The drill's failed-migration incidents (``rollback drill --migration-fails [--partly]``).

``whole``: the scenario's ``failing_data_sql`` leaves rows the bad migration's new constraint
rejects; ``prisma migrate deploy`` runs the script as one statement, which fails: the schema is
unchanged and ``_prisma_migrations`` holds the row with ``finished_at`` empty (Prisma's P3009).
``partly``: the same data, with the script run as Prisma's PostgreSQL driver adapter runs it,
statement by statement, each committed on its own, each action of an ``ALTER TABLE`` as its own
statement (``rollbacklib.drill.partial_migrate``): the statements before the failing one stay
applied.
"""

from __future__ import annotations

import psycopg

from rollbacklib.drill.partial_migrate import apply_statement_by_statement
from rollbacklib.drill.prisma_migrate import apply_migration
from rollbacklib.drill.scenario import Scenario, table_counts
from rollbacklib.errors import ConfigError, FailedError


def add_failing_data(conn: psycopg.Connection, scenario: Scenario) -> str:
    """Run the scenario's ``failing_data_sql`` (before the backup); say how many rows it changed."""
    if scenario.failing_data_sql is None:
        raise ConfigError(f"Scenario {scenario.name} has no failing_data_sql: it can not stage a failing migration.",
                          next_action=f"add failing_data_sql = \"data/...sql\" to {scenario.root}/scenario.toml: rows "
                          "the bad migration's new constraint rejects.", step="drill")
    cursor = conn.execute(scenario.failing_data_sql.read_text(encoding="utf-8"))
    conn.commit()
    return f"{cursor.rowcount} row(s) changed by {scenario.failing_data_sql.name}"


def apply_failing(conn: psycopg.Connection, url: str, scenario: Scenario, migration_id: str, *, partly: bool) -> str:
    """Apply the bad migration so that it fails; FailedError is expected and said, success is a config error.

    Whole: ``prisma migrate deploy``'s way (``prisma_migrate.apply_migration``, all or nothing). Partly: statement
    by statement, each ``ALTER TABLE`` action on its own (``partial_migrate.apply_statement_by_statement``).
    """
    try:
        if partly:
            apply_statement_by_statement(url, scenario.migrations_dir, migration_id, actions=True)
        else:
            apply_migration(conn, scenario.migrations_dir, migration_id)
    except FailedError as err:
        return (f"prisma migrate deploy failed as staged ({'part way' if partly else 'as a whole'}): "
                f"{err.message.splitlines()[0]}; tables: {table_counts(conn)}")
    raise ConfigError(f"{migration_id} applied without error: the scenario's failing_data_sql does not make it fail.",
                      next_action="make failing_data_sql leave rows the migration's new constraint rejects.",
                      step="drill")
