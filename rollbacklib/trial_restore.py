"""The plan's Test 2: restore a backup into a throwaway database, validate it, drop it.

For scheduled use as much as for incidents: a backup nobody restored is a hope, not a backup.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from rollbacklib.postgres import backup as bk
from rollbacklib.postgres import database as db
from rollbacklib.checks import describe_failures, failed
from rollbacklib.errors import AbortedError, RollbackError
from rollbacklib.config import ResolvedEnvironment
from rollbacklib.postgres.client import ClientTools, database_name, with_database
from rollbacklib.postgres.restore import restore_into, restore_jobs
from rollbacklib.prisma import validate_migration_id
from rollbacklib.validation import against_manifest


def verify(path: Path | None, env: ResolvedEnvironment, tools: ClientTools, migration_id: str = "") -> bk.BackupVerification:
    """The backup checks, reading only the file (and its manifest)."""
    if migration_id:
        validate_migration_id(migration_id)
    t = env.thresholds
    # Outside an incident there is no migration to measure against: the age is then only reported.
    max_age = t.max_backup_age_seconds if migration_id else float("inf")
    return bk.verify_backup(path, tools, min_bytes=t.min_backup_bytes, max_age_seconds=max_age,
                            migration_id=migration_id or None, migration_started_at=None)


def _restore(verification: bk.BackupVerification, url: str, name: str, tools: ClientTools, env) -> float:
    try:
        return restore_into(verification.path, url, name, tools, step="restore-test",
                            keep_owners=env.restore_keep_owners,
                            jobs=restore_jobs(url, env.thresholds.restore_jobs)[0])
    except RollbackError as err:
        raise AbortedError(f"The backup does not restore: {err.message}",
                           next_action=f"this backup can not be trusted; take a new one (rollback backup). The "
                           f"throwaway database {name} is dropped; nothing else was touched.",
                           step="restore-test", escalate="L3") from None


def restore_test(verification: bk.BackupVerification, env: ResolvedEnvironment, tools: ClientTools) -> dict:
    """Restore into ``<db>__restore_test_<time>``, compare with the manifest, always drop it."""
    url = env.database_url()
    live = database_name(url)
    name = f"{live[:40]}__restore_test_{datetime.now(timezone.utc):%Y%m%d%H%M%S}"
    admin_url = with_database(url, env.maintenance_database)
    started = time.monotonic()
    with db.connect(admin_url, step="restore-test") as admin:
        admin.execute(db.sql.SQL("CREATE DATABASE {}").format(db.sql.Identifier(name)))
    try:
        restore_seconds = _restore(verification, url, name, tools, env)
        with db.connect(with_database(url, name), step="restore-test") as conn:
            if verification.manifest:
                checks = against_manifest(conn, verification.manifest)
            else:
                checks = []
            tables = len(db.user_tables(conn))
    finally:
        with db.connect(admin_url, step="restore-test") as admin:
            admin.execute(db.drop_database_statement(name))
    return {
        "database": name,
        "tables": tables,
        "checks": len(checks),
        "passed_checks": len(checks) - len(failed(checks)),
        "passed": not failed(checks) and tables > 0,
        "failures": describe_failures(checks).splitlines() if failed(checks) else ([] if tables else ["no tables restored"]),
        "restore_seconds": restore_seconds,
        "seconds": time.monotonic() - started,
    }
