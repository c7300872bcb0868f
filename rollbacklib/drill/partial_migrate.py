"""The drill's stand-in for a migration applied statement by statement, as Prisma's PostgreSQL driver adapter runs
one: each statement committed on its own, so a failure leaves the ones before it applied.

``prisma_migrate.apply_migration`` runs a script whole (all or nothing, the schema engine's way);
``apply_statement_by_statement`` reproduces the other shape: the row is recorded as started, the
statements run one at a time in autocommit, and at the first failure the row keeps ``finished_at``
NULL with the error in ``logs`` (Prisma's P3009), the statements before it committed. The seed's
migration on data with a NULL ``authorizerId`` ends with its two DROP COLUMNs applied and the NOT
NULL failed: the partly applied incident the surgical strategy reverses. That migration is one
``ALTER TABLE`` with three actions, which PostgreSQL runs atomically; ``split_actions`` runs each
action of such a statement as its own ``ALTER TABLE``, as the issue's experiment did (two DROP
COLUMNs committed, the NOT NULL failing).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg

from rollbacklib.drill.prisma_migrate import _ensure_migrations_table, _find_migration, _row_by_id
from rollbacklib.errors import FailedError
from rollbacklib.prisma import MIGRATIONS_TABLE
from rollbacklib.sql_script import split_statements, split_top_level, without_comments

_ALTER = re.compile(r'^(ALTER TABLE\s+(?:ONLY\s+)?(?:"(?:[^"]|"")*"|[\w.]+)(?:\."(?:[^"]|"")*")?)\s+(.*?);?\s*$', re.S | re.I)


def split_actions(statement: str) -> list[str]:
    """``ALTER TABLE t a1, a2, a3;`` as ``ALTER TABLE t a1;`` ``ALTER TABLE t a2;`` ...; any other statement as is."""
    match = _ALTER.match(without_comments(statement))
    if not match:
        return [statement]
    return [f"{match.group(1)} {part};" for part in split_top_level(match.group(2))]


def apply_statement_by_statement(url: str, migrations_dir: str | Path, name: str, *, actions: bool = False) -> dict:
    """Apply migration ``name`` one committed statement at a time (``actions``: each action of an ``ALTER TABLE``
    too); returns its row, or raises FailedError naming how many statements were committed before the one that
    failed."""
    migration = _find_migration(migrations_dir, name)
    statements = split_statements(migration.path.read_text(encoding="utf-8"))
    if actions:
        statements = [part for statement in statements for part in split_actions(statement)]
    with psycopg.connect(url, autocommit=True) as conn:
        _ensure_migrations_table(conn)
        row_id = str(uuid.uuid4())
        conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (id, checksum, started_at, migration_name) "
                     "VALUES (%s, %s, now(), %s)", (row_id, migration.checksum, migration.name))
        for done, statement in enumerate(statements):
            try:
                conn.execute(statement.encode())
            except psycopg.Error as err:
                logs = f"Database error code: {err.sqlstate}\n\nDatabase error:\n{err}"
                conn.execute(f"UPDATE {MIGRATIONS_TABLE} SET logs = %s WHERE id = %s", (logs, row_id))
                raise FailedError(
                    f"Migration {name} failed at statement {done + 1} of {len(statements)}, {done} committed "
                    f"before it: {err}",
                    next_action="the migration is recorded as failed and partly applied; roll it back "
                    f"(strategy surgical), then `prisma migrate resolve --rolled-back {name}`.",
                    step="apply-migration", expected="every statement runs", found=f"SQLSTATE {err.sqlstate}",
                ) from err
        conn.execute(f"UPDATE {MIGRATIONS_TABLE} SET applied_steps_count = applied_steps_count + 1, "
                     "finished_at = now() WHERE id = %s", (row_id,))
        return _row_by_id(conn, row_id)
