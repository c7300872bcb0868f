"""Phase 04, restore service: start the apps again (the database was reopened, and answered, in 02's window)."""

from __future__ import annotations

import pandas as pd

from rollbacklib.platforms import platform_for
from rollbacklib.run import RunContext
from rollbacklib.dispatch import dispatch
from rollbacklib.steps import Action, Phase, Step, StepName

PHASE = Phase.RESTORE_SERVICE


def service_actions(ctx: RunContext, *, stop: bool) -> list[Action]:
    """What scaling the environment's services down (``stop``) or back up will do, one action each."""
    platform = platform_for(ctx.env)
    return [platform.describe(service, 0 if stop else service.replicas) for service in ctx.env.services]


def plan_steps(ctx: RunContext) -> list[Step]:
    starts = tuple(service_actions(ctx, stop=False))
    return [Step(StepName.START_SERVICES, PHASE, ctx.env.service_platform, "scale the services back",
                 starts, destructive=any(a.kind == "platform" for a in starts),
                 requires=(StepName.VALIDATION,), postcondition="the platform reports the configured replicas")]


def scale_services(ctx: RunContext, step: Step, *, stop: bool) -> pd.DataFrame:
    """Scale the environment's services to 0 (``stop``) or back to their replicas, and journal it."""
    platform = platform_for(ctx.env)
    wanted = [(s, 0 if stop else s.replicas) for s in ctx.env.services]
    evidence = [platform.scale(s, replicas) for s, replicas in wanted]
    verb = "stop" if stop else "start"
    if platform.name == "none":
        ctx.record(step.name, "info", f"no service platform configured: {verb} the services by hand",
                   services=[{"name": s.name, "replicas": replicas} for s, replicas in wanted])
    else:
        ctx.record(step.name, "changed", "services scaled to 0" if stop else "services scaled back", services=evidence)
    return pd.DataFrame(evidence or [{"services": "none configured for this environment"}])


def start_services(ctx: RunContext) -> pd.DataFrame:
    return dispatch(ctx, StepName.START_SERVICES, lambda c, s: scale_services(c, s, stop=False))
