"""One run per database: a PostgreSQL advisory lock keyed on the server's identity and the database.

The environment's lock file only stops two runs of the same environment name from the same
reports folder; two names (or two machines) pointing at one database are stopped here. The
lock is a session lock held by the runner for the whole run on a connection to the
maintenance database: it goes away with the runner, so a killed run never leaves it stale.
"""

from __future__ import annotations

import hashlib
import os
import socket
from contextlib import contextmanager
from typing import Iterator

import psycopg

from rollbacklib.errors import RefusedError
from rollbacklib.postgres.client import database_name, with_database

LOCK_APPLICATION = "rollbacklib lock"


def server_identity(conn: psycopg.Connection) -> str:
    """The cluster's system identifier, or (without the right to read it) its data directory or address."""
    for query in ("SELECT system_identifier::text FROM pg_control_system()", "SHOW data_directory",
                  "SELECT coalesce(inet_server_addr()::text, '') || ':' || current_setting('port')"):
        try:
            with conn.transaction():
                return conn.execute(query).fetchone()[0]
        except psycopg.Error:
            continue
    return "unknown"


def lock_key(identity: str, database: str) -> int:
    digest = hashlib.sha256(f"{identity}/{database}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFFFFFFFFFFFFFF


def holder(conn: psycopg.Connection, key: int) -> dict | None:
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.backend_start, a.client_addr::text FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
        "AND ((l.classid::bigint << 32) | l.objid::bigint) = %s", (key,)).fetchone()
    if row is None:
        return None
    return {"backend_pid": row[0], "application_name": row[1], "since": row[2].isoformat() if row[2] else None,
            "client_addr": row[3]}


@contextmanager
def database_lock(env, run_id: str) -> Iterator[None]:
    """Hold the database's advisory lock for the run; RefusedError (exit 4) naming the holder if taken."""
    url = env.database_url()
    database = database_name(url)
    name = f"{LOCK_APPLICATION} run={run_id} pid={os.getpid()} host={socket.gethostname()}"[:63]
    try:
        conn = psycopg.connect(with_database(url, env.maintenance_database), autocommit=True,
                               application_name=name, connect_timeout=10)
    except psycopg.OperationalError:
        yield  # the server is unreachable: no run can change it; phase 01 reports the connection error
        return
    try:
        key = lock_key(server_identity(conn), database)
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
            found = holder(conn, key) or {}
            raise RefusedError(
                f"Another rollback holds database {database} on this server "
                f"({found.get('application_name') or 'holder unknown'}, connected since {found.get('since')}, "
                f"server pid {found.get('backend_pid')}).",
                next_action="wait for that run to finish (its run ID, host and PID are named above), whatever "
                "environment name or reports folder it used; two rollbacks of one database must never overlap.",
                step="lock", found=found)
        yield
    finally:
        conn.close()


