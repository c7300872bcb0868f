"""Phase 01, prepare: know the migration, trust the backup, capture the state, write the plan. Reads only.

Any failure here aborts the run with nothing changed (exit 3). Its step ``strategy`` chooses how
the migration is undone (``rollbacklib.strategies.choice``); its last step renders the plan of
every later phase into ``plan.json`` (``rollbacklib.strategies.plan``): what the gate approves
and what runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from rollbacklib import frontends
from rollbacklib.checks import Check, as_frame, describe_failures
from rollbacklib.errors import AbortedError, ConfigError
from rollbacklib.files import atomic_write_json
from rollbacklib.postgres import backup as bk
from rollbacklib.postgres import database as db
from rollbacklib.postgres import identity
from rollbacklib.postgres.client import display_command
from rollbacklib.prisma import MIGRATIONS_TABLE, applied_migrations, migration_state
from rollbacklib.run import RunContext
from rollbacklib.state import BackupRef, Captured
from rollbacklib.dispatch import dispatch
from rollbacklib.steps import Action, Phase, Step, StepName

PHASE = Phase.PREPARE


def _read(ctx: RunContext, text: str) -> Action:
    return Action("read", ctx.database, text)


# --- the migration ----------------------------------------------------------------------------

def migration_step(ctx: RunContext) -> Step:
    return Step(StepName.MIGRATION, PHASE, ctx.database, "find the migration in the live _prisma_migrations",
                (_read(ctx, f"server version, current user; SELECT * FROM {MIGRATIONS_TABLE} ORDER BY started_at"),),
                postcondition="the migration has a row in _prisma_migrations")


def check_migration(ctx: RunContext) -> pd.DataFrame:
    """The migration must be recorded in the live ``_prisma_migrations``; remember when it ran."""
    return dispatch(ctx, migration_step(ctx), _check_migration)


def _check_migration(ctx: RunContext, step: Step) -> pd.DataFrame:
    if ctx.database == ctx.env.maintenance_database:
        raise ConfigError(
            f"The database to roll back ({ctx.database}) is also the maintenance database: the swap renames it "
            "from another database's connection.",
            next_action=f"set maintenance_database for environment {ctx.env.name!r} to another database on the "
            "server (for example template1 or postgres).")
    name_leftovers(ctx, step)
    with db.connect(ctx.url, step=step.name) as conn:
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
    ctx.update(database=ctx.database, server=info, migration=row, migration_state=state)
    ctx.record(step.name, "info", f"{ctx.migration_id} is {state} on {ctx.database}",
               started_at=row["started_at"], finished_at=row["finished_at"], state=state,
               server_version=info["server_version"], superuser=info["superuser"])
    if ctx.migration is None:
        ctx.record(step.name, "info", "no expectations configured for this migration: generic checks only")
    return pd.DataFrame(rows)


#: The databases a run makes beside the live one, by the tag after its name, and what each is.
LEFTOVERS = {
    "__restored_": "a restored copy an earlier run left (swap)",
    "__pre_rollback_": "the database an earlier rollback replaced; kept on purpose",
    "__safety_": "the database as it was before an earlier in-place restore; kept on purpose",
    "__side_": "the affected tables from a backup, restored by an earlier surgical run",
    "__schema_": "a backup's schema, read by an earlier surgical run",
}
DROPPABLE = ("__restored_", "__side_", "__schema_")


def name_leftovers(ctx: RunContext, step: Step) -> None:
    """What earlier runs left on the server: copies, kept databases, a live database still blocked or renamed away."""
    with db.connect(ctx.admin_url, step=step.name) as admin:
        found = admin.execute(
            "SELECT datname, datallowconn, datconnlimit, pg_size_pretty(pg_database_size(oid)) FROM pg_database "
            "WHERE datname = %s OR EXISTS (SELECT FROM unnest(%s::text[]) AS p WHERE starts_with(datname, p)) "
            "ORDER BY datname", (ctx.database, [ctx.database + tag for tag in LEFTOVERS])).fetchall()
    live = next((r for r in found if r[0] == ctx.database), None)
    others = [r for r in found if r[0] != ctx.database and not r[0].endswith(f"_{ctx.run_id}")]
    unfinished = _unfinished_runs(ctx)
    resume = ("resume it: " + "; ".join(f"rollback resume {folder}" for folder in unfinished)) if unfinished else \
        "resume the run that did it (rollback resume reports/<migration>/<environment>/<run_id>)"
    if live is None and not any("__pre_rollback_" in r[0] for r in found):
        raise AbortedError(
            f"The database {ctx.database} was not found on the server, and no earlier rollback kept a database "
            "of that name.",
            next_action=f"check the database name in ${ctx.env.database_url_env} (environment {ctx.env.name!r}) "
            "and the server it points to; nothing was changed.", expected=ctx.database, found=None)
    if live is None or not live[1] or live[2] == 0:
        what = "does not exist (renamed away)" if live is None else "refuses connections (blocked)"
        raise AbortedError(
            f"The live database {ctx.database} {what}: an earlier rollback stopped midway. Found on the server: "
            + (", ".join(f"{r[0]} ({r[3]})" for r in others) or "nothing else"),
            next_action=f"do not start a new rollback over it; {resume}. Nothing was changed by this run.",
            found=[list(r) for r in found], escalate="L2")
    for name, _allow, _limit, size in others:
        tag = next(t for t in LEFTOVERS if name.startswith(ctx.database + t))
        advice = (LEFTOVERS[tag] + ("; drop it once nobody needs it: "
                                    f"{db.drop_database_statement(name).as_string(None)}" if tag in DROPPABLE else ""))
        ctx.record(step.name, "info", f"left by an earlier run: {name} ({size}); {advice}", database=name, size=size)


def _unfinished_runs(ctx: RunContext) -> list[str]:
    """Run folders of this migration and environment whose state shows a change and no health check passed after it."""
    from rollbacklib.state import load_state

    folders = []
    for folder in sorted(ctx.run_dir.parent.iterdir()) if ctx.run_dir.parent.is_dir() else []:
        if folder == ctx.run_dir or not (folder / "state.json").exists():
            continue
        state = load_state(folder)
        if state.blocked is not None and not state.done(StepName.HEALTH):
            folders.append(str(folder))
    return folders


# --- the release ------------------------------------------------------------------------------

def release_step(ctx: RunContext) -> Step:
    release = ctx.env.release
    where = str(release.migrations_dir) if release and release.migrations_dir else "(not configured)"
    return Step(StepName.RELEASE, PHASE, where, "the release to redeploy must not apply the migration again",
                (Action("read", where, f"look for {ctx.migration_id}/ in {where}; read start_command"),),
                postcondition="the release does not both contain the migration and run migrate deploy")


def check_release(ctx: RunContext) -> pd.DataFrame:
    """The release redeployed after the rollback must not apply the migration again.

    After a full restore ``_prisma_migrations`` has no row for the migration, so Prisma sees
    it as not yet applied: a ``prisma migrate deploy`` at start-up would apply it again.
    """
    return dispatch(ctx, release_step(ctx), _check_release)


def _check_release(ctx: RunContext, step: Step) -> pd.DataFrame:
    release = ctx.env.release
    if release is None or release.migrations_dir is None:
        ctx.record(step.name, "info", "no [environments.<env>.release] configured: redeploy check not made")
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
    ctx.record(step.name, "info", "checked the release", checks=[c.to_dict() for c in checks], ok=ok)
    if not ok:
        raise AbortedError(
            f"The release to redeploy contains {ctx.migration_id} and runs `prisma migrate deploy` on start: "
            "it would apply the migration again right after the rollback.",
            next_action="redeploy a release without that migration folder, or take `migrate deploy` out of its "
            "start command, then run again. Nothing was changed.",
            escalate="L2",
        )
    return as_frame(checks)


# --- the backup -------------------------------------------------------------------------------

def _backup_path(ctx: RunContext, backup: str | None) -> Path | None:
    if backup:
        return Path(backup).expanduser().resolve()
    state = ctx.state()
    if state.backup is not None:
        return Path(state.backup.path)
    started = bk.parse_time((state.migration or {}).get("started_at"))
    return bk.find_backup(ctx.env.backup_dir, started)


def verify_backup_step(ctx: RunContext, path: Path | None) -> Step:
    shown = str(path) if path else f"(no backup found in {ctx.env.backup_dir})"
    actions = [Action("read", shown, "present; size; sha256 and size against the manifest; age before the "
                      "migration; the migration not applied in it"),
               _read(ctx, "the live database's name, system identifier and _prisma_migrations, against the "
                     "manifest's (identity of the backup)")]
    if path is not None and path.name.endswith(".dump"):
        actions += [Action("command", shown, display_command(argv), tuple(argv))
                    for argv in bk.readable_commands(path, ctx.tools)]
    elif path is not None:
        actions.append(Action("read", shown, "read the whole gzip/plain stream; it must end with the dump's "
                              "completion line"))
    return Step(StepName.VERIFY_BACKUP, PHASE, shown, "verify the backup before trusting it", tuple(actions),
                requires=(StepName.MIGRATION,), postcondition="every backup check passes")


def verify_backup(ctx: RunContext, backup: str | None = None) -> pd.DataFrame:
    """Present, readable, sha256, size, age, predates the migration: all before anything is touched."""
    path = _backup_path(ctx, backup)
    return dispatch(ctx, verify_backup_step(ctx, path), lambda c, s: _verify_backup(c, s, path))


def _verify_backup(ctx: RunContext, step: Step, path: Path | None) -> pd.DataFrame:
    migration = ctx.state().need("migration", "check_migration (01_prepare)")
    started = bk.parse_time(migration.get("started_at"))
    t = ctx.env.thresholds
    result = bk.verify_backup(path if path else ctx.env.backup_dir / "(none)", ctx.tools,
                              min_bytes=t.min_backup_bytes, max_age_seconds=t.max_backup_age_seconds,
                              migration_id=ctx.migration_id, migration_started_at=started)
    ctx.record(step.name, "info", "backup checks", backup=str(result.path), format=result.format,
               checks=[c.to_dict() for c in result.checks])
    if not result.ok:
        raise AbortedError(
            f"Backup {result.path} failed verification:\n{describe_failures(result.checks)}",
            next_action="ABORT ROLLBACK: nothing was changed. Locate a good backup (its other copy, or "
            f"`rollback verify-backup`; the newest suitable one is looked for in {ctx.env.backup_dir}), then "
            + frontends.parameter_advice("backup", "/path/to/backup.dump") + ".",
            escalate="L3",
        )
    identity_checks = check_backup_identity(ctx, step, result)
    manifest = result.manifest or {}
    ctx.update(backup=BackupRef(path=str(result.path), format=result.format, has_manifest=bool(result.manifest),
                                taken_at=bk.backup_time(result.path, result.manifest)[0].isoformat(),
                                sha256=manifest.get("sha256"), size_bytes=bk.backup_size(result.path)))
    return as_frame(result.checks + identity_checks)


def check_backup_identity(ctx: RunContext, step: Step, result: bk.BackupVerification) -> list[Check]:
    """Is the backup one of the live database: its database, server and Prisma history? Reads only.

    Aborts (exit 3) naming both databases when not. Without a manifest the checks are skipped
    and say why; phase 02 then checks the restored copy's history before the swap.
    """
    with db.connect(ctx.url, step=step.name) as conn:
        live = identity.read_live_identity(conn)
    checks = identity.identity_checks(result.manifest, result.format, live)
    ctx.record(step.name, "info", "identity of the backup against the live database",
               live_database=live["database"], live_system_identifier=live["system_identifier"],
               checks=[c.to_dict() for c in checks])
    for check in checks:
        if check.skipped:
            ctx.record(step.name, "skipped", f"{check.name}: not checked: {check.detail}")
    identity.refuse_unless_identical(checks, backup=result.path, live_database=live["database"],
                                     backup_database=(result.manifest or {}).get("database"),
                                     environment=f"--env {ctx.env.name} (${ctx.env.database_url_env})")
    return checks


# --- the migration's state: is there anything to undo? ----------------------------------------

def migration_state_step(ctx: RunContext) -> Step:
    return Step(StepName.MIGRATION_STATE, PHASE, ctx.database, "a migration that failed without changing the schema "
                "(Prisma P3009) needs no restore",
                (_read(ctx, "the migration's state in _prisma_migrations; when it failed, the live schema's "
                       "fingerprint against the backup manifest's"),),
                requires=(StepName.MIGRATION, StepName.VERIFY_BACKUP),
                postcondition="the migration's state and whether it changed the schema are known")


def check_migration_state(ctx: RunContext) -> str:
    """The migration's own state, after the backup is trusted: a restore must undo something."""
    return dispatch(ctx, migration_state_step(ctx), refuse_a_restore_that_undoes_nothing)


def refuse_a_restore_that_undoes_nothing(ctx: RunContext, step: Step) -> str:
    """A migration that failed without changing the schema (Prisma's P3009 state) needs no restore.

    Restoring would only throw away every write since the backup; and afterwards the migration
    is "not yet applied", so the next ``migrate deploy`` fails again on the same data.
    """
    state = ctx.state()
    if state.migration_state != "failed":
        return f"{ctx.migration_id} is {state.migration_state}: the restore undoes it"
    manifest = bk.load_manifest(Path(state.need("backup", "verify_backup (01_prepare)").path))
    if not manifest:
        ctx.record(step.name, "info", f"{ctx.migration_id} failed (P3009); without a manifest the runbook can not "
                   "tell whether it changed the schema: a restore may discard writes for nothing")
        return f"{ctx.migration_id} failed; not checked without a manifest"
    with db.connect(ctx.url, step=step.name) as conn:
        live = db.schema_fingerprint(db.schema_catalog(conn))
    if live == manifest["schema_fingerprint"]:
        ctx.record(step.name, "info", f"{ctx.migration_id} failed without changing the schema (Prisma P3009: "
                   "finished_at is empty, its error is in _prisma_migrations.logs); the live schema equals the "
                   "backup's: a restore would undo nothing, strategy resolve-only marks it rolled back instead")
        return f"{ctx.migration_id} failed without changing the schema: nothing to restore"
    ctx.record(step.name, "info", f"{ctx.migration_id} failed part way: the live schema differs from the backup's "
               "(step strategy says what differs and how it is undone)")
    return f"{ctx.migration_id} failed part way: its changes must be undone"


# --- the state before the rollback ------------------------------------------------------------

def _capture_folder(ctx: RunContext) -> Path:
    return ctx.run_dir / "capture"


def capture_step(ctx: RunContext) -> Step:
    argv = capture_command(ctx)
    return Step(StepName.CAPTURE, PHASE, ctx.database, "capture the state before the rollback, for the post-mortem",
                (Action("command", ctx.database, display_command(argv), tuple(argv)),
                 _read(ctx, "row counts, _prisma_migrations, schema catalog, the configured sample of rows")),
                postcondition="the capture files are in the run folder")


def capture_command(ctx: RunContext) -> list[str]:
    """pg_dump sets its own lock_timeout to 0: only --lock-wait-timeout keeps it from waiting forever on a lock."""
    schema_file = _capture_folder(ctx) / "schema_before_rollback.sql"
    wait = int(ctx.env.thresholds.lock_timeout_seconds * 1000)
    return [ctx.tools.path("pg_dump"), "--schema-only", f"--lock-wait-timeout={wait}", f"--file={schema_file}",
            f"--dbname={ctx.database}"]


def capture_state(ctx: RunContext) -> pd.DataFrame:
    """Schema-only dump, recent rows, counts and bookkeeping of the live database, for the post-mortem."""
    return dispatch(ctx, capture_step(ctx), _capture_state)


def _capture_state(ctx: RunContext, step: Step) -> pd.DataFrame:
    folder = _capture_folder(ctx)
    folder.mkdir(exist_ok=True)
    (command,) = [a for a in step.actions if a.kind == "command"]
    ctx.tools.run_argv(list(command.argv), url=ctx.url, step=step.name)
    ctx.record(step.name, "ran", command.text, kind=command.kind, target=command.target)
    with db.connect(ctx.url, step=step.name) as conn:
        counts = db.row_counts(conn)
        migrations = applied_migrations(conn)
        catalog = db.schema_catalog(conn)
        sample = None
        expect = ctx.migration.expect if ctx.migration else None
        if expect and expect.sample:
            s = expect.sample
            sample = db.sample_rows(conn, s.table, s.order_by, s.limit)
    files = {"schema": "schema_before_rollback.sql", "counts": "row_counts.json",
             "migrations": "prisma_migrations.json", "catalog": "schema_catalog.json"}
    atomic_write_json(folder / files["counts"], counts)
    atomic_write_json(folder / files["migrations"], migrations)
    atomic_write_json(folder / files["catalog"], catalog)
    if sample is not None:
        files["sample"] = "sample_before_rollback.json"
        atomic_write_json(folder / files["sample"], sample)
    ctx.update(captured=Captured(folder=str(folder), row_counts=counts, files=files,
                                 schema_fingerprint=db.schema_fingerprint(catalog)))
    ctx.record(step.name, "info", "captured the state before the rollback", row_counts=counts, files=files)
    return pd.DataFrame([{"table": t, "rows": n} for t, n in counts.items()])


# --- the plan ---------------------------------------------------------------------------------

def plan_step(ctx: RunContext) -> Step:
    return Step(StepName.PLAN, PHASE, str(ctx.run_dir), "render every later step into plan.json, with its digest",
                (Action("file", str(ctx.run_dir / "plan.json"), "write plan.json"),),
                requires=(StepName.VERIFY_BACKUP,), postcondition="plan.json matches its digest")


def plan_summary(ctx: RunContext) -> str:
    plan = ctx.plan()
    if plan is None:
        return "No plan yet."
    return (f"**Plan `{plan.digest[:12]}`** (sha256 `{plan.digest}`; strategy `{(plan.strategy or {}).get('chosen')}`; "
            f"{len(plan.steps)} steps, {sum(s.destructive for s in plan.steps)} "
            f"destructive). The gate in 02_execute approves exactly this plan; `plan.json` holds it whole.")


def captured_sample(ctx: RunContext) -> list[dict] | None:
    captured = ctx.state().captured
    if captured is None or "sample" not in captured.files:
        return None
    return json.loads((Path(captured.folder) / captured.files["sample"]).read_text())
