"""Phase 02, execute: the ``swap`` strategy.

1. restore the backup into a new database beside the live one and validate it (the live
   database is not touched; any failure drops the copy and aborts with nothing changed);
2. the gate: an approval of the plan (its digest) is recorded, or the run stops here;
3. stop the services, stop new connections to the live database, wait for sessions to
   drain, terminate the rest;
4. keep the live database by renaming it to ``<db>__pre_rollback_<run>`` (``rollbacklib.phases.swap``;
   the copy takes the live name in phase 03, once validated).

Every step is rendered in phase 01 (``plan_steps``) and executed from ``plan.json``; a
destructive step refuses without an approval of that plan.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from rollbacklib.checks import Check, as_frame, compare, describe_failures, failed
from rollbacklib.errors import AbortedError, RefusedError, RollbackError, StepError
from rollbacklib.files import atomic_write_json
from rollbacklib.journal import utc_now
from rollbacklib.phases.restore_service import scale_services, service_actions
from rollbacklib.phases.validate import against_expectations, against_manifest
from rollbacklib.postgres import backup as bk
from rollbacklib.postgres import database as db
from rollbacklib.postgres import identity
from rollbacklib.postgres import properties as dbp
from rollbacklib.postgres.client import with_database, with_session_settings
from rollbacklib.prisma import applied_migrations
from rollbacklib.run import RunContext, record_approval
from rollbacklib.state import Blocked, RestoredCopy
from rollbacklib import way_back
from rollbacklib import frontends
from rollbacklib.steps import (Action, Phase, Step, StepName, dispatch, execute_actions, plan_frame)

PHASE = Phase.EXECUTE
MAX_IDENTIFIER = 63


def _name(base: str, suffix: str) -> str:
    return base[: MAX_IDENTIFIER - len(suffix)] + suffix


def restored_name(ctx: RunContext) -> str:
    return _name(ctx.database, f"__restored_{ctx.run_id}")


def kept_name(ctx: RunContext) -> str:
    return _name(ctx.database, f"__pre_rollback_{ctx.run_id}")


# --- the plan of this phase ---------------------------------------------------------------------

def read_live_facts(ctx: RunContext, admin) -> dict:
    """What the plan is rendered from: the live database's settings, properties and size."""
    return {"settings": db.database_settings(admin, ctx.database),
            "properties": dbp.read_properties(admin, ctx.database),
            "size": admin.execute("SELECT pg_size_pretty(pg_database_size(%s))", (ctx.database,)).fetchone()[0]}


def _sql(admin, target: str, statements) -> tuple[Action, ...]:
    return tuple(Action("sql", target, s.as_string(admin)) for s in statements)


def plan_steps(ctx: RunContext, facts: dict, admin) -> list[Step]:
    live, restored, kept = ctx.database, restored_name(ctx), kept_name(ctx)
    backup = Path(ctx.state().need("backup", "verify_backup (01_prepare)").path)
    props, t = facts["properties"], ctx.env.thresholds
    drop_restored = db.drop_database_statement(restored).as_string(admin)
    restore_argv = bk.restore_command(backup, restored, ctx.tools, ctx.env.restore_keep_owners)
    carry = dbp.apply_statements(restored, props)
    unblock = [s.as_string(admin) for s in db.unblock_statements(live, facts["settings"])]
    services = tuple(service_actions(ctx, stop=True))
    return [
        Step(StepName.CREATE_COPY, PHASE, restored,
             f"create the empty copy beside the live database (needs free disk for about {facts['size']})",
             _sql(admin, restored, [dbp.create_statement(restored, props)]),
             postcondition=f"{restored} exists (or has been swapped in)", undo=(drop_restored,)),
        Step(StepName.RESTORE, PHASE, restored, f"restore {backup.name} into the copy; the live database serves on",
             (Action("command", restored, bk.describe_restore(backup, restored, ctx.tools, ctx.env.restore_keep_owners),
                     tuple(restore_argv)),),
             requires=(StepName.CREATE_COPY,), postcondition=f"{restored} holds tables", undo=(drop_restored,)),
        Step(StepName.VALIDATE_COPY, PHASE, restored,
             "compare the copy with the backup's manifest and the migration's expectations",
             (Action("read", restored, "schema fingerprint, row counts, _prisma_migrations, first rows, probes, "
                     "configured expectations; without a manifest, _prisma_migrations against the live one's"),),
             requires=(StepName.RESTORE,), postcondition="every check passes; a failure drops the copy",
             undo=(drop_restored,)),
        Step(StepName.CARRY_PROPERTIES, PHASE, restored,
             "give the copy the live database's settings, grants and comment (a dump does not carry them)",
             _sql(admin, restored, carry), requires=(StepName.VALIDATE_COPY,),
             postcondition=f"{restored} has the live database's settings, grants and comment",
             undo=(drop_restored,)),
        Step(StepName.CLOSE_COPY, PHASE, restored,
             "close the copy to every other session, superusers included, until it is validated live",
             _sql(admin, restored, [*db.block_statements(restored), db.terminate_statement(restored)]),
             requires=(StepName.CARRY_PROPERTIES,), postcondition=f"{restored}: ALLOW_CONNECTIONS false, no session",
             undo=(drop_restored,)),
        Step(StepName.GATE, PHASE, live, "approve this plan: the migration ID typed, or given as approve / --yes",
             (Action("prompt", live, f"type {ctx.migration_id} to approve the plan (its digest is in plan.json)"),),
             requires=(StepName.CLOSE_COPY,), postcondition="an approval of this plan's digest is recorded",
             undo=(drop_restored,)),
        Step(StepName.STOP_SERVICES, PHASE, ctx.env.service_platform, "scale the services that use the database to 0",
             services, destructive=any(a.kind == "platform" for a in services), requires=(StepName.GATE,),
             postcondition="the platform reports 0 replicas", undo=tuple(a.text for a in service_actions(ctx, stop=False))),
        Step(StepName.BLOCK, PHASE, live, "stop new connections to the live database, superusers included",
             _sql(admin, live, db.block_statements(live)), destructive=True,
             requires=(StepName.GATE, StepName.VALIDATE_COPY, StepName.CLOSE_COPY),
             postcondition=f"{live}: ALLOW_CONNECTIONS false, CONNECTION LIMIT 0", undo=tuple(unblock)),
        Step(StepName.DRAIN, PHASE, live, f"wait up to {t.drain_wait_seconds:.0f} s for sessions to end on their own",
             (Action("wait", live, f"poll pg_stat_activity every {t.poll_interval_seconds} s for client sessions "
                     f"on {live}"),), requires=(StepName.BLOCK,), postcondition="(reports what is left)"),
        Step(StepName.TERMINATE, PHASE, live, "terminate the sessions left (kept as evidence), wait for them to go",
             _sql(admin, live, [db.terminate_statement(live)]) + (
                 Action("wait", live, f"up to {t.terminate_timeout_seconds:.0f} s for them to go"),),
             destructive=True, requires=(StepName.DRAIN,), postcondition=f"no other session on {live}",
             undo=("sessions reconnect once connections are allowed again",)),
        Step(StepName.SWAP_KEEP, PHASE, live, f"rename the live database to {kept}: kept, never dropped",
             _sql(admin, live, [db.rename_statement(live, kept)]), destructive=True, requires=(StepName.TERMINATE,),
             postcondition=f"{kept} exists and {live} does not (until the copy takes its name)",
             undo=(db.rename_statement(kept, live).as_string(admin),)),
    ]


def show_plan(ctx: RunContext) -> pd.DataFrame:
    """The whole plan of this run, as rendered in phase 01 (this phase's steps first)."""
    plan = ctx.plan()
    if plan is None:
        raise AbortedError("This run has no plan.json.", next_action="run 01_prepare first for this run.",
                           step=StepName.PLAN)
    ctx.record(StepName.PLAN, "info", f"plan {plan.digest[:12]} shown", digest=plan.digest)
    return plan_frame(plan.for_phase(PHASE) + [s for s in plan.steps if s.phase > PHASE])


def _swap_begun(ctx: RunContext) -> bool:
    """Has this run's swap started: recorded in the state, or (a run killed mid-rename) visible in the catalog?

    Once it has, the steps before it are done whatever their own targets show now: the copy
    carries the live name, or the live database carries the kept one.
    """
    if ctx.state().swap is not None:
        return True
    with db.connect(ctx.admin_url, step="swap") as admin:
        return db.database_exists(admin, kept_name(ctx))


# --- the copy -----------------------------------------------------------------------------------

def _copy_exists(ctx: RunContext, step: Step) -> Check:
    if _swap_begun(ctx):
        return Check("the swap has begun: the copy went on", True)
    with db.connect(ctx.admin_url, step=step.name) as admin:
        return compare(f"{step.target} exists", True, db.database_exists(admin, step.target))


def create_copy(ctx: RunContext) -> None:
    """CREATE DATABASE for the copy, with the live database's owner, encoding, locale and tablespace."""
    return dispatch(ctx, ctx.planned(StepName.CREATE_COPY), _create_copy, postcondition=_copy_exists)


def _create_copy(ctx: RunContext, step: Step) -> None:
    restored = step.target
    with db.connect(ctx.admin_url, step=step.name) as admin:
        if db.database_exists(admin, restored):
            state = ctx.state()
            if state.restored is None or state.restored.name != restored or state.swap:
                raise AbortedError(f"A database named {restored} already exists and this run did not make it.",
                                   next_action="inspect it and drop it by hand, or start a new run.")
            admin.execute(db.drop_database_statement(restored))  # our own half-done copy from a retried step
            ctx.record(step.name, "info", f"dropped this run's earlier, unfinished copy {restored}")
        live_props = dbp.read_properties(admin, ctx.database)
        check_free_space(ctx, step, admin)
        execute_actions(ctx, admin, step)
    ctx.update(restored=RestoredCopy(name=restored), live_properties=live_props)


def check_free_space(ctx: RunContext, step: Step, admin) -> None:
    """The copy needs about the live database's size on the server's disk: refuse with the figures if short."""
    size = admin.execute("SELECT pg_database_size(%s)", (ctx.database,)).fetchone()[0]
    need = int(size * ctx.env.thresholds.restore_space_factor)
    folder = db.data_directory(admin)
    if folder is None or not Path(folder).is_dir():
        ctx.record(step.name, "skipped", f"free disk not checked: the server's data directory is not on this machine; "
                   f"it needs about {need:,} bytes free for the copy", needed_bytes=need)
        return
    free = shutil.disk_usage(folder).free
    ctx.record(step.name, "info", f"free disk: {free:,} bytes, the copy needs about {need:,}", free_bytes=free,
               needed_bytes=need, live_bytes=size, data_directory=folder)
    if free < need:
        raise AbortedError(
            f"Not enough free disk for the copy: the live database is {size:,} bytes, the copy needs about "
            f"{need:,} (restore_space_factor {ctx.env.thresholds.restore_space_factor}), and {folder} has {free:,} free.",
            next_action="free space on the database server's volume (or grow it), then run again; nothing was "
            "changed.", expected=f">= {need}", found=free, escalate="L3")


def restore_copy(ctx: RunContext) -> pd.DataFrame:
    """Restore the backup into the copy. The live database is untouched; a failure drops the copy."""
    def restored_has_tables(c: RunContext, s: Step) -> Check:
        if _swap_begun(c) or c.state().done(StepName.CLOSE_COPY):
            return Check("the swap has begun: the copy went on", True)
        with db.connect(with_database(c.url, s.target), step=s.name) as conn:
            return compare(f"{s.target} holds tables", True, len(db.user_tables(conn)) > 0)

    return dispatch(ctx, ctx.planned(StepName.RESTORE), _restore, postcondition=restored_has_tables)


def _restore(ctx: RunContext, step: Step) -> pd.DataFrame:
    backup = ctx.state().need("backup", "verify_backup (01_prepare)")
    (command,) = step.actions
    path = Path(backup.path)
    ctx.record(step.name, "ran", command.text, kind=command.kind, target=command.target,
               size_mb=round(path.stat().st_size / 1e6, 1))
    try:
        restore_timeout = int(ctx.env.thresholds.restore_statement_timeout_seconds * 1000)
        target = with_session_settings(with_database(ctx.url, step.target), statement_timeout=f"{restore_timeout}ms")
        seconds = bk.run_restore(list(command.argv), path, target, step=step.name)
    except RollbackError as err:
        _drop_copy(ctx, step.target, step.name)
        raise AbortedError(f"Restoring into {step.target} failed; the live database was not touched.\n{err.message}",
                           next_action="ABORT: nothing was changed. " + err.next_action, escalate="L3") from None
    ctx.update(restored=RestoredCopy(name=step.target, seconds=round(seconds, 3)))
    ctx.record(step.name, "info", f"restored into {step.target} in {seconds:.1f} s", seconds=seconds)
    return pd.DataFrame([{"restored into": step.target, "seconds": round(seconds, 1)}])


def validate_copy(ctx: RunContext) -> pd.DataFrame:
    """The copy against the backup's manifest and the migration's expectations; a failure drops it."""
    def still_valid(c: RunContext, s: Step) -> Check:
        restored = c.state().restored
        return Check("the copy was validated", _swap_begun(c) or bool(restored and restored.validated))

    return dispatch(ctx, ctx.planned(StepName.VALIDATE_COPY), _validate_copy, postcondition=still_valid)


def _validate_copy(ctx: RunContext, step: Step) -> pd.DataFrame:
    backup = ctx.state().need("backup", "verify_backup (01_prepare)")
    manifest = bk.load_manifest(Path(backup.path))
    try:
        with db.connect(with_database(ctx.url, step.target), step=step.name) as conn:
            checks = against_manifest(conn, manifest) if manifest else [check_restored_history(ctx, conn, backup.path)]
            checks += against_expectations(conn, ctx.migration.expect if ctx.migration else None, manifest)
            description = bk.describe_database(conn, ctx.config.all_queries())
    except RollbackError:
        _drop_copy(ctx, step.target, step.name)
        raise
    ctx.record(step.name, "info", f"{len(checks) - len(failed(checks))}/{len(checks)} checks passed",
               checks=[c.to_dict() for c in checks], row_counts=description["row_counts"])
    if failed(checks):
        _drop_copy(ctx, step.target, step.name)
        raise AbortedError(f"The restored copy fails its checks; the live database was not touched:\n"
                           f"{describe_failures(checks)}",
                           next_action="ABORT: nothing was changed. This backup does not give the state the "
                           "migration's checks expect (or is not what its manifest says): use another backup, "
                           "or fix the expectations.", escalate="L3")
    if manifest is None:  # the plan's plain format: what was restored becomes what is expected
        atomic_write_json(ctx.run_dir / "restored_description.json", description)
    restored = ctx.state().need("restored", "restore_copy (02_execute)")
    ctx.update(restored=restored.model_copy(update={"validated": True, "row_counts": description["row_counts"]}))
    return as_frame(checks) if checks else pd.DataFrame(
        [{"table": t, "rows": n} for t, n in description["row_counts"].items()])


def check_restored_history(ctx: RunContext, restored, path: str) -> Check:
    """A backup without a manifest: its Prisma history is known only once restored. Raises when not the live one's."""
    with db.connect(ctx.url, step=StepName.VALIDATE_COPY) as live:
        live_rows = applied_migrations(live)
    check = identity.restored_history_check(restored, live_rows)
    identity.refuse_unless_identical([check], backup=Path(path), live_database=ctx.database,
                                     environment=f"--env {ctx.env.name} (${ctx.env.database_url_env})")
    return check


def _drop_copy(ctx: RunContext, restored: str, step: str) -> None:
    statement = db.drop_database_statement(restored)
    with db.connect(ctx.admin_url, step=step) as admin:
        admin.execute(statement)
        ctx.record(step, "ran", statement.as_string(admin), kind="sql", target=restored,
                   why="the copy held nothing but a failed or refused restore")
    ctx.update(restored=None)


def close_copy(ctx: RunContext) -> pd.DataFrame:
    """No session but the runbook's may reach the copy until it is validated live (superusers included)."""
    def closed(c: RunContext, s: Step) -> Check:
        if _swap_begun(c):
            return Check("the swap has begun: the copy went on, closed", True)
        with db.connect(c.admin_url, step=s.name) as admin:
            found = {**db.database_settings(admin, s.target), "sessions": len(db.sessions(admin, s.target))}
        return compare(f"{s.target} is closed", {"allow_connections": False, "connection_limit": 0, "sessions": 0},
                       found)

    def run(c: RunContext, s: Step) -> pd.DataFrame:
        with db.connect(c.admin_url, step=s.name) as admin:
            execute_actions(c, admin, s)
            return pd.DataFrame([db.database_settings(admin, s.target)])

    return dispatch(ctx, ctx.planned(StepName.CLOSE_COPY), run, postcondition=closed)


def carry_properties(ctx: RunContext) -> pd.DataFrame:
    """Settings, grants and comment of the live database, given to the copy (a dump leaves them out)."""
    def carried(c: RunContext, s: Step) -> Check:
        if _swap_begun(c):
            return Check("the swap has begun: the copy went on", True)
        with db.connect(c.admin_url, step=s.name) as admin:
            live, copy = dbp.read_properties(admin, c.database), dbp.read_properties(admin, s.target)
        keys = ("settings", "grants", "comment")
        return compare("the copy has the live database's settings, grants and comment",
                       {k: live[k] for k in keys}, {k: copy[k] for k in keys})

    return dispatch(ctx, ctx.planned(StepName.CARRY_PROPERTIES), _carry, postcondition=carried)


def _carry(ctx: RunContext, step: Step) -> pd.DataFrame:
    with db.connect(ctx.admin_url, step=step.name) as admin:
        execute_actions(ctx, admin, step)
    return pd.DataFrame([{"statement": a.text} for a in step.actions]) if step.actions else pd.DataFrame(
        [{"statement": "(nothing to carry)"}])


# --- the gate -----------------------------------------------------------------------------------

def _approved(ctx: RunContext, step: Step) -> Check:
    approval, plan = ctx.state().approval, ctx.plan()
    return Check("an approval of this plan is recorded", bool(approval and plan and approval.plan_digest == plan.digest),
                 plan.digest if plan else None, approval.plan_digest if approval else None)


def approve_swap(ctx: RunContext) -> str:
    """The gate: record an approval of this plan, or refuse (and drop the copy: the server is as it was)."""
    return dispatch(ctx, ctx.planned(StepName.GATE), _gate, postcondition=_approved)


def _gate(ctx: RunContext, step: Step) -> str:
    plan = ctx.plan()
    existing = ctx.state().approval
    if existing and existing.plan_digest == plan.digest and existing.migration_id == ctx.migration_id:
        ctx.record(step.name, "info", f"plan {plan.digest[:12]} approved earlier ({existing.how}, {existing.at})")
        return f"approved ({existing.how})"
    try:
        how = _ask(ctx, plan.digest)
    except RefusedError:
        if ctx.state().restored:  # leave the server as it was: the copy is ours and holds only the backup
            _drop_copy(ctx, ctx.state().restored.name, step.name)
        raise
    record_approval(ctx.run_dir, ctx.migration_id, how, plan.digest)
    return f"approved ({how})"


def _ask(ctx: RunContext, digest: str) -> str:
    """How the plan was approved: the ``approve`` parameter, or the migration ID typed at a prompt."""
    action = (f"Swap the restored copy in for {ctx.database} (the live database is kept as {kept_name(ctx)}); "
              f"plan {digest[:12]}.")
    if ctx.approve == ctx.migration_id:
        return "approve parameter"
    if ctx.approve:
        raise RefusedError(f"The approval given ({ctx.approve!r}) is not the migration ID.",
                           next_action=f"{frontends.approve_advice(ctx.migration_id)}, to allow: {action}")
    try:
        typed = input(f"{action}\nType the migration ID ({ctx.migration_id}) to go on, anything else to stop: ")
    except Exception:  # papermill and other headless kernels have no stdin
        typed = None
    if typed is None:
        raise RefusedError(
            f"Refused: {action} needs confirmation and this run has no one to ask.",
            next_action=f"nothing was changed; {frontends.approve_advice(ctx.migration_id)}.")
    if typed.strip() != ctx.migration_id:
        raise RefusedError(f"Refused: typed {typed.strip()!r}, not the migration ID.",
                           next_action=f"nothing was changed; {frontends.approve_advice(ctx.migration_id)}.")
    return "typed at the notebook's prompt"


# --- services, connections ----------------------------------------------------------------------

def stop_services(ctx: RunContext) -> pd.DataFrame:
    return dispatch(ctx, ctx.planned(StepName.STOP_SERVICES), lambda c, s: scale_services(c, s, stop=True))


def _blocked(ctx: RunContext, step: Step) -> Check:
    if _swap_begun(ctx):
        return Check("the database was swapped after blocking", True)
    with db.connect(ctx.admin_url, step=step.name) as admin:
        found = db.database_settings(admin, ctx.database)
    return compare(f"{ctx.database} refuses new connections", {"allow_connections": False, "connection_limit": 0},
                   found)


def block_connections(ctx: RunContext) -> pd.DataFrame:
    return dispatch(ctx, ctx.planned(StepName.BLOCK), _block, postcondition=_blocked)


def _block(ctx: RunContext, step: Step) -> pd.DataFrame:
    live = ctx.database
    with db.connect(ctx.admin_url, step=step.name) as admin:
        before = db.database_settings(admin, live)
        if ctx.state().blocked is None:
            ctx.update(blocked=Blocked(database=live, previous=before, at=utc_now()))
        execute_actions(ctx, admin, step)
        after = db.database_settings(admin, live)
    return pd.DataFrame([{"setting": k, "before": before[k], "after": after[k]}
                         for k in ("allow_connections", "connection_limit")])


def unblock_advice(ctx: RunContext) -> str:
    """The way back from where the run stands: every statement, the unblock included."""
    return way_back.describe(way_back.way_back(ctx.state(), ctx.run_id), ctx.env.maintenance_database)


def _no_sessions(ctx: RunContext, step: Step) -> Check:
    if _swap_begun(ctx):
        return Check("the database was swapped after draining", True)
    with db.connect(ctx.admin_url, step=step.name) as admin:
        left = db.sessions(admin, ctx.database)
    return compare(f"no other session on {ctx.database}", [], [s["pid"] for s in left])


def drain_connections(ctx: RunContext) -> pd.DataFrame:
    """Wait for sessions to end on their own (what is left is terminated by the next step)."""
    def drained(c: RunContext, s: Step) -> Check:
        return Check("waited for sessions to drain", True)

    return dispatch(ctx, ctx.planned(StepName.DRAIN), _drain, postcondition=drained)


def _drain(ctx: RunContext, step: Step) -> pd.DataFrame:
    t = ctx.env.thresholds
    with db.connect(ctx.admin_url, step=step.name) as admin:
        left = db.wait_for_no_sessions(admin, ctx.database, t.drain_wait_seconds, t.poll_interval_seconds)
    ctx.record(step.name, "info", f"{len(left)} session(s) left after waiting up to {t.drain_wait_seconds:.0f} s",
               sessions=left)
    return pd.DataFrame(left)


def terminate_sessions(ctx: RunContext) -> pd.DataFrame:
    """Terminate every other session left on the live database (never the runbook's own)."""
    return dispatch(ctx, ctx.planned(StepName.TERMINATE), _terminate, postcondition=_no_sessions)


def _terminate(ctx: RunContext, step: Step) -> pd.DataFrame:
    t = ctx.env.thresholds
    with db.connect(ctx.admin_url, step=step.name) as admin:
        victims = db.sessions(admin, ctx.database)
        atomic_write_json(ctx.run_dir / "terminated_sessions.json", victims)
        execute_actions(ctx, admin, step)
        ctx.record(step.name, "info", f"terminated {len(victims)} session(s)", terminated=victims)
        left = db.wait_for_no_sessions(admin, ctx.database, t.terminate_timeout_seconds, t.poll_interval_seconds)
    if left:
        raise StepError(f"{len(left)} session(s) on {ctx.database} survived termination.",
                        next_action="find them with pg_stat_activity and end them, then re-run this cell; or "
                        + unblock_advice(ctx), expected=0, found=[s["pid"] for s in left], escalate="L3")
    return pd.DataFrame(victims)
