"""Phase 02, execute: the ``swap`` strategy.

1. the restored copy is made, validated, marked and closed beside the live database, which
   serves on (``rollbacklib.phases.restored_copy``; any failure drops the copy and aborts with
   nothing changed);
2. the gate: an approval of the plan (its digest) is journaled, or the run stops here;
3. stop the services;
4. the outage window, in this same kernel (``rollbacklib.phases.window``): block, drain the
   active sessions, terminate the rest, keep the live database as ``<db>__pre_rollback_<run>``,
   promote the copy once its identity holds, reopen, and the health check through the
   application's URL. Every step in it reads or changes the catalog only.

Every step is rendered in phase 01 (``plan_steps``) and executed from ``plan.json``; a
destructive step refuses without an approval of that plan, and block, terminate and keep
act only while the validated copy is there, closed, unchanged, now (``rollbacklib.live``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rollbacklib.checks import Check
from rollbacklib.dispatch import dispatch, run_by_strategy_cell
from rollbacklib.errors import AbortedError, RefusedError
from rollbacklib.live import kept_name, restored_name
from rollbacklib.phases import salvage, window
from rollbacklib.phases.restore_service import scale_services, service_actions
from rollbacklib.phases.restored_copy import analyze_actions, drop_copy, restore_actions, restore_summary
from rollbacklib.postgres import database as db
from rollbacklib.postgres import properties as dbp
from rollbacklib.run import RunContext, record_approval
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
    live, restored = ctx.database, restored_name(ctx.database, ctx.run_id)
    backup = Path(ctx.state().need("backup", "verify_backup (01_prepare)").path)
    props = facts["properties"]
    drop_restored = db.drop_database_statement(restored).as_string(admin)
    carry = [s for s in dbp.apply_statements(restored, {**props, "comment": None})]
    services = tuple(service_actions(ctx, stop=True))
    return [
        Step(StepName.CREATE_COPY, PHASE, restored,
             "create the empty copy beside the live database (it needs free disk for about the live database's size "
             "and its WAL: measured when it runs; a size in the plan would change its digest as the database grows)",
             sql_actions(admin, restored, [dbp.create_statement(restored, props)]),
             postcondition=f"{restored} exists (found by its oid)", undo=(drop_restored,)),
        Step(StepName.RESTORE, PHASE, restored, restore_summary(ctx, backup), restore_actions(ctx, backup, restored),
             requires=(StepName.CREATE_COPY,), postcondition=f"{restored} holds tables", undo=(drop_restored,)),
        Step(StepName.ANALYZE_COPY, PHASE, restored, "the planner's statistics for every table of the copy, "
             "before it goes live, tables analyzed in parallel", analyze_actions(ctx, restored),
             requires=(StepName.RESTORE,), postcondition=f"every table of {restored} has been analyzed",
             undo=(drop_restored,)),
        Step(StepName.VALIDATE_COPY, PHASE, restored,
             "compare the copy with the backup's manifest and the migration's expectations; hash its rows; mark it",
             (Action("read", restored, "schema fingerprint, row counts, _prisma_migrations, first rows, probes, "
                     "configured expectations; without a manifest, _prisma_migrations against the live one's; "
                     "per table SELECT key, md5(row) ORDER BY key (for compare-rows)"),
              Action("marker", restored, f"COMMENT ON DATABASE {restored} IS 'rollbacklib copy run={ctx.run_id} "
                     "plan=<digest> validation=<sha256 of the checks and row hashes>'")),
             requires=(StepName.ANALYZE_COPY,), postcondition="every check passes and the copy carries its marker; "
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
        salvage.preview_step(ctx),
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
        *window.plan_steps(ctx, facts, admin),
    ]


def show_plan(ctx: RunContext) -> pd.DataFrame:
    """The whole plan of this run, as rendered in phase 01 (this phase's steps first)."""
    plan = ctx.plan()
    if plan is None:
        raise AbortedError("This run has no plan.json.", next_action="run 01_prepare first for this run.",
                           step=StepName.PLAN)
    ctx.record(StepName.PLAN, "info", f"plan {plan.digest[:12]} shown", digest=plan.digest)
    return plan_frame(plan.for_phase(PHASE) + [s for s in plan.steps if s.phase > PHASE])


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
        plan = c.plan()
        if plan is not None and StepName.CLOSE_COPY not in {p.name for p in plan.steps}:
            return Check("no restored copy in this plan (strategy without one)", True)
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
    from rollbacklib import protection

    kept = kept_name(ctx.database, ctx.run_id)
    plan = ctx.plan()
    action = (f"Swap the restored copy in for {ctx.database} (the live database is kept as {kept}); "
              f"plan {digest[:12]}." if plan is None or StepName.CLOSE_COPY in {s.name for s in plan.steps} else
              f"{plan.step(StepName.GATE).summary}; plan {digest[:12]}.")
    expected = protection.expected_answer(ctx.env, ctx.migration_id, digest)
    if protection.approves(ctx.env, ctx.approve, ctx.migration_id, digest):
        return "approve parameter"
    if ctx.approve:
        dropped = drop_copy(ctx, StepName.GATE, "the gate refused")
        raise RefusedError(f"The approval given ({ctx.approve!r}) is not {protection.answer_name(ctx.env)}"
                           + (" nor the plan's whole digest" if ctx.env.protected else "") + ": refused. "
                           + _what_changed(ctx, dropped),
                           next_action=f"{protection.advice(ctx.env, ctx.migration_id, digest)}, to allow: {action}")
    try:
        typed = input(f"{action}\n{protection.question(ctx.env, ctx.migration_id, digest)}: ")
    except Exception:  # papermill and other headless kernels have no stdin
        typed = None
    if typed is None:
        dropped = drop_copy(ctx, StepName.GATE, "the gate refused")
        raise RefusedError(
            f"Refused: {action} needs confirmation and this run has no one to ask. " + _what_changed(ctx, dropped),
            next_action=f"{protection.advice(ctx.env, ctx.migration_id, digest)}.")
    if typed.strip() != expected:
        copy = restored_name(ctx.database, ctx.run_id)
        raise RefusedError(
            f"Refused: typed {typed.strip()!r}, not {protection.answer_name(ctx.env)}. This answer changed nothing: the live "
            f"database was not touched by it, and the validated copy {copy} stays closed and ready.",
            next_action=f"run the gate cell again and type {expected} to go on; to stop the rollback "
            f"instead, drop the copy: {db.drop_database_statement(copy).as_string(None)};")
    return "typed at the notebook's prompt"


def _what_changed(ctx: RunContext, dropped: str | None) -> str:
    if dropped:
        return (f"The restored copy {dropped} was dropped (create-copy to close-copy are undone); the live database "
                "was not touched.")
    return "The live database was not touched."


# --- services ----------------------------------------------------------------------

def stop_services(ctx: RunContext) -> pd.DataFrame:
    if run_by_strategy_cell(ctx, StepName.STOP_SERVICES):  # surgical, in-place: from the strategy's cell
        return None
    return stop_services_step(ctx)


def stop_services_step(ctx: RunContext) -> pd.DataFrame:
    """``stop-services`` itself (a strategy's executor runs this; the notebook cell runs ``stop_services``)."""
    return dispatch(ctx, StepName.STOP_SERVICES, lambda c, s: scale_services(c, s, stop=True))
