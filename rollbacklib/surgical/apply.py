"""Applying reverse DDL to the live database: one transaction, a short ``lock_timeout``, bounded retries.

The transaction first takes every lock it needs at once (``LOCK TABLE ... IN ACCESS EXCLUSIVE
MODE``, in one statement, so it never holds half of them while waiting for the rest), waiting at
most ``lock_timeout`` for them: an ``ALTER TABLE`` queued behind a long reader would otherwise
block every new query on the table while it waits. On a lock timeout the transaction rolls back,
changing nothing, and is tried again after a pause, ``attempts`` times in all; each attempt is
reported to ``on_attempt`` (the journal). Any other error rolls back and stops: the statement
that failed is named.

While the locks are held and before the first statement, ``fingerprint`` reads each altered table
as the backup's schema will see it (its kept columns cast to the backup's types): the rows the
live database has before the reversal, which ``verify`` finds again after it.
"""

from __future__ import annotations

import time
from typing import Callable

import psycopg
from psycopg import sql

from rollbacklib.errors import StepError
from rollbacklib.postgres import database as db

#: The same text for the same value on both sides of every hash (the live database and the side copy).
SESSION = ("SET TimeZone = 'UTC'", "SET DateStyle = 'ISO, YMD'", "SET IntervalStyle = 'postgres'",
           "SET extra_float_digits = 1", "SET bytea_output = 'hex'")


def set_session(conn: psycopg.Connection) -> None:
    for statement in SESSION:
        conn.execute(statement)


def lock_timeout_statement(seconds: float) -> str:
    return f"SET LOCAL lock_timeout = '{int(seconds * 1000)}ms'"


def lock_statement(tables: list[list[str]], conn) -> str | None:
    if not tables:
        return None
    return sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
        sql.SQL(", ").join(sql.Identifier(s, t) for s, t in tables)).as_string(conn)


def fingerprint_query(schema: str, table: str, key: list[str], columns: dict[str, str], conn) -> str:
    """count(*) and an order-independent sum of 64-bit row hashes over the key and ``columns`` (cast to their type)."""
    names = list(dict.fromkeys([*key, *sorted(columns)]))
    row = sql.SQL(", ").join(
        sql.SQL("{}::{}").format(sql.Identifier(c), sql.SQL(columns[c])) if c in columns else sql.Identifier(c)
        for c in names)
    return sql.SQL("SELECT count(*), coalesce(sum(('x' || left(md5(ROW({})::text), 16))::bit(64)::bigint::numeric), 0)"
                   "::text FROM {}").format(row, sql.Identifier(schema, table)).as_string(conn)


def fingerprint(conn, query: str) -> dict:
    rows, total = conn.execute(query.encode()).fetchone()
    return {"rows": rows, "sum": total}


def run_transaction(url: str, statements: list[str], *, lock_timeout_seconds: float, attempts: int,
                    pause_seconds: float, step: str, fingerprints: dict[str, str] | None = None,
                    on_attempt: Callable[[int, str], None] = lambda n, why: None,
                    on_statement: Callable[[str], None] = lambda text: None) -> dict:
    """Run ``statements`` (the lock first) in one transaction, retrying lock timeouts; returns the evidence.

    ``fingerprints`` (name -> query) are read right after the ``LOCK TABLE`` statement.
    """
    for attempt in range(1, max(attempts, 1) + 1):
        with db.connect(url, autocommit=False, step=step) as conn:
            set_session(conn)
            conn.commit()
            started = time.monotonic()
            try:
                taken = {}
                for text in statements:
                    conn.execute(text.encode())
                    if text.startswith("LOCK TABLE"):  # every lock held: the rows as they are before the change
                        taken = {name: fingerprint(conn, q) for name, q in (fingerprints or {}).items()}
                conn.commit()
            except psycopg.errors.LockNotAvailable as err:
                conn.rollback()
                on_attempt(attempt, str(err).split("\n")[0])
                if attempt < attempts:
                    time.sleep(pause_seconds * attempt)
                continue
            except psycopg.Error as err:
                conn.rollback()
                raise StepError(f"The reverse DDL failed and was rolled back whole (nothing changed): {text}: "
                                f"{str(err).strip()}",
                                next_action="read the error: the live database is as it was before this step. Fix "
                                "what it names (or restore instead), then run this step again.",
                                step=step, found=getattr(err, "sqlstate", None)) from None
            for text in statements:
                on_statement(text)
            return {"attempts": attempt, "seconds": round(time.monotonic() - started, 3), "fingerprints": taken}
    raise StepError(f"The reverse DDL could not take its locks within {lock_timeout_seconds} s, {attempts} times; "
                    "nothing was changed.", next_action="a long transaction holds the tables: drain the services "
                    "(surgical.services = \"drain\") or end that session, then run this step again.",
                    step=step, escalate="L1")
