"""Phase 04, restore service: start the apps again (the database was reopened, and answered, in 02's window).

The services come back in order, then their health and the smoke tests: ``rollbacklib.phases.service_probes``.
"""

from __future__ import annotations

import pandas as pd

from rollbacklib.phases import service_probes
from rollbacklib.errors import unexpected
from rollbacklib.services_way_back import SCALED_DOWN, SCALING, undo_stop
from rollbacklib.platforms import platform_for
from rollbacklib.run import RunContext
from rollbacklib.steps import Action, Phase, Step

PHASE = Phase.RESTORE_SERVICE


def service_actions(ctx: RunContext, *, stop: bool) -> list[Action]:
    """What scaling the environment's services down (``stop``) or back up will do, one action each."""
    platform = platform_for(ctx.env)
    return [platform.describe(service, 0 if stop else service.replicas) for service in ctx.env.services]


def plan_steps(ctx: RunContext) -> list[Step]:
    """start-services (in order), service-health, smoke-tests."""
    return service_probes.plan_steps(ctx)


def scale_services(ctx: RunContext, step: Step, *, stop: bool) -> pd.DataFrame:
    """Scale the environment's services to 0 (``stop``) or back to their replicas, and journal it."""
    platform = platform_for(ctx.env)
    wanted = [(s, 0 if stop else s.replicas) for s in ctx.env.services]
    evidence = []
    for service, replicas in wanted:
        if stop and platform.name != "none":
            ctx.record(step.name, "info", f"{service.name}: scaling to 0", **{SCALING: service.name})
        try:
            evidence.append(platform.scale(service, replicas))
        except Exception as err:
            if not stop:
                raise
            failure = unexpected(err, step.name)
            undo_stop(ctx, failure)  # a stop cut short undoes itself, and its error (journaled next) says so
            if failure is err:
                raise
            raise failure from err
        if stop and platform.name != "none":  # each one as it happens: the way back of a stop cut short needs it
            ctx.record(step.name, "changed", f"{service.name} scaled to 0 (it had {evidence[-1].get('replicas_before')})",
                       **{SCALED_DOWN: evidence[-1]})
    verb = "stop" if stop else "start"
    if platform.name == "none":
        ctx.record(step.name, "info", f"no service platform configured: {verb} the services by hand",
                   services=[{"name": s.name, "replicas": replicas} for s, replicas in wanted])
    else:
        ctx.record(step.name, "changed", "services scaled to 0" if stop else "services scaled back", services=evidence)
    return pd.DataFrame(evidence or [{"services": "none configured for this environment"}])


def start_services(ctx: RunContext) -> pd.DataFrame:
    return service_probes.start_services(ctx)


def service_health(ctx: RunContext) -> pd.DataFrame:
    return service_probes.service_health(ctx)


def smoke_tests(ctx: RunContext) -> pd.DataFrame:
    return service_probes.smoke_tests(ctx)
