"""Phase 04, restore service: reopen the restored database, check its health, start the apps."""

from __future__ import annotations

import time

import pandas as pd

from rollbacklib.postgres import database as db
from rollbacklib.errors import FailedError
from rollbacklib.run import RunContext, step
from rollbacklib.platforms import platform_for

HEALTH_ATTEMPTS = 10


@step("reopen-connections")
def reopen_connections(ctx: RunContext) -> pd.DataFrame:
    """Allow connections to the restored database again, with the live database's old settings.

    The kept pre-rollback database stays closed to new connections, so nothing writes to it by
    mistake; the journal holds the SQL to open it for inspection.
    """
    if ctx.dry_run:
        ctx.record("reopen-connections", "skipped", "dry run")
        return pd.DataFrame()
    blocked = ctx.require("blocked", "02_execute (block_connections)")
    swap = ctx.state().get("swap") or {}
    live, previous = blocked["database"], blocked["previous"]
    with db.connect(ctx.admin_url, step="reopen-connections") as admin:
        for statement in db.unblock_statements(live, previous):
            admin.execute(statement)
        after = db.database_settings(admin, live)
    if after["allow_connections"] != previous["allow_connections"] or after["connection_limit"] != previous["connection_limit"]:
        raise FailedError(f"Reopening {live} did not take effect.", next_action="run the ALTER DATABASE in the journal by hand.",
                          expected=previous, found=after, escalate="L1")
    kept = swap.get("kept")
    ctx.record("reopen-connections", "changed", f"{live} accepts connections again", settings=after,
               kept=kept, open_kept="; ".join(s.as_string(None) for s in db.unblock_statements(
                   kept, {"allow_connections": True, "connection_limit": -1})) if kept else None)
    return pd.DataFrame([{"database": live, **after}])


@step("health")
def check_database_health(ctx: RunContext, attempts: int = HEALTH_ATTEMPTS, pause: float = 1.0) -> pd.DataFrame:
    """``SELECT 1`` through the application's own URL, with retries; marks the service restored."""
    if ctx.dry_run:
        ctx.record("health", "skipped", "dry run")
        return pd.DataFrame()
    tries = []
    for attempt in range(1, attempts + 1):
        started = time.monotonic()
        try:
            with db.connect(ctx.url, step="health") as conn:
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
        raise FailedError(f"The database did not answer SELECT 1 after {attempts} attempts.",
                          next_action="check the server and the connection limit; see the attempts in the journal.",
                          found=tries, escalate="L2")
    ctx.record("service-restored", "info", "the database answers through the application's URL", attempts=tries)
    return pd.DataFrame(tries)


def scale_services(ctx: RunContext, name: str, *, stop: bool) -> pd.DataFrame:
    """Scale the environment's services to 0 (``stop``) or back to their replicas, and journal it."""
    if ctx.dry_run:
        ctx.record(name, "skipped", "dry run")
        return pd.DataFrame()
    platform = platform_for(ctx.env.service_platform)
    wanted = [(s, 0 if stop else s.replicas) for s in ctx.env.services]
    evidence = [platform.scale(s, replicas) for s, replicas in wanted]
    verb = "stop" if stop else "start"
    if platform.name == "none":
        ctx.record(name, "skipped", f"no service platform configured: {verb} the services by hand",
                   services=[{"name": s.name, "replicas": replicas} for s, replicas in wanted])
    else:
        ctx.record(name, "changed", "services scaled to 0" if stop else "services scaled back", services=evidence)
    return pd.DataFrame(evidence or [{"services": "none configured for this environment"}])


@step("start-services")
def start_services(ctx: RunContext) -> pd.DataFrame:
    return scale_services(ctx, "start-services", stop=False)
