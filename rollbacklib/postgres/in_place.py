"""Restoring a backup INTO the live database, all or nothing (strategy ``in-place``).

For platforms that cannot create or rename databases. The restore runs in ONE transaction,
so a failure anywhere, the last statement included, leaves the database exactly as it was:

- a custom or directory archive: ``pg_restore --clean --if-exists --single-transaction
  --exit-on-error`` (the archive's objects are dropped and made again inside that transaction);
- a plain script (``.sql``, ``.sql.gz``): ``psql -X -v ON_ERROR_STOP=1 --single-transaction``,
  fed on stdin by the runbook. A gzip is decompressed by ``gzip -dc`` in a process of its own
  whose exit status is checked as well as psql's: psql commits when its input ends, so its
  stdin is closed only once the decompressor has exited 0; when it has not (a truncated or
  corrupt file), psql is killed with its input still open, and the server rolls the
  transaction back. A plain script must have been dumped with ``--clean`` (its ``DROP``
  statements come before any ``CREATE``): without them it cannot replace what is there.

The live database is blocked (``ALLOW_CONNECTIONS false``) while this runs: it is opened only
for the instant the restore's own connection takes (found in ``pg_stat_activity`` by the
application name the runbook gives it), closed again, and every other session that slipped in
meanwhile is terminated, by pid, before the restore's first statement can commit anything.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psycopg
from psycopg import sql

from rollbacklib.errors import ConfigError, StepError
from rollbacklib.postgres import database as db
from rollbacklib.postgres.backup import ARCHIVE_FORMATS, backup_format
from rollbacklib.postgres.client import ClientTools, display_command, libpq_env, with_database

CONNECT_WAIT_SECONDS = 15
SCAN_BYTES = 64 << 20  # how far into a plain script its first CREATE is looked for


# --- what runs ------------------------------------------------------------------------------

def restore_command(path: Path, dbname: str, tools: ClientTools, keep_owners: bool = True) -> list[str]:
    """The one-transaction restore of ``path`` into the existing, populated database ``dbname``."""
    if backup_format(path) in ARCHIVE_FORMATS:
        ownership = [] if keep_owners else ["--no-owner", "--no-privileges"]
        return [tools.path("pg_restore"), "--clean", "--if-exists", "--single-transaction", "--exit-on-error",
                *ownership, f"--dbname={dbname}", str(path)]
    return [tools.path("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", f"--dbname={dbname}",
            "-f", "-"]


def decompress_command(path: Path) -> list[str] | None:
    """What feeds psql a gzipped script (its exit status is checked before psql may commit); None otherwise."""
    if backup_format(path) != "plain-gzip":
        return None
    gz = shutil.which("gzip")
    if gz is None:
        raise ConfigError("gzip is not on the PATH: the in-place restore of a .sql.gz needs it.",
                          next_action="install gzip (it is in every base system), or restore from a .dump.",
                          step="restore-in-place")
    return [gz, "-dc", str(path)]


def describe(path: Path, dbname: str, tools: ClientTools, keep_owners: bool = True) -> str:
    cmd = display_command(restore_command(path, dbname, tools, keep_owners))
    feed = decompress_command(path)
    if feed:
        return f"{display_command(feed)} | {cmd}  (psql's input is closed only after gzip exits 0)"
    return cmd if backup_format(path) in ARCHIVE_FORMATS else f"{cmd} < {path}"


def evict_statement(database: str, keep_pid: int | None) -> sql.Composable:
    """Terminate every client session on ``database`` but the restore's own (by pid; no name can claim it)."""
    return sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {} AND pid <> {} "
                   "AND pid <> pg_backend_pid() AND backend_type = 'client backend'").format(
        sql.Literal(database), sql.SQL("<the restore's pid>") if keep_pid is None else sql.Literal(int(keep_pid)))


def safety_copy_statement(live: str, safety: str) -> sql.Composable:
    """A server-side copy of the live database (it must have no session: true once it is blocked and emptied)."""
    return sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(safety), sql.Identifier(live))


def plain_script_cleans(path: Path, limit: int = SCAN_BYTES) -> bool:
    """Was this plain script dumped with ``--clean`` (a ``DROP`` before its first ``CREATE``/``COPY``)?"""
    opener = gzip.open if backup_format(path) == "plain-gzip" else open
    seen = 0
    try:
        with opener(path, "rb") as fh:
            for raw in fh:
                seen += len(raw)
                line = raw.lstrip()
                if line.startswith(b"DROP ") or (line.startswith(b"ALTER ") and b" DROP " in line):
                    return True
                if line.startswith((b"CREATE ", b"COPY ")) or seen > limit:
                    return False
    except (OSError, EOFError):
        return False
    return False


# --- room for a safety copy -------------------------------------------------------------------

@dataclass(frozen=True)
class Room:
    needed: int  # bytes: the database's size times the factor, and its WAL
    free: int | None  # bytes free where the server keeps its data; None when not on this machine
    folder: str | None

    @property
    def fits(self) -> bool | None:
        return None if self.free is None else self.free >= self.needed

    def describe(self) -> str:
        if self.free is None:
            return (f"the server's data directory is not on this machine: its free space cannot be read; the copy "
                    f"needs about {self.needed:,} bytes")
        return f"{self.free:,} bytes free in {self.folder}, the copy needs about {self.needed:,}"


def room_for_copy(admin: psycopg.Connection, database: str, factor: float) -> Room:
    """Free disk for a server-side copy of ``database``: its size × ``factor`` plus the WAL the copy writes."""
    size, segment, max_wal = admin.execute(
        "SELECT pg_database_size(%s), pg_size_bytes(current_setting('wal_segment_size')), "
        "pg_size_bytes(current_setting('max_wal_size'))", (database,)).fetchone()
    needed = int(size * factor) + min(size, max_wal) + 4 * segment
    folder = db.data_directory(admin)
    if folder is None or not Path(folder).is_dir():
        return Room(needed, None, folder)
    return Room(needed, shutil.disk_usage(folder).free, folder)


# --- running it -------------------------------------------------------------------------------

@dataclass
class Outcome:
    seconds: float
    restore_pid: int | None
    evicted: int


def run(cmd: list[str], path: Path, url: str, admin: psycopg.Connection, database: str, *, app_name: str,
        open_sql: str, close_sql: str, step: str = "restore-in-place",
        on_sql: Callable[[str], None] | None = None) -> Outcome:
    """Run the one-transaction restore ``cmd`` into the blocked ``database``; raise StepError when it did not commit.

    ``open_sql`` / ``close_sql`` (rendered in the plan) open the database for the instant the
    restore connects; ``on_sql`` hears of every statement run on ``admin``.
    """
    said = on_sql or (lambda _text: None)
    env = {**libpq_env(with_database(url, database)), "PGAPPNAME": app_name}
    feed_cmd = decompress_command(path)
    plain = backup_format(path) not in ARCHIVE_FORMATS
    started = time.monotonic()
    with tempfile.TemporaryFile() as errors, tempfile.TemporaryFile() as feed_errors:
        admin.execute(open_sql.encode())
        said(open_sql)
        proc = feeder = None
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if plain else subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=errors, env=env)
            pid = _connected(admin, database, app_name, proc)
        finally:
            admin.execute(close_sql.encode())
            said(close_sql)
        evicted = 0
        if pid is not None:  # None: the program ended before connecting; its status says why
            evict = evict_statement(database, pid).as_string(admin)
            evicted = sum(1 for row in admin.execute(evict.encode()).fetchall() if row[0])
            said(evict)
        try:
            if plain:
                feeder = subprocess.Popen(feed_cmd, stdout=subprocess.PIPE, stderr=feed_errors) if feed_cmd else None
                _pump(proc, feeder, path, step, feed_errors, cmd, feed_cmd)
            code = proc.wait()
        except BaseException:
            for p in (feeder, proc):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
            _backend_gone(admin, pid)
            raise
        errors.seek(0)
        stderr = errors.read().decode(errors="replace").strip()[-2000:]
    _backend_gone(admin, pid)
    if code != 0:
        raise StepError(f"{Path(cmd[0]).name} exited with {code}: {stderr}", step=step,
                        next_action="read the error above; nothing was committed (one transaction).")
    return Outcome(round(time.monotonic() - started, 3), pid, evicted)


def _connected(admin: psycopg.Connection, database: str, app_name: str, proc: subprocess.Popen) -> int | None:
    """The backend pid of the restore's connection, once it is there (None if the program ended first)."""
    deadline, pause = time.monotonic() + CONNECT_WAIT_SECONDS, 0.002
    while time.monotonic() < deadline:
        row = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s "
                            "AND backend_type = 'client backend' ORDER BY backend_start LIMIT 1",
                            (database, app_name)).fetchone()
        if row:
            return row[0]
        if proc.poll() is not None:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
    proc.kill()
    proc.wait()
    raise StepError(f"The restore did not connect to {database} within {CONNECT_WAIT_SECONDS} s.", step="restore",
                    next_action="check the server and the runbook's role (it must be allowed to connect); the "
                    "database is closed again and was not changed.")


def _pump(proc: subprocess.Popen, feeder: subprocess.Popen | None, path: Path, step: str, feed_errors,
          cmd: list[str], feed_cmd: list[str] | None) -> None:
    """Copy the script into psql's stdin; close it (psql then commits) only once the whole script was read cleanly."""
    source = feeder.stdout if feeder else open(path, "rb")
    try:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            proc.stdin.write(chunk)
    except BrokenPipeError:  # psql stopped reading: it exited on an error (ON_ERROR_STOP), said by its status
        if feeder:
            feeder.kill()
            feeder.wait()
        return
    finally:
        source.close()
    if feeder is not None and feeder.wait() != 0:
        proc.kill()  # its input never ends: the server rolls the transaction back
        proc.wait()
        feed_errors.seek(0)
        why = feed_errors.read().decode(errors="replace").strip()[-1000:]
        raise StepError(f"{display_command(feed_cmd)} exited with {feeder.returncode} ({why}): the backup is cut "
                        "short or corrupt. psql was stopped before its input ended, so nothing was committed.",
                        step=step, next_action="verify the backup (rollback verify-backup) and use a good one.")
    try:
        proc.stdin.close()
    except BrokenPipeError:
        pass


def _backend_gone(admin: psycopg.Connection, pid: int | None, timeout: float = 30) -> None:
    """Wait for the restore's backend to end: its transaction is committed or rolled back by then."""
    if pid is None:
        return
    deadline, pause = time.monotonic() + timeout, 0.002
    while time.monotonic() < deadline:
        if admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is None:
            return
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
