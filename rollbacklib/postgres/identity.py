"""Is a backup a backup of the live database? Its database, its server, its Prisma history.

The file checks (``backup.verify_backup``) say whether a backup can be read and is what its
manifest says; these say whether it belongs to the database being rolled back. A backup of
another database passes every file check, and restoring it would swap that database in.

- the manifest's ``database`` must be the live database's name;
- its ``system_identifier`` (when it records one) must be the live server's;
- its ``_prisma_migrations`` rows must be a prefix of the live ones, compared on
  (id, migration_name, checksum) in order: the ids are random per database, so a backup of
  another database or project fails even where the migration names agree.

A backup without a manifest (the plan's plain ``pg_dump | gzip`` file) says none of this:
the checks are reported as skipped, and the history is checked on the restored copy
(``restored_history_check``) before anything touches the live database.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from rollbacklib.checks import Check, compare, describe_failures, failed, skipped
from rollbacklib.errors import BackupCheckFailed
from rollbacklib.postgres import database as db
from rollbacklib.prisma import applied_migrations

DATABASE_CHECK = "backup is of the live database"
SERVER_CHECK = "backup is from the live server"
HISTORY_CHECK = "backup's Prisma history is a prefix of the live one"
RESTORED_HISTORY_CHECK = "restored copy's Prisma history is a prefix of the live one"


def read_live_identity(conn: psycopg.Connection) -> dict:
    """What the identity checks compare a backup with, read from the live database. Reads only."""
    return {
        "database": conn.execute("SELECT current_database()").fetchone()[0],
        "system_identifier": db.system_identifier(conn),
        "prisma_migrations": applied_migrations(conn),
    }


def identity_checks(manifest: dict | None, backup_format: str, live: dict) -> list[Check]:
    """Database, server and Prisma history of the backup against ``live`` (``read_live_identity``)."""
    if manifest is None:
        why = f"no manifest beside this {backup_format} backup"
        return [
            skipped(DATABASE_CHECK, f"{why}: the database it was taken of is unknown"),
            skipped(SERVER_CHECK, f"{why}: the server it was taken on is unknown"),
            skipped(HISTORY_CHECK, f"{why}: its Prisma history is unknown until it is restored; phase 02 checks "
                                   "the restored copy's _prisma_migrations before anything touches the live database"),
        ]
    return [
        database_check(manifest.get("database"), live["database"]),
        server_check(manifest.get("system_identifier"), live.get("system_identifier")),
        history_check(manifest.get("prisma_migrations") or [], live["prisma_migrations"]),
    ]


def database_check(backup_database: str | None, live_database: str) -> Check:
    if backup_database is None:
        return Check(DATABASE_CHECK, False, live_database, None, "the manifest does not name its database")
    return compare(DATABASE_CHECK, live_database, backup_database,
                   f"the backup was taken of database {backup_database!r}; the live database is {live_database!r}")


def server_check(backup_identifier: object, live_identifier: object) -> Check:
    if backup_identifier is None:
        return skipped(SERVER_CHECK, "the manifest records no system identifier (taken before rollbacklib recorded "
                                     "it, or by a role refused pg_control_system())")
    if live_identifier is None:
        return skipped(SERVER_CHECK, "the live server's system identifier cannot be read: this role is refused "
                                     "pg_control_system()")
    return compare(SERVER_CHECK, str(live_identifier), str(backup_identifier),
                   "system identifiers of the live server and of the server the backup was taken on"
                   + ("" if str(live_identifier) == str(backup_identifier) else
                      ": the backup comes from another PostgreSQL cluster"))


def _key(row: dict) -> tuple:
    return row.get("id"), row.get("migration_name"), row.get("checksum")


def _describe(row: dict) -> str:
    return f"{row.get('migration_name')} (id {row.get('id')}, checksum {str(row.get('checksum'))[:12]}…)"


def history_check(backup_rows: list[dict], live_rows: list[dict], name: str = HISTORY_CHECK) -> Check:
    """The backup's ``_prisma_migrations`` rows must be the live ones' first rows, in order."""
    counts = f"backup has {len(backup_rows)} row(s), the live database {len(live_rows)}"
    if not backup_rows and live_rows:
        return Check(name, False, f"the first rows of the live history ({_describe(live_rows[0])} ...)", "no rows",
                     f"{counts}: a backup without Prisma history is not of this Prisma project")
    for i, (ours, theirs) in enumerate(zip(backup_rows, live_rows), start=1):
        if _key(ours) != _key(theirs):
            fields = [f for f, a, b in zip(("id", "migration_name", "checksum"), _key(ours), _key(theirs)) if a != b]
            return Check(name, False, _describe(theirs), _describe(ours),
                         f"row {i} differs in {', '.join(fields)}; {counts}: the backup is of another database or "
                         "project, or the migration files differ")
    if len(backup_rows) > len(live_rows):
        return Check(name, False, f"at most {len(live_rows)} row(s)", _describe(backup_rows[len(live_rows)]),
                     f"{counts}: the backup has migrations the live database never had")
    return Check(name, True, f"the first {len(backup_rows)} live row(s)", f"{len(backup_rows)} equal row(s)",
                 f"{counts}; compared on id, migration_name and checksum, in order")


def restored_history_check(restored: psycopg.Connection, live_rows: list[dict]) -> Check:
    """``history_check`` on a restored copy: for a backup without a manifest, the history is known only now."""
    return history_check(applied_migrations(restored), live_rows, RESTORED_HISTORY_CHECK)


ABORT = "ABORT ROLLBACK: nothing was changed. "


def refuse_unless_identical(checks: list[Check], *, backup: Path, live_database: str,
                            backup_database: str | None = None, environment: str = "the environment",
                            abort: str = ABORT) -> None:
    """Raise ``BackupCheckFailed`` (exit 3), naming both databases, when an identity check failed.

    ``abort`` opens the next action; a caller that wraps the error in its own abort passes "".
    """
    if not failed(checks):
        return
    theirs = f"of database {backup_database!r}" if backup_database else "no manifest names its database"
    raise BackupCheckFailed(
        f"Backup {backup} ({theirs}) is not a backup of the live database {live_database!r}:\n"
        f"{describe_failures(checks)}",
        next_action=f"{abort}Pass a backup of {live_database!r} with --backup PATH; or, if {live_database!r} is not "
        f"the database you mean to roll back, check {environment} and the database URL it names.",
        expected=live_database, found=backup_database,
        step="verify-backup",
        escalate="L3",
    )
