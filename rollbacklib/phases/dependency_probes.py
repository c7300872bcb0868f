"""The dependency probes as steps: ``dependencies`` in 01 (before anything changes) and ``dependencies-after`` in 04.

Each probes the environment's database (``SELECT 1``) and every ``[[environments.NAME.dependencies]]``
(``rollbacklib.dependencies``). A dependency down is journaled (the terminal and the report read the
journal) and shown in the notebook's table. Whether it stops the run is its ``required`` key:

* in 01, a required dependency down aborts the run before anything changed (exit 3), since the
  services could not work after the rollback either; one not required is reported and the run goes on;
* in 04, after the services are back, a required dependency down fails the step with L1 (the
  database rollback stands; the services' dependency is what must be fixed).
"""

from __future__ import annotations

import pandas as pd

from rollbacklib import dependencies
from rollbacklib.checks import Check
from rollbacklib.dispatch import checked_before, dispatch
from rollbacklib.errors import StepError
from rollbacklib.run import RunContext
from rollbacklib.steps import Action, Phase, Step, StepName

TECHNICAL = "L1"


def _actions(ctx: RunContext) -> tuple[Action, ...]:
    return tuple(Action("read", d.name, dependencies.describe(d, ctx.env)) for d in dependencies.declared(ctx.env))


def before_step(ctx: RunContext) -> Step:
    """Phase 01's: every dependency probed before anything changes."""
    return Step(StepName.DEPENDENCIES, Phase.PREPARE, ctx.env.name,
                "probe the database and the services' dependencies before anything changes", _actions(ctx),
                postcondition="every required dependency answered")


def after_step(ctx: RunContext) -> Step:
    """Phase 04's: the same probes once the services are back."""
    return Step(StepName.DEPENDENCIES_AFTER, Phase.RESTORE_SERVICE, ctx.env.name,
                "probe the database and the services' dependencies again, with the services back", _actions(ctx),
                requires=(StepName.START_SERVICES,), postcondition="every required dependency answered")


def check_dependencies(ctx: RunContext) -> pd.DataFrame:
    """Phase 01: a required dependency down aborts the run (nothing changed yet: exit 3)."""
    return dispatch(ctx, before_step(ctx), _probe, postcondition=checked_before)


def check_dependencies_after(ctx: RunContext) -> pd.DataFrame:
    """Phase 04: a required dependency down fails the step (L1)."""
    return dispatch(ctx, StepName.DEPENDENCIES_AFTER, _probe, postcondition=_required_up_now)


def _probe(ctx: RunContext, step: Step) -> pd.DataFrame:
    rows = dependencies.probe_all(ctx.env)
    down = [r for r in rows if not r["up"]]
    for row in down:
        ctx.record(step.name, "info", f"dependency {row['name']} ({row['kind']} {row['target']}) is DOWN"
                   f"{'' if row['required'] else ' (not required: the run goes on)'}: {row['detail']}",
                   dependency=row)
    ctx.record(step.name, "info", f"dependencies: {len(rows) - len(down)} of {len(rows)} up"
               + (f"; down: {', '.join(r['name'] for r in down)}" if down else ""), dependencies=rows)
    blocking = [r for r in down if r["required"]]
    if blocking:
        raise _down_error(ctx, step, blocking, rows)
    return pd.DataFrame(rows)


def _down_error(ctx: RunContext, step: Step, blocking: list[dict], rows: list[dict]) -> StepError:
    names = ", ".join(f"{r['name']} ({r['kind']} {r['target']}: {r['detail']})" for r in blocking)
    if step.phase == Phase.PREPARE:
        return StepError(
            f"Required dependency down before the rollback: {names}. Nothing was changed.",
            next_action="bring the dependency back (or, if the services do not need it, set required = false on it "
            f"in [[environments.{ctx.env.name}.dependencies]]), then run 01_prepare again.",
            expected="every required dependency up", found=rows, step=step.name)
    return StepError(
        f"Required dependency down with the services back: {names}. The database rollback stands.",
        next_action="bring the dependency back (its host, its credentials in the env var named), then run this "
        "cell again (or resume the run); escalate to the on-call engineer (L1) if it does not come back.",
        expected="every required dependency up", found=rows, step=step.name, escalate=TECHNICAL)


def _required_up_now(ctx: RunContext, step: Step) -> Check:
    rows = dependencies.probe_all(ctx.env)
    down = [r["name"] for r in rows if r["required"] and not r["up"]]
    return Check("every required dependency answers now", not down, "all up", down or "all up")
