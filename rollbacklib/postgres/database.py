"""Reading and changing a PostgreSQL server: catalog, counts, connections, databases.

All SQL the runbook runs against a server lives here. Functions take a psycopg connection or
a URL; they never print. Identifiers are quoted with psycopg.sql, never formatted in.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from typing import Iterator

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from rollbacklib.errors import AbortedError, StepError
from rollbacklib.postgres.client import with_database

APPLICATION_NAME = "rollbacklib"

_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp_%%' AND n.nspname NOT LIKE 'pg_toast_temp_%%'"


@contextmanager
def connect(url: str, *, autocommit: bool = True, step: str = "connect") -> Iterator[psycopg.Connection]:
    """A connection tagged with the runbook's application_name; a clear error if it fails.

    ``url`` is a libpq conninfo (``Environment.database_url()`` gives one); its own
    connect_timeout, when it has one, is kept.
    """
    timeout = {} if "connect_timeout" in conninfo_to_dict(url) else {"connect_timeout": 10}
    try:
        conn = psycopg.connect(url, autocommit=autocommit, application_name=APPLICATION_NAME, **timeout)
    except psycopg.OperationalError as err:
        raise AbortedError(
            f"Cannot connect to the database: {_without_secrets(str(err))}",
            next_action="check that the server is up and that the URL in the environment variable is right.",
            step=step,
            escalate="L1",
        ) from None
    try:
        yield conn
    finally:
        conn.close()


PRIVATE_APPLICATION_NAME = "rollbacklib private"



def private_connection_statements(database: str) -> list[sql.Composable]:
    """What taking a private connection to a closed database runs: open, (connect), close, evict others."""
    return [
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(database)),
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(database)),
        sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {} AND pid <> "
                "pg_backend_pid() AND backend_type = 'client backend'").format(sql.Literal(database)),
    ]


@contextmanager
def private_connection(admin: psycopg.Connection, url: str, database: str,
                       statements: list[str]) -> Iterator[psycopg.Connection]:
    """A connection to ``database`` while it stays closed to everyone else, superusers included.

    ``ALLOW_CONNECTIONS false`` stops every new session but leaves open ones alone: the
    database is opened for the instant it takes to connect, closed again, and any session
    that slipped in meanwhile is terminated before anything is read. ``statements`` are the
    three rendered ``private_connection_statements``, run verbatim; the eviction runs on the
    private session, so ``pg_backend_pid()`` spares it and nothing else (no name can claim it).
    """
    open_it, close_it, evict = statements
    admin.execute(open_it.encode())
    try:
        conn = psycopg.connect(with_database(url, database), autocommit=True,
                               application_name=PRIVATE_APPLICATION_NAME, connect_timeout=10)
    except psycopg.OperationalError as err:
        raise AbortedError(f"Cannot connect to {database}: {_without_secrets(str(err))}",
                           next_action="check the server; the database is closed to connections again.",
                           escalate="L1") from None
    finally:
        admin.execute(close_it.encode())
    try:
        conn.execute(evict.encode())  # from the private session itself: every other session goes, whatever its name
        _wait_until_alone(conn, database)
        yield conn
    finally:
        conn.close()


def _wait_until_alone(conn: psycopg.Connection, database: str, timeout: float = 10.0) -> None:
    """A terminated backend lingers for a moment: nothing is read until this session is the only one."""
    deadline = time.monotonic() + timeout
    while True:
        others = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                              "AND backend_type = 'client backend'", (database,)).fetchone()[0]
        if others == 0:
            return
        if time.monotonic() > deadline:
            raise AbortedError(f"{others} other session(s) on {database} survived eviction.",
                               next_action="end them by hand (pg_stat_activity), then run this step again.",
                               found=others, escalate="L1")
        time.sleep(0.05)


def data_directory(conn: psycopg.Connection) -> str | None:
    """The server's data directory, or None when this role may not read it."""
    try:
        with conn.transaction():
            return conn.execute("SHOW data_directory").fetchone()[0]
    except psycopg.Error:
        return None


def lock_holders(conn: psycopg.Connection, database: str) -> list[dict]:
    """Sessions on ``database`` holding strong locks or idle in a transaction: what a lock timeout waited on."""
    rows = conn.execute(
        """
        SELECT DISTINCT a.pid, a.usename, a.state, a.xact_start, left(a.query, 200)
        FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND l.granted
        WHERE a.datname = %s AND a.pid <> pg_backend_pid() AND a.application_name NOT LIKE 'rollbacklib%%'
          AND (l.mode IN ('AccessExclusiveLock', 'ExclusiveLock', 'ShareRowExclusiveLock', 'ShareLock')
               OR a.state LIKE 'idle in transaction%%')
        ORDER BY a.pid
        """, (database,)).fetchall()
    return [{"pid": r[0], "user": r[1], "state": r[2], "since": r[3].isoformat() if r[3] else None, "query": r[4]}
            for r in rows]


def _without_secrets(message: str) -> str:
    return message.split("\n")[0]


def server_info(conn: psycopg.Connection) -> dict:
    row = conn.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
        "current_database(), current_user, "
        "CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, "
        "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
    ).fetchone()
    return {
        "server_version": row[0],
        "server_version_num": row[1],
        "database": row[2],
        "user": row[3],
        "wal_lsn": row[4],
        "superuser": row[5],
    }


def system_identifier(conn: psycopg.Connection) -> str | None:
    """The server's system identifier (set by initdb, shared by its replicas), as text.

    None when this role may not call ``pg_control_system()``: PUBLIC may by default, but an
    administrator or a managed service can revoke it, and a refusal must fail nothing. Runs
    in a savepoint, so a caller's transaction (a backup's snapshot) survives a refusal.
    """
    try:
        with conn.transaction():
            row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    except (psycopg.ProgrammingError, psycopg.NotSupportedError):  # refused, or no such function here
        return None
    return row[0] if row else None


def database_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


# --- catalog --------------------------------------------------------------------------------

def schema_catalog(conn: psycopg.Connection) -> dict:
    """Tables, columns, constraints and indexes of the user schemas, in a stable order."""
    columns = conn.execute(
        f"""
        SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
               NOT a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped AND {_SCHEMAS}
        ORDER BY 1, 2, 3
        """
    ).fetchall()
    constraints = conn.execute(
        f"""
        SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid)
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_SCHEMAS} AND k.contype IN ('p', 'f', 'u', 'c', 'x')
        ORDER BY 1, 2, 3
        """
    ).fetchall()
    indexes = conn.execute(
        f"""
        SELECT n.nspname, t.relname, i.relname, pg_get_indexdef(x.indexrelid)
        FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_class t ON t.oid = x.indrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE {_SCHEMAS}
        ORDER BY 1, 2, 3
        """
    ).fetchall()
    return {
        "columns": [
            {"schema": r[0], "table": r[1], "column": r[2], "type": r[3], "nullable": r[4], "default": r[5]}
            for r in columns
        ],
        "constraints": [{"schema": r[0], "table": r[1], "name": r[2], "definition": r[3]} for r in constraints],
        "indexes": [{"schema": r[0], "table": r[1], "name": r[2], "definition": r[3]} for r in indexes],
    }


def schema_fingerprint(catalog: dict) -> str:
    """SHA-256 of the catalog; equal fingerprints mean the same tables, columns, keys and indexes."""
    return hashlib.sha256(json.dumps(catalog, sort_keys=True).encode()).hexdigest()


def user_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return conn.execute(
        f"""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {_SCHEMAS}
        ORDER BY 1, 2
        """
    ).fetchall()


def default_schema(conn: psycopg.Connection) -> str:
    """The schema unqualified names resolve to: the first existing one on the search_path.

    Prisma's ``schema`` URL argument puts the application's schema there (``urls.py``); with
    none of the search_path's schemas existing, ``public``.
    """
    return conn.execute("SELECT coalesce(current_schema(), 'public')").fetchone()[0]


def _table_key(schema: str, table: str, default: str) -> str:
    """``table`` for a table of the default schema, ``schema.table`` for any other."""
    return table if schema == default else f"{schema}.{table}"


def _ident(key: str) -> sql.Composable:
    if "." in key:
        schema, table = key.split(".", 1)
        return sql.Identifier(schema, table)
    return sql.Identifier(key)


def row_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Exact row count of every user table (``table`` in the default schema, else ``schema.table``)."""
    counts = {}
    default = default_schema(conn)
    for schema, table in user_tables(conn):
        key = _table_key(schema, table, default)
        counts[key] = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()[0]
    return counts


def primary_key_columns(conn: psycopg.Connection, table: str) -> list[str]:
    rows = conn.execute(
        """
        SELECT a.attname FROM pg_index x
        JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY(x.indkey)
        WHERE x.indrelid = %s::regclass AND x.indisprimary ORDER BY array_position(x.indkey, a.attnum)
        """,
        (sql.Identifier(*table.split(".")).as_string(conn),),
    ).fetchall()
    return [r[0] for r in rows]


def table_digests(conn: psycopg.Connection, limit: int = 100) -> dict[str, dict]:
    """For every table with a primary key: the md5 of its first ``limit`` rows by key, as text."""
    digests = {}
    default = default_schema(conn)
    for schema, table in user_tables(conn):
        key = _table_key(schema, table, default)
        pk = primary_key_columns(conn, key)
        if not pk:
            continue
        query = sql.SQL(
            "SELECT md5(coalesce(string_agg(r::text, E'\\n'), '')), count(*) FROM "
            "(SELECT t.* FROM {table} t ORDER BY {pk} LIMIT {limit}) r"
        ).format(table=_ident(key), pk=sql.SQL(", ").join(map(sql.Identifier, pk)), limit=sql.Literal(limit))
        digest, rows = conn.execute(query).fetchone()
        digests[key] = {"order_by": pk, "rows": rows, "md5": digest}
    return digests


def run_probe(conn: psycopg.Connection, query: str) -> object:
    """The single value a configured check query returns, as JSON-friendly data."""
    row = conn.execute(query).fetchone()
    value = row[0] if row else None
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def column_info(conn: psycopg.Connection, table: str, column: str) -> dict | None:
    """Type and nullability of ``column`` of ``table`` (``schema.table``, or in the default schema)."""
    schema, _, name = table.rpartition(".")
    row = conn.execute(
        "SELECT data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s AND column_name = %s",
        (schema or default_schema(conn), name, column),
    ).fetchone()
    return None if row is None else {"data_type": row[0], "nullable": row[1] == "YES"}


def foreign_key_exists(conn: psycopg.Connection, table: str, column: str, ref_table: str, ref_column: str) -> bool:
    row = conn.execute(
        """
        SELECT 1 FROM pg_constraint k
        JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
        JOIN pg_attribute b ON b.attrelid = k.confrelid AND b.attnum = k.confkey[1]
        WHERE k.contype = 'f' AND k.conrelid = %s::regclass AND k.confrelid = %s::regclass
          AND a.attname = %s AND b.attname = %s AND array_length(k.conkey, 1) = 1
        """,
        (_ident(table).as_string(conn), _ident(ref_table).as_string(conn), column, ref_column),
    ).fetchone()
    return row is not None


def orphan_count(conn: psycopg.Connection, table: str, column: str, ref_table: str, ref_column: str) -> int:
    query = sql.SQL(
        "SELECT count(*) FROM {t} c WHERE c.{col} IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM {rt} p WHERE p.{rcol} = c.{col})"
    ).format(t=_ident(table), col=sql.Identifier(column), rt=_ident(ref_table), rcol=sql.Identifier(ref_column))
    return conn.execute(query).fetchone()[0]


def sample_rows(conn: psycopg.Connection, table: str, order_by: str, limit: int) -> list[dict]:
    """The first ``limit`` rows of ``table`` by ``order_by`` (a column name, optionally + ASC/DESC)."""
    column, _, direction = order_by.partition(" ")
    direction = direction.strip().upper() or "ASC"
    if direction not in ("ASC", "DESC"):
        raise ValueError(f"order_by direction must be ASC or DESC, not {direction!r}")
    query = sql.SQL("SELECT * FROM {t} ORDER BY {c} " + direction + " LIMIT {n}").format(
        t=_ident(table), c=sql.Identifier(column), n=sql.Literal(limit)
    )
    return conn.cursor(row_factory=dict_row).execute(query).fetchall()


# --- connections ----------------------------------------------------------------------------

def sessions(conn: psycopg.Connection, database: str) -> list[dict]:
    """Every other session connected to ``database`` (never this one), each ``idle`` or ``active``.

    ``idle``: idle, or idle in a transaction that holds no lock but its own virtual transaction
    ID (ending it loses nothing and frees nothing anyone waits for). ``active``: a query
    running, or a transaction holding locks (it may be writing): worth waiting for.
    """
    rows = conn.cursor(row_factory=dict_row).execute(
        """
        SELECT a.pid, a.usename AS "user", a.application_name, a.client_addr::text AS client_addr, a.state,
               a.backend_start, a.query_start, left(a.query, 200) AS query,
               CASE WHEN a.state = 'idle' THEN 'idle'
                    WHEN a.state LIKE 'idle in transaction%%' AND NOT EXISTS (
                        SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype <> 'virtualxid') THEN 'idle'
                    ELSE 'active' END AS activity
        FROM pg_stat_activity a
        WHERE a.datname = %s AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
        ORDER BY a.pid
        """,
        (database,),
    ).fetchall()
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()} for row in rows]


def database_settings(conn: psycopg.Connection, database: str) -> dict:
    row = conn.execute("SELECT datallowconn, datconnlimit FROM pg_database WHERE datname = %s", (database,)).fetchone()
    if row is None:
        raise AbortedError(
            f"Database {database!r} does not exist on the server.",
            next_action="check the database name in the URL of this environment.",
            step="database",
        )
    return {"allow_connections": row[0], "connection_limit": row[1]}


def block_statements(database: str) -> list[sql.Composable]:
    """Stop new connections, superusers included (CONNECTION LIMIT alone does not stop them)."""
    db = sql.Identifier(database)
    return [
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(db),
        sql.SQL("ALTER DATABASE {} WITH CONNECTION LIMIT 0").format(db),
    ]


def connection_limit_statement(database: str, limit: int) -> sql.Composable:
    # The limit as a plain integer: sql.Literal renders -1 as " -1", so the statement shown would not read as run.
    return sql.SQL("ALTER DATABASE {} WITH CONNECTION LIMIT {}").format(sql.Identifier(database), sql.SQL(str(int(limit))))


def unblock_statements(database: str, settings: dict) -> list[sql.Composable]:
    return [
        connection_limit_statement(database, settings["connection_limit"]),
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
            sql.Identifier(database), sql.SQL("true" if settings["allow_connections"] else "false")
        ),
    ]


def comment_statement(database: str, comment: str | None) -> sql.Composable:
    return sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(database), sql.Literal(comment) if comment else sql.SQL("NULL"))


def open_database_sql(database: str) -> str:
    """The SQL that opens ``database`` to connections (the kept pre-rollback database stays closed by design)."""
    return "; ".join(s.as_string(None) for s in unblock_statements(
        database, {"allow_connections": True, "connection_limit": -1})) + ";"


def terminate_statement(database: str) -> sql.Composable:
    """Terminate every other client session on ``database`` (never the one running it)."""
    return sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {} "
                   "AND pid <> pg_backend_pid() AND backend_type = 'client backend'").format(sql.Literal(database))


def wait_for_no_sessions(conn: psycopg.Connection, database: str, timeout: float, poll: float, *,
                         active_only: bool = False) -> list[dict]:
    """Poll until no other session (``active_only``: no active one) is on ``database`` or ``timeout`` passes;
    returns what is left. The first polls come quickly (a terminated backend is gone in milliseconds), then
    every ``poll`` seconds."""
    deadline = time.monotonic() + timeout
    pause = min(0.005, poll)
    while True:
        left = [s for s in sessions(conn, database) if not active_only or s["activity"] == "active"]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
        pause = min(pause * 2, poll)


def rename_statement(old: str, new: str) -> sql.Composable:
    return sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))


def rename_database(conn: psycopg.Connection, old: str, new: str) -> None:
    conn.execute(rename_statement(old, new))
    if not database_exists(conn, new) or database_exists(conn, old):
        raise StepError(
            f"Renaming database {old!r} to {new!r} did not take effect.",
            next_action="inspect pg_database by hand before going on.",
            step="swap",
            escalate="L3",
        )


def drop_database_statement(name: str) -> sql.Composable:
    return sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
