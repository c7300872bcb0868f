"""Backups: take one with its manifest, verify one before trusting it (``restore`` restores one).

A backup is a pg_dump archive in custom format (``*.dump``) with ``<file>.manifest.json``
beside it, or the seed plan's own format, a plain ``pg_dump | gzip`` file (``*.sql.gz``),
with or without a manifest.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import zlib

import psycopg
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rollbacklib import __version__
from rollbacklib.postgres import database as db
from rollbacklib.files import atomic_write_json
from rollbacklib.checks import Check, compare, describe_failures, failed, skipped
from rollbacklib.errors import BackupCheckFailed, StepError
from rollbacklib.postgres.client import ClientTools
from rollbacklib.prisma import applied_migrations, migration_state

DUMP_COMPLETE = b"-- PostgreSQL database dump complete"
BACKUP_SUFFIXES = (".dump", ".sql.gz", ".sql")
ARCHIVE_FORMATS = ("custom", "directory")  # what pg_restore reads (and restores in parallel)
MANIFEST_KEYS = ("taken_at", "size_bytes", "sha256", "schema_fingerprint", "row_counts", "prisma_migrations",
                 "table_digests", "probes")


def manifest_path(backup: Path) -> Path:
    return backup.with_name(backup.name + ".manifest.json")


def backup_format(path: Path) -> str:
    name = path.name
    if is_directory_archive(path):
        return "directory"
    if name.endswith(".dump"):
        return "custom"
    if name.endswith(".sql.gz"):
        return "plain-gzip"
    if name.endswith(".sql"):
        return "plain"
    raise BackupCheckFailed(
        f"{path} is not a backup format the runbook knows.",
        next_action="use a pg_dump custom archive (*.dump), a directory archive (pg_dump -Fd: a folder holding "
        "toc.dat) or a plain dump (*.sql or *.sql.gz).",
        step="verify-backup",
    )


def is_directory_archive(path: Path) -> bool:
    """pg_dump's directory format (``-Fd``): a folder holding ``toc.dat`` and one file per table."""
    return path.is_dir() and (path / "toc.dat").is_file()


def is_present(path: Path) -> bool:
    return path.is_file() or is_directory_archive(path)


def backup_size(path: Path) -> int:
    """Bytes of the backup: its file, or every file of a directory archive."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return path.stat().st_size


def sha256_of(path: Path) -> str:
    """Of a file's bytes; of a directory archive, its files' names and bytes in name order."""
    digest = hashlib.sha256()
    for file in sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]:
        if path.is_dir():
            digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# --- taking a backup ----------------------------------------------------------------------

def describe_database(conn, probes: list) -> dict:
    """What a manifest records of a database (and what a restored copy is compared with)."""
    catalog = db.schema_catalog(conn)
    results = []
    for probe in probes:
        try:
            with conn.transaction():  # a savepoint inside the backup's snapshot transaction
                results.append({"name": probe.name, "sql": probe.sql, "value": db.run_probe(conn, probe.sql)})
        except psycopg.Error as err:  # a probe for a column that does not exist yet is not an error here
            results.append({"name": probe.name, "sql": probe.sql, "error": str(err).split("\n")[0]})
    return {
        "row_counts": db.row_counts(conn),
        "schema_fingerprint": db.schema_fingerprint(catalog),
        "schema": catalog,
        "prisma_migrations": applied_migrations(conn),
        "probes": results,
        "table_digests": db.table_digests(conn),
    }


def take_backup(url: str, backup_dir: Path, tools: ClientTools, probes: list = (), label: str | None = None) -> Path:
    """pg_dump ``url`` in custom format into ``backup_dir``, with a manifest from the same snapshot."""
    backup_dir.mkdir(parents=True, exist_ok=True)
    with db.connect(url, step="backup") as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        info = db.server_info(conn)
        tools.check_server(info["server_version_num"])
        system_identifier = db.system_identifier(conn)  # None when refused: never fails the backup
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        started = now_utc()
        dbname = info["database"]
        stamp = started.strftime("%Y%m%dT%H%M%S%fZ")
        path = backup_dir / f"{label or dbname}_{stamp}.dump"
        partial = path.with_name(path.name + ".partial")
        # The manifest describes exactly the snapshot pg_dump reads, even while writes go on.
        description = describe_database(conn, probes)
        staged = manifest_path(partial)
        try:
            tools.run("pg_dump", ["--format=custom", f"--snapshot={snapshot}", f"--file={partial}",
                                  f"--dbname={dbname}"], url=url, step="backup")
            conn.execute("COMMIT")
            manifest = {
                "format": "custom",
                "file": path.name,
                "database": dbname,
                "system_identifier": system_identifier,
                "taken_at": started.isoformat(),
                "finished_at": now_utc().isoformat(),
                "server_version": info["server_version"],
                "server_version_num": info["server_version_num"],
                "wal_lsn": info["wal_lsn"],
                "pg_dump": tools.version("pg_dump")[1],
                "rollbacklib": __version__,
                "size_bytes": partial.stat().st_size,
                "sha256": sha256_of(partial),
                **description,
            }
            # The manifest lands first: a backup file is never seen without the manifest it was made with.
            atomic_write_json(staged, manifest)
            os.replace(staged, manifest_path(path))
            os.replace(partial, path)
        except BaseException as err:  # no half backup is ever left behind, whatever stopped it
            for leftover in (partial, staged, manifest_path(path)):
                leftover.unlink(missing_ok=True)
            if _disk_full(err):
                raise StepError(
                    f"No space left on the device of {backup_dir} ({shutil.disk_usage(backup_dir).free} bytes "
                    "free) while writing the backup; its partial files were removed.",
                    next_action="free space there or point backup_dir at a bigger volume, then take the backup "
                    "again.", step="backup", escalate="L1") from None
            raise
    return path


def _disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    return isinstance(err, StepError) and "No space left on device" in err.message


def load_manifest(path: Path) -> dict | None:
    mpath = manifest_path(path)
    if not mpath.exists():
        return None
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as err:
        raise BackupCheckFailed(
            f"The manifest {mpath} is not valid JSON ({err}).",
            next_action="restore the manifest from the backup's other copy, or take a new backup.",
            step="verify-backup",
        ) from None
    missing = [key for key in MANIFEST_KEYS if key not in manifest] if isinstance(manifest, dict) else list(MANIFEST_KEYS)
    if missing:
        raise BackupCheckFailed(
            f"The manifest {mpath} lacks {', '.join(missing)}.",
            next_action="restore the manifest from the backup's other copy, or move it aside to treat the "
            "backup as one without a manifest (fewer checks), or take a new backup.",
            step="verify-backup",
        )
    return manifest


def list_backups(backup_dir: Path) -> list[Path]:
    if not backup_dir.is_dir():
        return []
    return sorted(p for p in backup_dir.iterdir()
                  if (p.is_file() and p.name.endswith(BACKUP_SUFFIXES)) or is_directory_archive(p))


def backup_time(path: Path, manifest: dict | None) -> tuple[datetime, str]:
    if manifest and manifest.get("taken_at"):
        return parse_time(manifest["taken_at"]), "manifest taken_at"
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc), "file modification time (no manifest)"


def find_backup(backup_dir: Path, before: datetime | None) -> Path | None:
    """The newest backup in ``backup_dir`` taken before ``before`` (any, when None)."""
    candidates = []
    for path in list_backups(backup_dir):
        try:
            taken, _ = backup_time(path, load_manifest(path))
        except BackupCheckFailed:
            continue
        if before is None or taken <= before:
            candidates.append((taken, path))
    return max(candidates)[1] if candidates else None


# --- verifying a backup -------------------------------------------------------------------

@dataclass
class BackupVerification:
    path: Path
    format: str
    manifest: dict | None
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return not failed(self.checks)

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise BackupCheckFailed(
                f"Backup {self.path} failed verification:\n{describe_failures(self.checks)}",
                next_action="ABORT: nothing was changed. Take or locate a good backup (rollback backup --env ENV, "
                "or the backup's other copy) and pass it with --backup PATH.",
                step="verify-backup",
                escalate="L3",
            )


def readable_commands(path: Path, tools: ClientTools) -> list[list[str]]:
    """What reads a custom archive whole: its table of contents, then every data block into /dev/null."""
    return [[tools.path("pg_restore"), "--list", str(path)], [tools.path("pg_restore"), "--file=/dev/null", str(path)]]


def check_readable(path: Path, fmt: str, tools: ClientTools) -> Check:
    if fmt in ARCHIVE_FORMATS:
        list_toc, read_all = readable_commands(path, tools)
        proc = subprocess.run(list_toc, capture_output=True, text=True)
        if proc.returncode != 0:
            return Check("archive readable", False, "pg_restore --list succeeds", proc.stderr.strip()[-300:])
        entries = sum(1 for line in proc.stdout.splitlines() if line and not line.startswith(";"))
        # --list reads only the table of contents at the head of the file; reading every data
        # block (into /dev/null) is what finds a truncated or damaged archive.
        full = subprocess.run(read_all, capture_output=True, text=True)
        if full.returncode != 0:
            return Check("archive readable", False, "every data block reads", full.stderr.strip()[-300:],
                         f"{entries} TOC entries")
        return Check("archive readable", True, "every data block reads", f"{entries} TOC entries, all data read")
    try:
        tail = _read_plain_tail(path, fmt)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        return Check("archive readable", False, "gzip stream intact", f"{type(err).__name__}: {err}")
    complete = DUMP_COMPLETE in tail
    return Check("archive readable", complete, "ends with '-- PostgreSQL database dump complete'",
                 "dump complete" if complete else "the dump ends early (truncated or still being written)")


def _read_plain_tail(path: Path, fmt: str, keep: int = 4096) -> bytes:
    """Read the whole stream (so gzip checks every CRC) and return its last bytes."""
    opener = gzip.open if fmt == "plain-gzip" else open
    tail = b""
    with opener(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            tail = (tail + chunk)[-keep:]
    return tail


def verify_backup(path: Path | None, tools: ClientTools, *, min_bytes: int, max_age_seconds: float,
                  migration_id: str | None, migration_started_at: datetime | None) -> BackupVerification:
    """Every check the plan asks of a backup before it is trusted. Reads only; changes nothing."""
    if path is None or not is_present(Path(path)):
        return BackupVerification(Path(path or "-"), "unknown", None,
                                  [Check("present", False, "a backup file", "nothing at " + str(path or "(none found)"))])
    path = Path(path)
    fmt = backup_format(path)
    checks = [Check("present", True, "a backup file", str(path))]
    manifest = load_manifest(path)
    checks.append(check_readable(path, fmt, tools))

    size = backup_size(path)
    checks.append(Check("size over minimum", size >= min_bytes, f">= {min_bytes} bytes", f"{size} bytes"))

    if manifest:
        checks.append(compare("sha256 equals manifest", manifest.get("sha256"), sha256_of(path)))
        checks.append(compare("size equals manifest", manifest.get("size_bytes"), size))
    else:
        checks.append(skipped("sha256 equals manifest", "no manifest beside the backup (the plan's plain format)"))

    taken, source = backup_time(path, manifest)
    reference, ref_name = (migration_started_at, "the migration's start") if migration_started_at else (now_utc(), "now")
    age = (reference - taken).total_seconds()
    checks.append(Check("age under limit", 0 <= age <= max_age_seconds, f"0 .. {max_age_seconds:.0f} s before {ref_name}",
                        f"{age:.0f} s", f"backup time from {source}"))

    if manifest is not None and migration_id:
        state = migration_state(manifest.get("prisma_migrations", []), migration_id)
        checks.append(Check("backup predates the migration", state in ("absent", "rolled-back"),
                            f"{migration_id} not applied in the backup", state,
                            "restoring a backup that already has the migration would roll nothing back"))
    return BackupVerification(path, fmt, manifest, checks)
