"""Phase 01's last step, ``plan``: the run's plan, phase 01's steps as they ran, then the chosen strategy's.

``build_plan`` asks the strategy chosen by step ``strategy`` (``state.json``) for its steps of
phases 02 to 05, rendered once; ``write_run_plan`` writes them into ``plan.json`` with their
digest (what the gate approves and the later phases execute) and the choice beside them (shown
with the plan, not part of the digest).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from rollbacklib import strategies
from rollbacklib.dispatch import dispatch
from rollbacklib.phases import checklists, dependency_probes, execute, notify, service_snapshot, staging_check
from rollbacklib.phases.prepare import (capture_step, migration_state_step, migration_step, plan_step, release_step,
                                        verify_backup_step)
from rollbacklib.postgres import database as db
from rollbacklib.steps import Plan, Step, StepName, plan_frame, write_plan
from rollbacklib.strategies.choice import strategy_step, terminal_lines


def build_plan(ctx) -> Plan:
    """Every step of the run, rendered once: phase 01 as it ran, then what the chosen strategy does in 02-05."""
    path = Path(ctx.state().need("backup", "verify_backup (01_prepare)").path)
    name = strategies.chosen(ctx) or ctx.state().need("strategy", "choose_strategy (01_prepare)")["chosen"]
    steps = [notify.initiated_step(ctx), migration_step(ctx), release_step(ctx), verify_backup_step(ctx, path),
             migration_state_step(ctx), strategy_step(ctx), capture_step(ctx), service_snapshot.snapshot_step(ctx),
             dependency_probes.before_step(ctx), checklists.checklists_step(ctx), plan_step(ctx)]
    with db.connect(ctx.admin_url, step=StepName.PLAN) as admin:
        facts = execute.read_live_facts(ctx, admin)
        later = strategies.get(name).plan_steps(ctx, admin, facts)
    gate = next((i for i, s in enumerate(later) if s.name == StepName.GATE), 0)  # the seed's 3.3: staging first
    later.insert(gate, staging_check.staging_step(ctx))
    later = with_window_notices(ctx, later)
    closing = [i for i, s in enumerate(later) if s.name == StepName.CLOSE]
    at = closing[0] if closing else len(later)  # every strategy tells people it completed, right before its close
    told = notify.completed_step(ctx)
    if closing:  # it needs what the strategy's close needs (swap: health; resolve-only: its validation)
        told = replace(told, requires=later[at].requires)
    steps += [*later[:at], told, *later[at:]]
    ctx.update(original_oid=facts["oid"], original_settings=facts["settings"])
    return Plan(steps)


def with_window_notices(ctx, later: list[Step]) -> list[Step]:
    """A plan that stops the services (an outage) tells the status page as the window opens and once it has closed.

    ``notify-window-open`` goes right before ``stop-services`` (after the gate: only an approved plan is announced),
    so its bounded sends come before the outage, never inside it; ``notify-window-closed`` right after
    ``smoke-tests``, once the services are back and working. A plan with no ``stop-services`` (resolve-only,
    surgical with the services up) has no window to announce.
    """
    names = [s.name for s in later]
    if StepName.STOP_SERVICES not in names or StepName.SMOKE_TESTS not in names:
        return later
    stop, smoke = names.index(StepName.STOP_SERVICES), names.index(StepName.SMOKE_TESTS)
    return [*later[:stop], notify.window_open_step(ctx), *later[stop:smoke + 1], notify.window_closed_step(ctx),
            *later[smoke + 1:]]


def write_run_plan(ctx) -> pd.DataFrame:
    """The last step of phase 01: the plan the gate approves and the later phases execute."""
    return dispatch(ctx, plan_step(ctx), _write_plan)


def _write_plan(ctx, step: Step) -> pd.DataFrame:
    plan = build_plan(ctx)
    choice = ctx.state().strategy or {}
    plan.strategy = {k: choice.get(k) for k in ("requested", "chosen", "recommended", "reason")} | {
        "lines": terminal_lines(choice)}
    write_plan(ctx.run_dir, plan)
    ctx.update(plan_digest=plan.digest)
    ctx.record(step.name, "info", f"plan {plan.digest[:12]}: {len(plan.steps)} steps, "
               f"{sum(s.destructive for s in plan.steps)} destructive", digest=plan.digest,
               statements=plan.statements())
    return plan_frame(plan.steps)
