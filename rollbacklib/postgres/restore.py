"""Restoring a backup into an empty database: the command, and running it with progress.

A custom or directory archive is restored by ``pg_restore -j N --exit-on-error --verbose``: no
``--single-transaction`` (pg_restore refuses it with ``-j``, and the runbook drops the copy
on any failure anyway). Progress is "tables done / total": the total is the number of
``TABLE DATA`` entries of ``pg_restore --list``, the count read from the ``--verbose`` lines
pg_restore writes to its stderr, which goes to a file (a pipe nobody reads could fill and
stop pg_restore; a file also outlives a reader that dies, so an orphaned restore runs on).
A plain dump (``*.sql``, ``*.sql.gz``) goes through ``psql --single-transaction`` on stdin;
its progress is the bytes of the file read so far.
"""

from __future__ import annotations

import gzip
import os
import re
import socket
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from psycopg.conninfo import conninfo_to_dict

from rollbacklib.errors import StepError
from rollbacklib.postgres.backup import ARCHIVE_FORMATS, backup_format
from rollbacklib.postgres.client import ClientTools, display_command, libpq_env, with_database

# A server elsewhere does not say how many cores it has (nothing in SQL does): 4 keeps a
# restore parallel on any server big enough to host production, without flooding a small one
# that also serves the live database meanwhile. ``restore_jobs`` sets the real figure.
REMOTE_DEFAULT_JOBS = 4
_TABLE_DATA = re.compile(r"^\d+; \d+ \d+ TABLE DATA ")
_FINISHED_DATA = re.compile(r"^pg_restore: finished item \d+ TABLE DATA ")
_PROCESSING_DATA = "pg_restore: processing data for table "
_PARALLEL = "pg_restore: entering main parallel loop"


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    unit: str  # "tables" (pg_restore) or "bytes" (of a plain dump's file)

    def to_dict(self) -> dict:
        return {"done": self.done, "total": self.total, "unit": self.unit}


OnProgress = Callable[[Progress], None]


# --- the command -----------------------------------------------------------------------------

def is_local(url: str) -> bool:
    """Is the server of ``url`` on this machine (a Unix socket, or a loopback or own host name)?"""
    params = conninfo_to_dict(url)
    host = params.get("hostaddr") or params.get("host") or ""
    if not host or host.startswith(("/", "@")):
        return True
    if "," in host:
        return False
    return host in ("localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn())


def restore_jobs(url: str, configured: int | None) -> tuple[int, str]:
    """pg_restore's ``-j``, and why: ``restore_jobs``, else the server's cores when it is on this machine, else 4."""
    if configured:
        return int(configured), "restore_jobs in the config"
    if is_local(url):
        cores = os.cpu_count() or 1
        return cores, f"the server is on this machine: its {cores} core(s)"
    return REMOTE_DEFAULT_JOBS, (f"the server is on another machine, whose cores SQL does not tell: "
                                 f"{REMOTE_DEFAULT_JOBS} (set restore_jobs to its cores)")


def restore_command(path: Path, dbname: str, tools: ClientTools, keep_owners: bool = True, jobs: int = 1) -> list[str]:
    """The command that restores ``path`` into the existing, empty database ``dbname``.

    ``keep_owners`` restores ownership and grants as dumped (needs a role allowed to set them);
    off, the restoring role owns everything and grants are skipped (archives only, not plain dumps).
    """
    if backup_format(path) in ARCHIVE_FORMATS:
        ownership = [] if keep_owners else ["--no-owner", "--no-privileges"]
        return [tools.path("pg_restore"), "--exit-on-error", f"--jobs={max(int(jobs), 1)}", "--verbose", *ownership,
                f"--dbname={dbname}", str(path)]
    return [tools.path("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", f"--dbname={dbname}",
            "-f", "-"]


def describe_restore(path: Path, dbname: str, tools: ClientTools, keep_owners: bool = True, jobs: int = 1) -> str:
    cmd = display_command(restore_command(path, dbname, tools, keep_owners, jobs))
    fmt = backup_format(path)
    if fmt == "plain-gzip":
        return f"gunzip -c {path} | {cmd}"
    if fmt == "plain":
        return f"{cmd} < {path}"
    return cmd


def analyze_command(dbname: str, tools: ClientTools, jobs: int = 1) -> list[str]:
    """ANALYZE every table of ``dbname``, ``jobs`` tables at a time (``vacuumdb``, PostgreSQL's own client)."""
    return [tools.path("vacuumdb"), "--analyze-only", f"--jobs={jobs}", f"--dbname={dbname}"]


def list_command(path: Path, tools: ClientTools) -> list[str] | None:
    """What counts the tables a restore of ``path`` fills (its table of contents); None for a plain dump."""
    return [tools.path("pg_restore"), "--list", str(path)] if backup_format(path) in ARCHIVE_FORMATS else None


def tables_to_restore(list_argv: list[str], step: str = "restore") -> int:
    """The number of ``TABLE DATA`` entries ``pg_restore --list`` names."""
    proc = subprocess.run(list_argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StepError(f"pg_restore --list exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}",
                        next_action="verify the backup file (rollback verify-backup).", step=step)
    return sum(1 for line in proc.stdout.splitlines() if _TABLE_DATA.match(line))


# --- running it ------------------------------------------------------------------------------

def restore_into(path: Path, url: str, dbname: str, tools: ClientTools, step: str = "restore",
                 keep_owners: bool = True, jobs: int | None = None) -> float:
    """Restore ``path`` into the empty database ``dbname``; returns the seconds it took."""
    jobs = jobs or restore_jobs(url, None)[0]
    return run_restore(restore_command(path, dbname, tools, keep_owners, jobs), path, with_database(url, dbname),
                       step=step)


def run_restore(cmd: list[str], path: Path, target_url: str, step: str = "restore", *,
                on_progress: OnProgress | None = None, total_tables: int | None = None,
                interval: float = 0.25) -> float:
    """Run the restore command ``cmd`` exactly as given (``restore_command``), feeding plain dumps on stdin.

    ``on_progress`` is called, in this thread, as tables (or bytes of a plain dump) are done, and
    once more at the end with done = total.
    """
    started = time.monotonic()
    if backup_format(path) in ARCHIVE_FORMATS:
        _run_pg_restore(cmd, target_url, step, on_progress, total_tables, interval)
    else:
        _pipe_into(cmd, path, target_url, step, on_progress, interval)
    return time.monotonic() - started


class VerboseCounter:
    """Tables whose data pg_restore has finished, from its ``--verbose`` lines.

    With ``-j`` above 1 each table ends with ``finished item N TABLE DATA``; restoring serially,
    pg_restore names only the table it starts, which is done once any later line appears.
    """

    def __init__(self):
        self.done, self.parallel, self._pending = 0, False, False

    def feed(self, line: str) -> None:
        if line.startswith(_PARALLEL):
            self.parallel = True
        if self.parallel:
            self.done += bool(_FINISHED_DATA.match(line))
            return
        if self._pending:
            self.done, self._pending = self.done + 1, False
        self._pending = line.startswith(_PROCESSING_DATA)


def _run_pg_restore(cmd: list[str], url: str, step: str, on_progress: OnProgress | None, total: int | None,
                    interval: float) -> None:
    counter, total = VerboseCounter(), total or 0
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                env=libpq_env(url))
        try:
            size = _watch(proc, errors.fileno(), counter, on_progress, total, interval)
        except BaseException:  # a reader that stops (an interrupted cell) stops the restore it was watching
            proc.kill()
            proc.wait()
            raise
        stderr = os.pread(errors.fileno(), size, 0).decode(errors="replace")
    if proc.returncode != 0:
        said = "\n".join(line for line in stderr.splitlines() if not _verbose_line(line))
        raise StepError(f"pg_restore exited with {proc.returncode}: {said.strip()[-2000:]}",
                        next_action="read the error above; the command was: " + display_command(cmd), step=step)
    if on_progress:
        on_progress(Progress(max(total, counter.done), max(total, counter.done), "tables"))


def _watch(proc: subprocess.Popen, fd: int, counter: VerboseCounter, on_progress: OnProgress | None, total: int,
           interval: float) -> int:
    """Count the tables done from pg_restore's stderr (the file ``fd``) until it ends; the bytes it wrote."""
    offset, partial, reported = 0, b"", -1
    while True:
        finished = proc.poll() is not None
        chunk = os.pread(fd, 1 << 20, offset)
        while chunk:  # everything written so far, before judging the progress
            offset += len(chunk)
            *lines, partial = (partial + chunk).split(b"\n")
            for line in lines:
                counter.feed(line.decode(errors="replace"))
            chunk = os.pread(fd, 1 << 20, offset)
        if finished:
            return offset
        if on_progress and counter.done != reported:
            reported = counter.done
            on_progress(Progress(min(counter.done, total), max(total, counter.done), "tables"))
        try:
            proc.wait(interval)  # returns the instant pg_restore ends
        except subprocess.TimeoutExpired:
            pass


def _verbose_line(line: str) -> bool:
    """pg_restore's own ``--verbose`` narration (not a warning or an error)."""
    return line.startswith("pg_restore: ") and not line.startswith(("pg_restore: error", "pg_restore: warning",
                                                                    "pg_restore: detail", "pg_restore: hint"))


def _pipe_into(cmd: list[str], path: Path, url: str, step: str, on_progress: OnProgress | None,
               interval: float) -> None:
    # stderr goes to a file: a pipe nobody reads while we write stdin could fill and deadlock.
    size = path.stat().st_size
    with open(path, "rb") as raw, tempfile.TemporaryFile() as errors:
        source = gzip.open(raw, "rb") if backup_format(path) == "plain-gzip" else raw
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
                                env=libpq_env(url))
        cut_short = _feed(proc, source, step, lambda: on_progress and on_progress(Progress(raw.tell(), size, "bytes")),
                          interval)
        returncode = proc.wait()
        errors.seek(0)
        stderr = errors.read().decode(errors="replace").strip()[-2000:]
    if returncode != 0 or cut_short:
        detail = " before reading the whole backup" if cut_short else ""
        raise StepError(f"psql exited with {returncode}{detail}: {stderr}",
                        next_action="read the error above; nothing was committed (single transaction).", step=step)
    if on_progress:
        on_progress(Progress(size, size, "bytes"))


def _feed(proc: subprocess.Popen, source, step: str, tick: Callable[[], None], interval: float) -> bool:
    """Copy the backup into psql's stdin; True when psql stopped reading before the end."""
    last = time.monotonic()
    try:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            proc.stdin.write(chunk)
            if time.monotonic() - last >= interval:
                tick()
                last = time.monotonic()
        proc.stdin.close()
    except BrokenPipeError:
        return True  # psql stopped reading: it exited on an error (ON_ERROR_STOP), reported by the caller
    except (OSError, EOFError, zlib.error) as err:
        proc.kill()
        proc.wait()
        raise StepError(f"Reading the backup failed mid-restore: {err}", next_action="verify the backup file.",
                        step=step) from None
    return False
