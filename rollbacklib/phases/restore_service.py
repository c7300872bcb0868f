"""Phase 04, restore service: reopen the restored database, check its health, start the apps."""

from __future__ import annotations

import time

import pandas as pd

from rollbacklib.checks import Check, compare
from rollbacklib.errors import StepError
from rollbacklib.platforms import platform_for
from rollbacklib.postgres import database as db
from rollbacklib.postgres.client import redact_url
from rollbacklib.run import RunContext
from rollbacklib.dispatch import dispatch, execute_actions
from rollbacklib.steps import Action, Phase, Step, StepName

PHASE = Phase.RESTORE_SERVICE
HEALTH_ATTEMPTS = 10


def service_actions(ctx: RunContext, *, stop: bool) -> list[Action]:
    """What scaling the environment's services down (``stop``) or back up will do, one action each."""
    platform = platform_for(ctx.env)
    return [platform.describe(service, 0 if stop else service.replicas) for service in ctx.env.services]


def plan_steps(ctx: RunContext, facts: dict, admin) -> list[Step]:
    live = ctx.database
    reopen = [s.as_string(admin) for s in db.unblock_statements(live, facts["settings"])]
    block = [s.as_string(admin) for s in db.block_statements(live)]
    return [
        Step(StepName.REOPEN, PHASE, live, "reopen the restored database with the live database's old settings",
             tuple(Action("sql", live, s) for s in reopen), destructive=True, requires=(StepName.VALIDATION,),
             postcondition=f"{live} allows connections as before: {facts['settings']}", undo=tuple(block)),
        Step(StepName.HEALTH, PHASE, live, "SELECT 1 through the application's own URL, with retries (marks the RTO)",
             (Action("read", live, f"SELECT 1 through {redact_url(ctx.url)}, up to {HEALTH_ATTEMPTS} attempts"),),
             requires=(StepName.REOPEN,), postcondition="the database answers"),
        Step(StepName.START_SERVICES, PHASE, ctx.env.service_platform, "scale the services back",
             tuple(service_actions(ctx, stop=False)),
             destructive=any(a.kind == "platform" for a in service_actions(ctx, stop=False)),
             requires=(StepName.HEALTH,), postcondition="the platform reports the configured replicas"),
    ]


def reopen_connections(ctx: RunContext) -> pd.DataFrame:
    """Allow connections to the restored database again, with the live database's old settings.

    The kept pre-rollback database stays closed to new connections, so nothing writes to it by
    mistake; the journal and the summary hold the SQL to open it for inspection.
    """
    def reopened(c: RunContext, s: Step) -> Check:
        live = c.live().named(c.database)
        found = {"allow_connections": live.allow_connections, "connection_limit": live.connection_limit} \
            if live else None
        return compare(f"{c.database} accepts connections as before", c.previous_settings(), found)

    def the_copy_is_live(c: RunContext, s: Step) -> Check:
        now = c.live()
        copy, live = now.the_copy, now.named(c.database)
        return Check(f"{c.database} is the validated copy (by oid), nothing else", bool(
            copy and live and copy.oid == live.oid and now.copy_validated), copy.oid if copy else None,
            live.oid if live else None, "" if copy and live and copy.oid == live.oid else
            "only the validated copy is reopened by the runbook: " + now.describe())

    return dispatch(ctx, StepName.REOPEN, _reopen, postcondition=reopened, precondition=the_copy_is_live)


def _reopen(ctx: RunContext, step: Step) -> pd.DataFrame:
    swap = ctx.state().swap
    with db.connect(ctx.admin_url, step=step.name) as admin:
        execute_actions(ctx, admin, step)
        after = db.database_settings(admin, ctx.database)
    kept = swap.kept if swap else None
    ctx.record(step.name, "info", f"{ctx.database} accepts connections again", settings=after, kept=kept,
               open_kept=db.open_database_sql(kept) if kept else None)
    return pd.DataFrame([{"database": ctx.database, **after}])


def check_database_health(ctx: RunContext, attempts: int = HEALTH_ATTEMPTS, pause: float = 1.0) -> pd.DataFrame:
    """``SELECT 1`` through the application's own URL, with retries; marks the service restored."""
    return dispatch(ctx, StepName.HEALTH, lambda c, s: _health(c, s, attempts, pause))


def _health(ctx: RunContext, step: Step, attempts: int, pause: float) -> pd.DataFrame:
    tries = []
    for attempt in range(1, attempts + 1):
        started = time.monotonic()
        try:
            with db.connect(ctx.url, step=step.name) as conn:
                value = conn.execute("SELECT 1").fetchone()[0]
                tables = len(db.user_tables(conn))
            tries.append({"attempt": attempt, "ok": value == 1, "ms": round((time.monotonic() - started) * 1000, 1),
                          "tables": tables})
            if value == 1:
                break
        except Exception as err:
            tries.append({"attempt": attempt, "ok": False, "error": str(err).split("\n")[0]})
        time.sleep(pause)
    if not tries[-1]["ok"]:
        raise StepError(f"The database did not answer SELECT 1 after {attempts} attempts.",
                        next_action="check the server and the connection limit; see the attempts in the journal.",
                        found=tries, escalate="L2")
    ctx.record("service-restored", "info", "the database answers through the application's URL", attempts=tries)
    return pd.DataFrame(tries)


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
