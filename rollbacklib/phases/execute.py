"""Phase 02, execute: the ``swap`` strategy.

1. the restored copy is made, validated, marked and closed beside the live database, which
   serves on (``rollbacklib.phases.restored_copy``; any failure drops the copy and aborts with
   nothing changed);
2. the gate: an approval of the plan (its digest) is journaled, or the run stops here;
3. stop the services, stop new connections to the live database, wait for sessions to
   drain, terminate the rest;
4. keep the live database by renaming it to ``<db>__pre_rollback_<run>`` (``rollbacklib.phases.swap``;
   the copy takes the live name in phase 03, once its identity is checked).

Every step is rendered in phase 01 (``plan_steps``) and executed from ``plan.json``; a
destructive step refuses without an approval of that plan, and block, terminate and keep
act only while the validated copy is there, closed, now (``rollbacklib.live``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rollbacklib.checks import Check, compare
from rollbacklib.dispatch import dispatch, execute_actions
from rollbacklib.errors import AbortedError, RefusedError, StepError
from rollbacklib.files import atomic_write_json
from rollbacklib.journal import utc_now
from rollbacklib.live import describe_way_back, kept_name, restored_name
from rollbacklib.phases.restore_service import scale_services, service_actions
from rollbacklib.phases.restored_copy import drop_copy, restore_actions, restore_summary
from rollbacklib.postgres import database as db
from rollbacklib.postgres import properties as dbp
from rollbacklib.run import RunContext, record_approval
from rollbacklib import frontends
from rollbacklib.state import Blocked
from rollbacklib.steps import Action, Phase, Step, StepName, plan_frame, sql_actions

PHASE = Phase.EXECUTE


# --- the plan of this phase ---------------------------------------------------------------------

def read_live_facts(ctx: RunContext, admin) -> dict:
    """What the plan is rendered from: the live database's oid, settings, properties and size."""
    return {"oid": admin.execute("SELECT oid::bigint FROM pg_database WHERE datname = %s",
                                 (ctx.database,)).fetchone()[0],
            "settings": db.database_settings(admin, ctx.database),
            "properties": dbp.read_properties(admin, ctx.database),
            "size": admin.execute("SELECT pg_size_pretty(pg_database_size(%s))", (ctx.database,)).fetchone()[0]}


def plan_steps(ctx: RunContext, facts: dict, admin) -> list[Step]:
    live, restored, kept = ctx.database, restored_name(ctx.database, ctx.run_id), kept_name(ctx.database, ctx.run_id)
    backup = Path(ctx.state().need("backup", "verify_backup (01_prepare)").path)
    props, t = facts["properties"], ctx.env.thresholds
    drop_restored = db.drop_database_statement(restored).as_string(admin)
    carry = [s for s in dbp.apply_statements(restored, {**props, "comment": None})]
    unblock = [s.as_string(admin) for s in db.unblock_statements(live, facts["settings"])]
    services = tuple(service_actions(ctx, stop=True))
    return [
        Step(StepName.CREATE_COPY, PHASE, restored,
             f"create the empty copy beside the live database (needs free disk for about {facts['size']} and its WAL)",
             sql_actions(admin, restored, [dbp.create_statement(restored, props)]),
             postcondition=f"{restored} exists (found by its oid)", undo=(drop_restored,)),
        Step(StepName.RESTORE, PHASE, restored, restore_summary(ctx, backup), restore_actions(ctx, backup, restored),
             requires=(StepName.CREATE_COPY,), postcondition=f"{restored} holds tables", undo=(drop_restored,)),
        Step(StepName.VALIDATE_COPY, PHASE, restored,
             "compare the copy with the backup's manifest and the migration's expectations; hash its rows; mark it",
             (Action("read", restored, "schema fingerprint, row counts, _prisma_migrations, first rows, probes, "
                     "configured expectations; without a manifest, _prisma_migrations against the live one's; "
                     "per table SELECT key, md5(row) ORDER BY key (for compare-rows)"),
              Action("marker", restored, f"COMMENT ON DATABASE {restored} IS 'rollbacklib copy run={ctx.run_id} "
                     "plan=<digest> validation=<sha256 of the checks and row hashes>'")),
             requires=(StepName.RESTORE,), postcondition="every check passes and the copy carries its marker; "
             "a failure drops the copy", undo=(drop_restored,)),
        Step(StepName.BOOKKEEPING, PHASE, restored,
             "assert the copy's _prisma_migrations equals the backup's (never edited)",
             (Action("read", restored, "SELECT * FROM _prisma_migrations"),), requires=(StepName.VALIDATE_COPY,),
             postcondition="_prisma_migrations equals the backup's manifest", undo=(drop_restored,)),
        Step(StepName.CARRY_PROPERTIES, PHASE, restored,
             "give the copy the live database's settings and grants (a dump does not carry them; the comment "
             "follows at the promote)",
             sql_actions(admin, restored, carry), requires=(StepName.BOOKKEEPING,),
             postcondition=f"{restored} has the live database's settings and grants", undo=(drop_restored,)),
        Step(StepName.CLOSE_COPY, PHASE, restored,
             "close the copy to every session, superusers included, for good: it is never opened again",
             sql_actions(admin, restored, [*db.block_statements(restored), db.terminate_statement(restored)]),
             requires=(StepName.CARRY_PROPERTIES,),
             postcondition=f"{restored}: ALLOW_CONNECTIONS false, no session; its session count recorded",
             undo=(drop_restored,)),
        Step(StepName.GATE, PHASE, live, "approve this plan: the migration ID typed, or given as approve / --yes",
             (Action("prompt", live, f"type {ctx.migration_id} to approve the plan (its digest is in plan.json)"),),
             requires=(StepName.CLOSE_COPY,), postcondition="an approval of this plan's digest is journaled",
             undo=(drop_restored,)),
        Step(StepName.STOP_SERVICES, PHASE, ctx.env.service_platform, "scale the services that use the database to 0",
             services, destructive=any(a.kind == "platform" for a in services), requires=(StepName.GATE,),
             postcondition="the platform reports 0 replicas", undo=tuple(a.text for a in service_actions(ctx, stop=False))),
        Step(StepName.BLOCK, PHASE, live, "stop new connections to the live database, superusers included",
             sql_actions(admin, live, db.block_statements(live)), destructive=True,
             requires=(StepName.GATE,),
             precondition=f"the validated copy {restored} is there, closed, unchanged; {live} is the original",
             postcondition="the original database: ALLOW_CONNECTIONS false, CONNECTION LIMIT 0", undo=tuple(unblock)),
        Step(StepName.DRAIN, PHASE, live, f"wait up to {t.drain_wait_seconds:.0f} s for sessions to end on their own",
             (Action("wait", live, f"poll pg_stat_activity every {t.poll_interval_seconds} s for client sessions "
                     f"on {live}"),), requires=(StepName.BLOCK,), postcondition="the original is still blocked"),
        Step(StepName.TERMINATE, PHASE, live, "terminate the sessions left (kept as evidence), wait for them to go",
             sql_actions(admin, live, [db.terminate_statement(live)]) + (
                 Action("wait", live, f"up to {t.terminate_timeout_seconds:.0f} s for them to go"),),
             destructive=True, requires=(StepName.DRAIN,),
             precondition=f"{live} is the original, blocked; the validated copy is there",
             postcondition="no other session on the original", undo=("sessions reconnect once connections are "
                                                                     "allowed again",)),
        Step(StepName.SWAP_KEEP, PHASE, live, f"rename the live database to {kept}: kept, never dropped",
             sql_actions(admin, live, [db.rename_statement(live, kept)]), destructive=True,
             requires=(StepName.TERMINATE,),
             precondition=f"{live} is the original, blocked, with no session; the validated copy is there, closed",
             postcondition=f"the original is named {kept}", undo=(db.rename_statement(kept, live).as_string(admin),)),
    ]


def show_plan(ctx: RunContext) -> pd.DataFrame:
    """The whole plan of this run, as rendered in phase 01 (this phase's steps first)."""
    plan = ctx.plan()
    if plan is None:
        raise AbortedError("This run has no plan.json.", next_action="run 01_prepare first for this run.",
                           step=StepName.PLAN)
    ctx.record(StepName.PLAN, "info", f"plan {plan.digest[:12]} shown", digest=plan.digest)
    return plan_frame(plan.for_phase(PHASE) + [s for s in plan.steps if s.phase > PHASE])


# --- live preconditions ---------------------------------------------------------------------------

def copy_ready_and_original_live(ctx: RunContext, step: Step, *, blocked: bool = False,
                                 no_sessions: bool = False) -> Check:
    """The live facts block, terminate and keep need: the validated copy closed beside the original, which has the live name."""
    now = ctx.live()
    original, live = now.original, now.named(ctx.database)
    found = {"situation": now.situation.value, "copy ready": now.copy_ready,
             "live name holds the original": bool(original and live and live.oid == original.oid)}
    want = {"copy ready": True, "live name holds the original": True}
    if blocked:
        found["original blocked"] = bool(original and original.closed)
        want["original blocked"] = True
    if no_sessions:
        found["sessions on the original"] = original.sessions if original else None
        want["sessions on the original"] = 0
    passed = all(found[k] == v for k, v in want.items())
    detail = "" if passed else (
        "the validated copy is not there, closed, as its validation left it: run 02_execute from the top for this "
        "run (create-copy again), then the gate" if not now.copy_ready else
        f"the live name does not hold the original as this step needs ({now.describe()}): run `rollback resume` "
        "for this run, which acts from what the catalog shows")
    return Check(f"{step.name} may act: " + ", ".join(want), passed, want, found, detail)


def _original_blocked(ctx: RunContext, step: Step) -> Check:
    original = ctx.live().original
    found = {"allow_connections": original.allow_connections, "connection_limit": original.connection_limit} \
        if original else None
    return compare("the original database refuses new connections", {"allow_connections": False,
                                                                     "connection_limit": 0}, found)


# --- the gate -----------------------------------------------------------------------------------

def _approved(ctx: RunContext, step: Step) -> Check:
    from rollbacklib.dispatch import approval_event

    event, plan = approval_event(ctx.run_dir), ctx.plan()
    approved = event["evidence"]["approval"]["plan_digest"] if event else None
    return Check("an approval of this plan is journaled", bool(plan and approved == plan.digest),
                 plan.digest if plan else None, approved)


def approve_swap(ctx: RunContext) -> str:
    """The gate: journal an approval of this plan, or refuse, saying what the refusal changed."""
    def copy_ready(c: RunContext, s: Step) -> Check:
        now = c.live()
        return Check("the validated copy is there, closed, to approve", now.copy_ready, True, now.describe(),
                     detail="" if now.copy_ready else "the copy this plan swaps in is not there as its validation "
                     "left it: run 02_execute from the top for this run (create-copy again), then approve")

    return dispatch(ctx, StepName.GATE, _gate, postcondition=_approved, precondition=copy_ready)


def _gate(ctx: RunContext, step: Step) -> str:
    plan = ctx.plan()
    if _approved(ctx, step).passed:
        existing = ctx.state().approval
        ctx.record(step.name, "info", f"plan {plan.digest[:12]} approved earlier"
                   + (f" ({existing.how}, {existing.at})" if existing else ""))
        return "approved earlier"
    how = _ask(ctx, plan.digest)
    record_approval(ctx.run_dir, ctx.migration_id, how, plan.digest)
    return f"approved ({how})"


def _ask(ctx: RunContext, digest: str) -> str:
    """How the plan was approved: the ``approve`` parameter, or the migration ID typed at a prompt.

    A wrong answer typed at the prompt keeps the validated copy (closed) so the person can
    answer again; a run that cannot ask, or an ``approve`` that is not the migration ID, ends
    here: the copy is dropped, and the refusal says so.
    """
    kept = kept_name(ctx.database, ctx.run_id)
    action = (f"Swap the restored copy in for {ctx.database} (the live database is kept as {kept}); "
              f"plan {digest[:12]}.")
    if ctx.approve == ctx.migration_id:
        return "approve parameter"
    if ctx.approve:
        dropped = drop_copy(ctx, StepName.GATE, "the gate refused")
        raise RefusedError(f"The approval given ({ctx.approve!r}) is not the migration ID: refused. "
                           + _what_changed(ctx, dropped),
                           next_action=f"{frontends.approve_advice(ctx.migration_id)}, to allow: {action}")
    try:
        typed = input(f"{action}\nType the migration ID ({ctx.migration_id}) to go on, anything else to stop: ")
    except Exception:  # papermill and other headless kernels have no stdin
        typed = None
    if typed is None:
        dropped = drop_copy(ctx, StepName.GATE, "the gate refused")
        raise RefusedError(
            f"Refused: {action} needs confirmation and this run has no one to ask. " + _what_changed(ctx, dropped),
            next_action=f"{frontends.approve_advice(ctx.migration_id)}.")
    if typed.strip() != ctx.migration_id:
        copy = restored_name(ctx.database, ctx.run_id)
        raise RefusedError(
            f"Refused: typed {typed.strip()!r}, not the migration ID. This answer changed nothing: the live "
            f"database was not touched by it, and the validated copy {copy} stays closed and ready.",
            next_action=f"run the gate cell again and type {ctx.migration_id} to go on; to stop the rollback "
            f"instead, drop the copy: {db.drop_database_statement(copy).as_string(None)};")
    return "typed at the notebook's prompt"


def _what_changed(ctx: RunContext, dropped: str | None) -> str:
    if dropped:
        return (f"The restored copy {dropped} was dropped (create-copy to close-copy are undone); the live database "
                "was not touched.")
    return "The live database was not touched."


# --- services, connections ----------------------------------------------------------------------

def stop_services(ctx: RunContext) -> pd.DataFrame:
    return dispatch(ctx, StepName.STOP_SERVICES, lambda c, s: scale_services(c, s, stop=True))


def block_connections(ctx: RunContext) -> pd.DataFrame:
    return dispatch(ctx, StepName.BLOCK, _block, postcondition=_original_blocked,
                    precondition=copy_ready_and_original_live)


def _block(ctx: RunContext, step: Step) -> pd.DataFrame:
    live = ctx.database
    with db.connect(ctx.admin_url, step=step.name) as admin:
        before = db.database_settings(admin, live)
        if ctx.state().blocked is None or before != {"allow_connections": False, "connection_limit": 0}:
            ctx.update(blocked=Blocked(database=live, previous=ctx.state().original_settings or before, at=utc_now()))
        execute_actions(ctx, admin, step)
        after = db.database_settings(admin, live)
    return pd.DataFrame([{"setting": k, "before": before[k], "after": after[k]}
                         for k in ("allow_connections", "connection_limit")])


def unblock_advice(ctx: RunContext) -> str:
    """The way back from where the run stands now, read from the catalog: every statement, the unblock included."""
    now = ctx.live()
    return describe_way_back(now.way_back(ctx.previous_settings()), ctx.env.maintenance_database)


def drain_connections(ctx: RunContext) -> pd.DataFrame:
    """Wait for sessions to end on their own (what is left is terminated by the next step)."""
    return dispatch(ctx, StepName.DRAIN, _drain, postcondition=_original_blocked,
                    precondition=lambda c, s: _original_blocked(c, s))


def _drain(ctx: RunContext, step: Step) -> pd.DataFrame:
    t = ctx.env.thresholds
    with db.connect(ctx.admin_url, step=step.name) as admin:
        left = db.wait_for_no_sessions(admin, ctx.database, t.drain_wait_seconds, t.poll_interval_seconds)
    ctx.record(step.name, "info", f"{len(left)} session(s) left after waiting up to {t.drain_wait_seconds:.0f} s",
               sessions=left)
    return pd.DataFrame(left)


def _original_empty(ctx: RunContext, step: Step) -> Check:
    original = ctx.live().original
    found = {"closed": original.closed, "sessions": original.sessions} if original else None
    return compare("the original is blocked with no other session", {"closed": True, "sessions": 0}, found)


def terminate_sessions(ctx: RunContext) -> pd.DataFrame:
    """Terminate every other session left on the live database (never the runbook's own)."""
    return dispatch(ctx, StepName.TERMINATE, _terminate, postcondition=_original_empty,
                    precondition=lambda c, s: copy_ready_and_original_live(c, s, blocked=True))


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
