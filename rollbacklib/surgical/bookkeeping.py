"""``_prisma_migrations`` after a surgical reversal: as Prisma expects once the migration is gone.

- The migration finished (``finished_at`` set): its row is deleted, so ``prisma migrate status``
  reports it not yet applied, which is what the schema now is (``prisma migrate resolve
  --rolled-back`` refuses a finished migration: P3012).
- The migration failed part way (``finished_at`` NULL, Prisma's P3009): it is marked rolled back
  exactly as ``prisma migrate resolve --rolled-back`` does, ``rolled_back_at = now()`` on that
  row and nothing else.

Every other row stays byte-identical: the rows' text before and after is compared in the same
transaction, and the statements must hit exactly the rows named (one each), or nothing commits.
"""

from __future__ import annotations

from psycopg import sql

from rollbacklib.errors import StepError
from rollbacklib.prisma import MIGRATIONS_TABLE, applied_migrations

_ROWS = sql.SQL("SELECT id, t::text, (to_jsonb(t) - 'rolled_back_at')::text, rolled_back_at IS NOT NULL FROM {} t "
                "ORDER BY id").format(sql.Identifier(MIGRATIONS_TABLE))


def plan(conn, migration_id: str) -> list[dict]:
    """What to do with each live row of ``migration_id`` not yet rolled back: ``delete`` or ``rolled-back``."""
    rows = [r for r in applied_migrations(conn) if r["migration_name"] == migration_id and r["rolled_back_at"] is None]
    table = sql.Identifier(MIGRATIONS_TABLE)
    out = []
    for row in rows:
        if row["finished_at"] is not None:
            text = sql.SQL("DELETE FROM {} WHERE id = {} AND finished_at IS NOT NULL AND rolled_back_at IS NULL").format(
                table, sql.Literal(row["id"]))
            out.append({"id": row["id"], "do": "delete", "sql": text.as_string(conn)})
        else:
            text = sql.SQL("UPDATE {} SET rolled_back_at = now() WHERE id = {} AND finished_at IS NULL "
                           "AND rolled_back_at IS NULL").format(table, sql.Literal(row["id"]))
            out.append({"id": row["id"], "do": "rolled-back", "sql": text.as_string(conn)})
    return out


def apply(conn, actions: list[dict], step: str) -> dict:
    """Run the planned statements in one transaction on ``conn`` (autocommit off); check every row; commit."""
    before = {r[0]: r for r in conn.execute(_ROWS).fetchall()}
    for action in actions:
        hit = conn.execute(action["sql"].encode()).rowcount
        if hit != 1:
            conn.rollback()
            raise StepError(f"{action['sql']} hit {hit} rows, not 1: nothing was changed in {MIGRATIONS_TABLE}.",
                            next_action=f"read {MIGRATIONS_TABLE} (prisma migrate status): someone changed it since "
                            "the plan; run 01_prepare again.", step=step, expected=1, found=hit)
    after = {r[0]: r for r in conn.execute(_ROWS).fetchall()}
    targets = {a["id"]: a["do"] for a in actions}
    problems = []
    for row_id, row in before.items():
        now = after.get(row_id)
        if targets.get(row_id) == "delete":
            problems += [f"{row_id} still there"] if now else []
        elif targets.get(row_id) == "rolled-back":
            if now is None or now[2] != row[2] or not now[3]:
                problems.append(f"{row_id} changed beyond rolled_back_at")
        elif now is None or now[1] != row[1]:
            problems.append(f"{row_id} changed")
    problems += [f"{row_id} appeared" for row_id in after if row_id not in before]
    if problems:
        conn.rollback()
        raise StepError(f"{MIGRATIONS_TABLE} would not end as planned ({'; '.join(problems)}): rolled back.",
                        next_action=f"read {MIGRATIONS_TABLE}; run 01_prepare again.", step=step, found=problems)
    conn.commit()
    return {"deleted": [i for i, d in targets.items() if d == "delete"],
            "rolled_back": [i for i, d in targets.items() if d == "rolled-back"],
            "other_rows_identical": len(before) - len(targets)}
