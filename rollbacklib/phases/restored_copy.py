"""Phase 02's first half: the restored copy, made beside the live database, which serves on.

``create-copy`` and ``restore`` make it; ``validate-copy`` reads it (the backup's manifest, the
migration's checks, Prisma's bookkeeping, and the row hashes ``compare-rows`` needs later)
and marks it; ``carry-properties`` gives it the live database's settings and grants;
``close-copy`` closes it to every session for good. Once closed it is never opened again:
from then on it is recognised from the maintenance database alone (``rollbacklib.live``): its
oid, the marker its validation left in its comment, and the count of sessions ever opened on it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pandas as pd

from rollbacklib.checks import Check, as_frame, compare, describe_failures, failed
from rollbacklib.dispatch import dispatch, execute_actions
from rollbacklib.errors import AbortedError, RollbackError
from rollbacklib.files import atomic_write_json
from rollbacklib.live import marker_text, settled_session_count
from rollbacklib.postgres import backup as bk
from rollbacklib.postgres import database as db
from rollbacklib.postgres import identity
from rollbacklib.postgres import properties as dbp
from rollbacklib.postgres import restore as rs
from rollbacklib.postgres import rowdiff
from rollbacklib.postgres.client import ClientTools, display_command, with_database, with_session_settings
from rollbacklib.prisma import applied_migrations, migration_state
from rollbacklib.progress import StepProgress
from rollbacklib.run import RunContext
from rollbacklib.state import RestoredCopy
from rollbacklib.steps import Action, Step, StepName
from rollbacklib.validation import against_expectations, against_manifest, sample_difference

COPY_STEPS = (StepName.CREATE_COPY, StepName.RESTORE, StepName.ANALYZE_COPY, StepName.VALIDATE_COPY, StepName.BOOKKEEPING,
              StepName.CARRY_PROPERTIES, StepName.CLOSE_COPY)


# --- create ---------------------------------------------------------------------------------------

def _copy_exists(ctx: RunContext, step: Step) -> Check:
    now, recorded = ctx.live(), ctx.state().restored
    copy = now.the_copy if recorded and recorded.oid else None
    return Check(f"{step.target} exists (oid {recorded.oid if recorded else None})", copy is not None,
                 recorded.oid if recorded else None, copy.name if copy else None)


def _copy_usable(ctx: RunContext, step: Step) -> Check:
    """The copy exists and can be restored into or vouched for: open, or validated (its marker).

    A copy closed before its validation (a failure's clean-up closes a copy left behind) can be
    neither: create-copy is then done again (its own leftover dropped by oid, a new one made)."""
    exists = _copy_exists(ctx, step)
    if not exists.passed:
        return exists
    now = ctx.live()
    if now.the_copy.closed and not now.copy_validated:
        return Check(f"{now.the_copy.name} is closed and not validated: it is made again", False, "open or validated",
                     "closed, not validated")
    return exists


def create_copy(ctx: RunContext) -> None:
    """CREATE DATABASE for the copy, with the live database's owner, encoding, locale and tablespace."""
    return dispatch(ctx, StepName.CREATE_COPY, _create_copy, postcondition=_copy_usable)


def _create_copy(ctx: RunContext, step: Step) -> None:
    with db.connect(ctx.admin_url, step=step.name) as admin:
        _drop_own_leftover(ctx, step, admin)
        live_props = dbp.read_properties(admin, ctx.database)
        check_free_space(ctx, step, admin)
        execute_actions(ctx, admin, step)
        oid = admin.execute("SELECT oid::bigint FROM pg_database WHERE datname = %s", (step.target,)).fetchone()[0]
    ctx.update(restored=RestoredCopy(name=step.target, oid=oid), live_properties=live_props)
    ctx.record(step.name, "info", f"{step.target} created, oid {oid}", oid=oid)


def _drop_own_leftover(ctx: RunContext, step: Step, admin) -> None:
    """A database with the copy's name that this run made (same oid) and never validated is dropped; any other refused."""
    found = admin.execute("SELECT oid::bigint FROM pg_database WHERE datname = %s", (step.target,)).fetchone()
    if found is None:
        return
    recorded = ctx.state().restored
    if recorded is None or recorded.oid != found[0] or ctx.state().swap:
        raise AbortedError(f"A database named {step.target} already exists and this run did not make it.",
                           next_action="inspect it and drop it by hand, or start a new run.")
    statement = db.drop_database_statement(step.target)
    admin.execute(statement)
    ctx.record(step.name, "ran", statement.as_string(admin), kind="sql", target=step.target,
               why="this run's own unfinished copy, from an attempt that did not finish")


def check_free_space(ctx: RunContext, step: Step, admin) -> None:
    """The copy needs about the live database's size on the server's disk, plus the WAL it writes: refuse if short.

    ``CREATE DATABASE`` writes WAL before anything else, and the restore writes about the
    database's size in WAL again, recycled only at checkpoints (up to ``max_wal_size``). A
    server that runs out of room for WAL stops (PANIC): production with it.
    """
    size, segment, max_wal, template = admin.execute(
        "SELECT pg_database_size(%s), pg_size_bytes(current_setting('wal_segment_size')), "
        "pg_size_bytes(current_setting('max_wal_size')), pg_database_size('template0')", (ctx.database,)).fetchone()
    copy = int(size * ctx.env.thresholds.restore_space_factor)
    wal = template + min(size, max_wal) + 4 * segment
    need = copy + wal
    folder = db.data_directory(admin)
    if folder is None or not Path(folder).is_dir():
        ctx.record(step.name, "skipped", f"free disk not checked: the server's data directory is not on this machine; "
                   f"it needs about {need:,} bytes free for the copy and its WAL", needed_bytes=need)
        return
    free = shutil.disk_usage(folder).free
    ctx.record(step.name, "info", f"free disk: {free:,} bytes, the copy needs about {copy:,} and its WAL {wal:,}",
               free_bytes=free, needed_bytes=need, copy_bytes=copy, wal_bytes=wal, live_bytes=size,
               data_directory=folder)
    if free < need:
        raise AbortedError(
            f"Not enough free disk for the copy: the live database is {size:,} bytes, the copy needs about "
            f"{copy:,} (restore_space_factor {ctx.env.thresholds.restore_space_factor}) and the WAL it writes "
            f"about {wal:,} more (template0, the restore's WAL up to max_wal_size, 4 segments of margin): "
            f"{need:,} in all, and {folder} has {free:,} free. A server out of room for WAL stops, and production "
            "with it.",
            next_action="free space on the database server's volume (or grow it), then run again; nothing was "
            "changed.", expected=f">= {need}", found=free, escalate="L3")


# --- restore --------------------------------------------------------------------------------------

def restore_copy(ctx: RunContext) -> pd.DataFrame:
    """Restore the backup into the copy. The live database is untouched; a failure drops the copy."""
    def restored(c: RunContext, s: Step) -> Check:
        now = c.live()
        copy = now.the_copy
        if copy is None:
            return Check(f"{s.target} exists", False, s.target, None)
        if now.copy_validated:
            return Check(f"{copy.name} was restored and validated (its marker)", True)
        if not copy.allow_connections:
            return Check(f"{copy.name} is closed and not validated: its restore cannot be vouched for", False)
        with db.connect(with_database(c.url, copy.name), step=s.name) as conn:
            return compare(f"{copy.name} holds tables", True, len(db.user_tables(conn)) > 0)

    def copy_created(c: RunContext, s: Step) -> Check:
        return _copy_exists(c, s)

    return dispatch(ctx, StepName.RESTORE, _restore, postcondition=restored, precondition=copy_created)


def restore_summary(ctx: RunContext, backup: Path) -> str:
    jobs, why = rs.restore_jobs(ctx.url, ctx.env.thresholds.restore_jobs)
    how = f"pg_restore -j {jobs} ({why})" if bk.backup_format(backup) in bk.ARCHIVE_FORMATS else \
        "psql, in one transaction"
    return f"restore {backup.name} into the copy with {how}; the live database serves on"


def restore_actions(ctx: RunContext, backup: Path, restored: str) -> tuple[Action, ...]:
    """What the restore step runs: the archive's table count (the progress bar's total), then the restore."""
    jobs, _ = rs.restore_jobs(ctx.url, ctx.env.thresholds.restore_jobs)
    keep = ctx.env.restore_keep_owners
    listing = rs.list_command(backup, ctx.tools)
    return ((Action("read", restored, display_command(listing), tuple(listing)),) if listing else ()) + (
        Action("command", restored, rs.describe_restore(backup, restored, ctx.tools, keep, jobs),
               tuple(rs.restore_command(backup, restored, ctx.tools, keep, jobs))),)


def analyze_actions(ctx: RunContext, restored: str) -> tuple[Action, ...]:
    """The planner's statistics for the copy, its tables analyzed in parallel (``vacuumdb --analyze-only``)."""
    jobs, _ = rs.restore_jobs(ctx.url, ctx.env.thresholds.restore_jobs)
    argv = rs.analyze_command(restored, ctx.tools, jobs)
    return (Action("command", restored, display_command(argv), tuple(argv)),)


def _restore(ctx: RunContext, step: Step) -> pd.DataFrame:
    backup = ctx.state().need("backup", "verify_backup (01_prepare)")
    _fresh_copy_for_retry(ctx, step)
    (command,) = [a for a in step.actions if a.kind == "command"]
    listing = next((a for a in step.actions if a.kind == "read" and a.argv), None)
    path = Path(backup.path)
    restore_timeout = int(ctx.env.thresholds.restore_statement_timeout_seconds * 1000)
    target = with_session_settings(with_database(ctx.url, step.target), statement_timeout=f"{restore_timeout}ms")
    try:
        tables = rs.tables_to_restore(list(listing.argv), step.name) if listing else None
        ctx.record(step.name, "ran", command.text, kind=command.kind, target=command.target,
                   size_mb=round(bk.backup_size(path) / 1e6, 1), tables=tables)
        seconds = rs.run_restore(list(command.argv), path, target, step=step.name, total_tables=tables,
                                 on_progress=StepProgress(ctx, step.name, "restore"))
    except RollbackError as err:
        drop_copy(ctx, step.name, "the restore into it failed")
        raise AbortedError(f"Restoring into {step.target} failed; the live database was not touched.\n{err.message}",
                           next_action="ABORT: the live database was not touched by this step. " + err.next_action, escalate="L3") from None
    restored = ctx.state().need("restored", "create_copy (02_execute)")
    ctx.update(restored=restored.model_copy(update={"seconds": round(seconds, 3)}))
    ctx.record(step.name, "info", f"restored into {step.target} in {seconds:.1f} s", seconds=seconds)
    return pd.DataFrame([{"restored into": step.target, "seconds": round(seconds, 1)}])


def analyze_copy(ctx: RunContext) -> pd.DataFrame:
    """The planner's statistics for every table of the copy, before it goes live; a failure drops the copy."""
    def analyzed(c: RunContext, s: Step) -> Check:
        now = c.live()
        if now.copy_validated:
            return Check(f"{s.target} was analyzed and validated (its marker)", True)
        copy = now.the_copy
        if copy is None or not copy.allow_connections:
            return Check(f"{s.target} is there, open to the runbook, to read its statistics", False)
        with db.connect(with_database(c.url, copy.name), step=s.name) as conn:
            missing = [r[0] for r in conn.execute(
                "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NULL AND last_autoanalyze IS NULL")]
        return compare(f"every table of {copy.name} has been analyzed", [], missing)

    return dispatch(ctx, StepName.ANALYZE_COPY, _analyze, postcondition=analyzed, precondition=_copy_exists)


def _analyze(ctx: RunContext, step: Step) -> pd.DataFrame:
    (command,) = step.actions
    if ctx.live().copy_validated:  # closed for good by now (its cell was skipped): never reopened for statistics
        ctx.record(step.name, "info", f"{step.target} was validated and closed before it was analyzed; it is not "
                   "opened again for it: autovacuum gives it statistics once it is live")
        return pd.DataFrame([{"analyzed": step.target, "seconds": None}])
    target = with_database(ctx.url, step.target)
    ctx.record(step.name, "ran", command.text, kind=command.kind, target=command.target)
    started = time.monotonic()
    try:
        ClientTools.run_argv(list(command.argv), url=target, step=step.name)
    except RollbackError as err:
        drop_copy(ctx, step.name, "analyzing it failed")
        raise AbortedError(f"Analyzing the copy {step.target} failed; the live database was not touched.\n"
                           f"{err.message}", next_action="ABORT: the live database was not touched by this step. "
                           + err.next_action, escalate="L3") from None
    seconds = round(time.monotonic() - started, 3)
    ctx.record(step.name, "info", f"{step.target} analyzed in {seconds:.1f} s", seconds=seconds)
    return pd.DataFrame([{"analyzed": step.target, "seconds": seconds}])


def _fresh_copy_for_retry(ctx: RunContext, step: Step) -> None:
    """A restore that was cut short (a killed kernel, a stopped server) left part of the backup in the copy:
    it is ours (same oid), so it is dropped and created again before the restore starts over."""
    with db.connect(with_database(ctx.url, step.target), step=step.name) as conn:
        partial = len(db.user_tables(conn)) > 0
    if not partial:
        return
    create = ctx.planned(StepName.CREATE_COPY)
    with db.connect(ctx.admin_url, step=step.name) as admin:
        statement = db.drop_database_statement(step.target)
        admin.execute(statement)
        ctx.record(step.name, "ran", statement.as_string(admin), kind="sql", target=step.target,
                   why="an earlier restore into this run's copy was cut short")
        execute_actions(ctx, admin, create)
        oid = admin.execute("SELECT oid::bigint FROM pg_database WHERE datname = %s", (step.target,)).fetchone()[0]
    ctx.update(restored=RestoredCopy(name=step.target, oid=oid))


# --- validate and mark ----------------------------------------------------------------------------

def validate_copy(ctx: RunContext) -> pd.DataFrame:
    """The copy against the backup's manifest and the migration's expectations, its rows hashed; a failure drops it."""
    def marked(c: RunContext, s: Step) -> Check:
        now = c.live()
        return Check("the copy carries its validation's marker", now.copy_validated, now.marker,
                     now.the_copy.comment if now.the_copy else None)

    return dispatch(ctx, StepName.VALIDATE_COPY, _validate_copy, postcondition=marked,
                    precondition=lambda c, s: _copy_exists(c, s))


def _validate_copy(ctx: RunContext, step: Step) -> pd.DataFrame:
    backup = ctx.state().need("backup", "verify_backup (01_prepare)")
    manifest = bk.load_manifest(Path(backup.path))
    rows_folder = ctx.run_dir / rowdiff.SNAPSHOT_FOLDER
    try:
        with db.connect(with_database(ctx.url, step.target), step=step.name) as conn:
            checks = against_manifest(conn, manifest) if manifest else [check_restored_history(ctx, conn, backup.path)]
            checks += against_expectations(conn, ctx.migration.expect if ctx.migration else None, manifest)
            applied = migration_state(applied_migrations(conn), ctx.migration_id)
            checks.append(Check(f"{ctx.migration_id} no longer applied", applied in ("absent", "rolled-back"),
                                "absent", applied))
            description = bk.describe_database(conn, ctx.config.all_queries())
            sample_lost = _sample_lost(ctx, conn)
            if not failed(checks):
                with db.connect(ctx.url, step=step.name) as live:
                    hashed = rowdiff.snapshot(conn, rowdiff.table_shapes(live), rows_folder)
    except RollbackError:
        drop_copy(ctx, step.name, "its validation could not be completed")
        raise
    ctx.record(step.name, "info", f"{len(checks) - len(failed(checks))}/{len(checks)} checks passed",
               checks=[c.to_dict() for c in checks], row_counts=description["row_counts"], sample_lost=sample_lost)
    if failed(checks):
        drop_copy(ctx, step.name, "it fails its checks")
        raise AbortedError(f"The restored copy fails its checks; the live database was not touched:\n"
                           f"{describe_failures(checks)}",
                           next_action="ABORT: the live database was not touched by this step. This backup does not give the state the "
                           "migration's checks expect (or is not what its manifest says): use another backup, "
                           "or fix the expectations.", escalate="L3")
    if manifest is None:  # the plan's plain format: what was restored becomes what is expected
        atomic_write_json(ctx.run_dir / "restored_description.json", description)
    digest = hashlib.sha256(json.dumps({"checks": [c.to_dict() for c in checks], "rows": hashed},
                                       sort_keys=True, default=str).encode()).hexdigest()
    plan = ctx.plan()
    marker = marker_text(ctx.run_id, plan.digest if plan else "none", digest)
    with db.connect(ctx.admin_url, step=step.name) as admin:
        statement = db.comment_statement(step.target, marker)
        admin.execute(statement)
        ctx.record(step.name, "ran", statement.as_string(admin), kind="marker", target=step.target,
                   purpose="the copy's identity (the plan's marker action, filled in): checked from the maintenance "
                   "database before it goes live")
    restored = ctx.state().need("restored", "create_copy (02_execute)")
    ctx.update(restored=restored.model_copy(update={"validated": True, "row_counts": description["row_counts"],
                                                    "marker": marker}))
    ctx.record(step.name, "info", f"validated, row hashes taken ({sum(t.get('rows') or 0 for t in hashed['tables'].values()):,} "
               "rows), marked", validation_digest=digest, marker=marker, copy_rows=str(rows_folder))
    return as_frame(checks) if checks else pd.DataFrame(
        [{"table": t, "rows": n} for t, n in description["row_counts"].items()])


def _sample_lost(ctx: RunContext, conn) -> dict | None:
    """The recent rows captured in phase 01 that the copy does not have (the migration's ``expect.sample``)."""
    state = ctx.state()
    sample = ctx.migration.expect.sample if ctx.migration and ctx.migration.expect.sample else None
    if not (sample and state.captured and "sample" in state.captured.files):
        return None
    before = json.loads((Path(state.captured.folder) / state.captured.files["sample"]).read_text())
    after = db.sample_rows(conn, sample.table, sample.order_by, sample.limit)
    return sample_difference(before, json.loads(json.dumps(after, default=str)),
                             db.primary_key_columns(conn, sample.table))


def check_restored_history(ctx: RunContext, restored, path: str) -> Check:
    """A backup without a manifest: its Prisma history is known only once restored. Raises when not the live one's."""
    with db.connect(ctx.url, step=StepName.VALIDATE_COPY) as live:
        live_rows = applied_migrations(live)
    check = identity.restored_history_check(restored, live_rows)
    identity.refuse_unless_identical([check], backup=Path(path), live_database=ctx.database,
                                     environment=f"--env {ctx.env.name} (${ctx.env.database_url_env})")
    return check


# --- Prisma's bookkeeping -------------------------------------------------------------------------

def check_bookkeeping(ctx: RunContext) -> str:
    """After a full restore ``_prisma_migrations`` must equal the backup's rows: assert, never edit."""
    def checked(c: RunContext, s: Step) -> Check:
        return Check("the copy's bookkeeping was checked and the copy is still the validated one",
                     c.live().copy_validated)

    return dispatch(ctx, StepName.BOOKKEEPING, _bookkeeping, postcondition=checked,
                    precondition=lambda c, s: _copy_exists(c, s))


def _bookkeeping(ctx: RunContext, step: Step) -> str:
    backup = ctx.state().need("backup", "verify_backup (01_prepare)")
    manifest = bk.load_manifest(Path(backup.path))
    with db.connect(with_database(ctx.url, step.target), step=step.name) as conn:
        rows = applied_migrations(conn)
    expected = manifest["prisma_migrations"] if manifest else None
    state = migration_state(rows, ctx.migration_id)
    ctx.record(step.name, "info", f"{ctx.migration_id} is {state} after the restore", rows=rows, state=state)
    if expected is not None and rows != expected:
        drop_copy(ctx, step.name, "its _prisma_migrations is not the backup's")
        raise AbortedError("_prisma_migrations of the copy differs from the backup's manifest; the copy was dropped "
                           "and the live database was not touched.",
                           next_action="compare the rows in the journal with the manifest; use another backup.",
                           expected=expected, found=rows, escalate="L3")
    return prisma_warning(ctx.migration_id, state)


def prisma_warning(migration_id: str, state: str) -> str:
    return (
        f"**`_prisma_migrations` is the backup's: `{migration_id}` is now _{state}_.**\n\n"
        f"- `prisma migrate status` will report `{migration_id}` as **not yet applied**.\n"
        f"- The next `prisma migrate deploy` **will apply it again**: redeploy a release without "
        f"`prisma/migrations/{migration_id}/`, or one that does not run `migrate deploy` on start.\n"
        f"- Do **not** run `prisma migrate resolve --rolled-back {migration_id}`: with no row for it Prisma "
        "answers P3011, and for a successful migration P3012; `--rolled-back` only applies to a failed one."
    )


# --- properties, close ----------------------------------------------------------------------------

def carry_properties(ctx: RunContext) -> pd.DataFrame:
    """Settings and grants of the live database, given to the copy (a dump leaves them out); its comment at the promote."""
    def carried(c: RunContext, s: Step) -> Check:
        copy = c.live().the_copy
        if copy is None:
            return Check("the copy exists", False)
        live = c.state().live_properties or {}
        with db.connect(c.admin_url, step=s.name) as admin:
            found = dbp.read_properties(admin, copy.name)
        keys = ("settings", "grants")
        return compare("the copy has the live database's settings and grants",
                       {k: live.get(k) for k in keys}, {k: found[k] for k in keys})

    def run(c: RunContext, s: Step) -> pd.DataFrame:
        with db.connect(c.admin_url, step=s.name) as admin:
            execute_actions(c, admin, s)
        return pd.DataFrame([{"statement": a.text} for a in s.actions]) if s.actions else pd.DataFrame(
            [{"statement": "(nothing to carry)"}])

    return dispatch(ctx, StepName.CARRY_PROPERTIES, run, postcondition=carried,
                    precondition=lambda c, s: _copy_exists(c, s))


def close_copy(ctx: RunContext) -> pd.DataFrame:
    """No session may reach the copy from now on, superusers included: it is never opened again."""
    def closed(c: RunContext, s: Step) -> Check:
        now = c.live()
        copy = now.the_copy
        if copy is not None and copy.name == c.database and now.copy_validated:
            return Check("the copy has gone live since", True)
        found = {"closed": copy.closed, "sessions": copy.sessions} if copy else None
        return compare(f"{s.target} is closed, with no session", {"closed": True, "sessions": 0}, found)

    def validated(c: RunContext, s: Step) -> Check:
        now = c.live()
        return Check("the copy exists and carries its validation's marker", now.copy_validated,
                     detail="run 02_execute from the top for this run: the copy must be made and validated again")

    return dispatch(ctx, StepName.CLOSE_COPY, _close, postcondition=closed, precondition=validated)


def _close(ctx: RunContext, step: Step) -> pd.DataFrame:
    t = ctx.env.thresholds
    with db.connect(ctx.admin_url, step=step.name) as admin:
        execute_actions(ctx, admin, step)
        left = db.wait_for_no_sessions(admin, step.target, t.terminate_timeout_seconds, t.poll_interval_seconds)
        if left:
            raise AbortedError(f"{len(left)} session(s) on the copy {step.target} survived termination.",
                               next_action="end them by hand (pg_stat_activity), then run this cell again.",
                               found=[s["pid"] for s in left])
        sessions = settled_session_count(admin, step.target)
        settings = db.database_settings(admin, step.target)
    restored = ctx.state().need("restored", "create_copy (02_execute)")
    ctx.update(restored=restored.model_copy(update={"sessions_at_close": sessions}))
    ctx.record(step.name, "info", f"{step.target} closed: {sessions} session(s) ever opened on it, none from now on",
               sessions_at_close=sessions, oid=restored.oid, marker=restored.marker)
    return pd.DataFrame([{**settings, "sessions ever opened": sessions}])


# --- undo -----------------------------------------------------------------------------------------

def drop_copy(ctx: RunContext, step: str, why: str) -> str | None:
    """Drop this run's copy (it holds only the backup) and mark the steps that made it undone. Says what it did."""
    restored = ctx.state().restored
    now = ctx.live()
    copy = now.the_copy
    if copy is None or (restored is not None and restored.oid is not None and copy.oid != restored.oid) \
            or copy.name == ctx.database:
        return None
    live, original = now.named(ctx.database), now.original
    if live is None or original is None or live.oid != original.oid:
        ctx.record(step, "info", f"{copy.name} is not dropped: the live name does not hold the original "
                   f"({now.describe()}), so the copy may be what production needs; a person decides",
                   database=copy.name, keep=True)
        return None
    if restored is not None and restored.sessions_at_close is not None and copy.sessions_ever is not None \
            and copy.sessions_ever != restored.sessions_at_close:
        ctx.record(step, "info", f"{copy.name} is not dropped: sessions were opened on it since it was closed, so it "
                   "may hold writes; a person decides", database=copy.name, keep=True)
        return None
    statement = db.drop_database_statement(copy.name)
    with db.connect(ctx.admin_url, step=step) as admin:
        admin.execute(statement)
        ctx.record(step, "ran", statement.as_string(admin), kind="sql", target=copy.name, why=why)
    ctx.update(restored=None)
    for name in COPY_STEPS:
        if ctx.state().steps.get(name) is not None and name != step:
            ctx.mark_step(name, "undone")
    ctx.record(step, "info", f"undone: {', '.join(COPY_STEPS)} (the copy {copy.name} was dropped: {why})",
               undone=list(COPY_STEPS), dropped=copy.name)
    return copy.name
