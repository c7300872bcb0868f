"""Phase 01, prepare: know the migration, trust the backup, capture the state. Reads only.

Any failure here aborts the run with nothing changed (exit 3).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from rollbacklib.postgres import backup as bk
from rollbacklib.postgres import database as db
from rollbacklib.postgres import identity
from rollbacklib.checks import Check, as_frame, describe_failures
from rollbacklib.errors import AbortedError, ConfigError
from rollbacklib.prisma import applied_migrations, migration_state
from rollbacklib.run import RunContext, step


@step("migration")
def check_migration(ctx: RunContext) -> pd.DataFrame:
    """The migration must be recorded in the live ``_prisma_migrations``; remember when it ran."""
    if ctx.database == ctx.env.maintenance_database:
        raise ConfigError(
            f"The database to roll back ({ctx.database}) is also the maintenance database: the swap renames it "
            "from another database's connection.",
            next_action=f"set maintenance_database for environment {ctx.env.name!r} to another database on the "
            "server (for example template1 or postgres).")
    with db.connect(ctx.url, step="migration") as conn:
        info = db.server_info(conn)
        rows = applied_migrations(conn)
    ctx.tools.check_server(info["server_version_num"])
    row = next((r for r in rows if r["migration_name"] == ctx.migration_id), None)
    state = migration_state(rows, ctx.migration_id)
    if row is None:
        known = ", ".join(r["migration_name"] for r in rows[-5:]) or "none"
        raise AbortedError(
            f"Migration {ctx.migration_id} is not in _prisma_migrations of {ctx.database}.",
            next_action=f"check the migration ID (latest recorded: {known}) and the environment; nothing was changed.",
            expected=ctx.migration_id, found=known,
        )
    ctx.remember(database=ctx.database, server=info, migration=row, migration_state=state)
    ctx.record("migration", "info", f"{ctx.migration_id} is {state} on {ctx.database}",
               started_at=row["started_at"], finished_at=row["finished_at"], state=state,
               server_version=info["server_version"], superuser=info["superuser"])
    if ctx.migration is None:
        ctx.record("migration", "info", "no expectations configured for this migration: generic checks only")
    return pd.DataFrame(rows)


@step("release")
def check_release(ctx: RunContext) -> pd.DataFrame:
    """The release redeployed after the rollback must not apply the migration again.

    After a full restore ``_prisma_migrations`` has no row for the migration, so Prisma sees
    it as not yet applied: a ``prisma migrate deploy`` at start-up would apply it again.
    """
    release = ctx.env.release
    if release is None or release.migrations_dir is None:
        ctx.record("release", "skipped", "no [environments.<env>.release] configured: redeploy check not made")
        return pd.DataFrame([{"check": "release", "verdict": "skipped", "detail": "not configured"}])
    contains = (Path(release.migrations_dir) / ctx.migration_id).is_dir()
    command = release.start_command
    runs_deploy = command is None or "migrate deploy" in command
    checks = [
        Check("release does not contain the migration", not contains, False, contains, str(release.migrations_dir)),
        Check("start command does not run prisma migrate deploy", not runs_deploy, False, runs_deploy,
              command or "start_command not configured"),
    ]
    ok = not contains or not runs_deploy
    ctx.record("release", "info", "checked the release", checks=[c.to_dict() for c in checks], ok=ok)
    if not ok:
        raise AbortedError(
            f"The release to redeploy contains {ctx.migration_id} and runs `prisma migrate deploy` on start: "
            "it would apply the migration again right after the rollback.",
            next_action="redeploy a release without that migration folder, or take `migrate deploy` out of its "
            "start command, then run again. Nothing was changed.",
            escalate="L2",
        )
    return as_frame(checks)


@step("verify-backup")
def verify_backup(ctx: RunContext, backup: str | None = None) -> pd.DataFrame:
    """Present, readable, sha256, size, age, predates the migration: all before anything is touched."""
    migration = ctx.require("migration", "check_migration")
    started = bk.parse_time(migration.get("started_at"))
    path = Path(backup).resolve() if backup else bk.find_backup(ctx.env.backup_dir, started)
    t = ctx.env.thresholds
    result = bk.verify_backup(path if path else ctx.env.backup_dir / "(none)", ctx.tools,
                              min_bytes=t.min_backup_bytes, max_age_seconds=t.max_backup_age_seconds,
                              migration_id=ctx.migration_id, migration_started_at=started)
    ctx.record("verify-backup", "info", "backup checks", backup=str(result.path), format=result.format,
               checks=[c.to_dict() for c in result.checks])
    if not result.ok:
        raise AbortedError(
            f"Backup {result.path} failed verification:\n{describe_failures(result.checks)}",
            next_action="ABORT ROLLBACK: nothing was changed. Locate a good backup (its other copy, or "
            "`rollback verify-backup`), then run again with --backup PATH.",
            escalate="L3",
        )
    identity_checks = check_backup_identity(ctx, result)
    manifest = result.manifest or {}
    ctx.remember(backup={"path": str(result.path), "format": result.format, "has_manifest": bool(result.manifest),
                         "taken_at": bk.backup_time(result.path, result.manifest)[0].isoformat(),
                         "sha256": manifest.get("sha256"), "size_bytes": result.path.stat().st_size})
    return as_frame(result.checks + identity_checks)


def check_backup_identity(ctx: RunContext, result: bk.BackupVerification) -> list[Check]:
    """Is the backup one of the live database: its database, server and Prisma history? Reads only.

    Aborts (exit 3) naming both databases when not. Without a manifest the checks are skipped
    and say why; phase 02 then checks the restored copy's history before the swap.
    """
    with db.connect(ctx.url, step="verify-backup") as conn:
        live = identity.read_live_identity(conn)
    checks = identity.identity_checks(result.manifest, result.format, live)
    ctx.record("verify-backup", "info", "identity of the backup against the live database",
               live_database=live["database"], live_system_identifier=live["system_identifier"],
               checks=[c.to_dict() for c in checks])
    for check in checks:
        if check.skipped:
            ctx.record("verify-backup", "skipped", f"{check.name}: not checked: {check.detail}")
    identity.refuse_unless_identical(checks, backup=result.path, live_database=live["database"],
                                     backup_database=(result.manifest or {}).get("database"),
                                     environment=f"--env {ctx.env.name} (${ctx.env.database_url_env})")
    return checks


@step("capture")
def capture_state(ctx: RunContext) -> pd.DataFrame:
    """Schema-only dump, recent rows, counts and bookkeeping of the live database, for the post-mortem."""
    folder = ctx.run_dir / "capture"
    folder.mkdir(exist_ok=True)
    schema_file = folder / "schema_before_rollback.sql"
    ctx.tools.run("pg_dump", ["--schema-only", f"--file={schema_file}", f"--dbname={ctx.database}"],
                  url=ctx.url, step="capture")
    with db.connect(ctx.url, step="capture") as conn:
        counts = db.row_counts(conn)
        migrations = applied_migrations(conn)
        catalog = db.schema_catalog(conn)
        sample = None
        expect = ctx.migration.expect if ctx.migration else None
        if expect and expect.sample:
            s = expect.sample
            sample = db.sample_rows(conn, s.table, s.order_by, s.limit)
    files = {"schema": schema_file.name}
    (folder / "row_counts.json").write_text(json.dumps(counts, indent=2))
    (folder / "prisma_migrations.json").write_text(json.dumps(migrations, indent=2))
    (folder / "schema_catalog.json").write_text(json.dumps(catalog, indent=2))
    files.update(counts="row_counts.json", migrations="prisma_migrations.json", catalog="schema_catalog.json")
    if sample is not None:
        (folder / "sample_before_rollback.json").write_text(json.dumps(sample, indent=2, default=str))
        files["sample"] = "sample_before_rollback.json"
    ctx.remember(captured={"folder": str(folder), "row_counts": counts, "files": files,
                           "schema_fingerprint": db.schema_fingerprint(catalog)})
    ctx.record("capture", "info", "captured the state before the rollback", row_counts=counts, files=files)
    return pd.DataFrame([{"table": t, "rows": n} for t, n in counts.items()])

