"""The outage window: from blocking the live database to the database answering again.

Everything that depends on the database's size happens before the gate, on the closed copy
(restore, validation, row hashes: ``rollbacklib.phases.restored_copy``) or after the reopen,
on the closed kept database (``rollbacklib.phases.compare_rows``). Between the two, in one
kernel of ``02_execute``, only these steps run, each reading or changing the catalog alone:

1. ``block-connections``: the original refuses new connections, superusers included;
2. ``drain``: waits for sessions doing active work only (a query running, or a transaction
   holding locks); idle sessions are not waited for;
3. ``terminate``: ends every session left, kept as evidence;
4. ``swap-keep-live``: the original is renamed to ``<db>__pre_rollback_<run>``;
   ``sequences``: its sequences, final now, read; the copy's set past them (``rollbacklib.phases.sequences``);
5. ``swap-promote-copy``: the copy's identity is checked from the maintenance database (oid,
   marker, no session since it was closed), then it takes the live name;
6. ``reopen-connections``: the copy accepts connections with the original's old settings;
7. ``health``: ``SELECT 1`` through the application's URL (the end of the downtime).

The keep and the promote live in ``rollbacklib.phases.swap``; this module renders the
window's plan and holds the steps around them, and the live preconditions they share.
"""

from __future__ import annotations

import time

import pandas as pd

from rollbacklib.checks import Check, compare, describe_failures, failed
from rollbacklib.dispatch import dispatch, execute_actions, run_by_strategy_cell
from rollbacklib.errors import StepError
from rollbacklib.files import atomic_write_json
from rollbacklib.journal import utc_now
from rollbacklib.live import describe_way_back, kept_name, restored_name
from rollbacklib.postgres import database as db
from rollbacklib.postgres.client import redact_url
from rollbacklib.phases import sequences
from rollbacklib.run import RunContext
from rollbacklib.state import Blocked
from rollbacklib.steps import Action, Phase, Step, StepName, sql_actions

PHASE = Phase.EXECUTE
HEALTH_ATTEMPTS = 10
TERMINATED_SESSIONS = "terminated_sessions.json"


# --- the plan of the window -----------------------------------------------------------------------

def plan_steps(ctx: RunContext, facts: dict, admin) -> list[Step]:
    live, restored, kept = ctx.database, restored_name(ctx.database, ctx.run_id), kept_name(ctx.database, ctx.run_id)
    t = ctx.env.thresholds
    unblock = [s.as_string(admin) for s in db.unblock_statements(live, facts["settings"])]  # the reopen too
    block = [s.as_string(admin) for s in db.block_statements(live)]
    live_comment = facts["properties"]["comment"]
    return [
        Step(StepName.BLOCK, PHASE, live, "the outage window opens: new connections to the live database stop, "
             "superusers included",
             sql_actions(admin, live, db.block_statements(live)), destructive=True, requires=(StepName.GATE,),
             precondition=f"the validated copy {restored} is there, closed, unchanged; {live} is the original",
             postcondition="the original database: ALLOW_CONNECTIONS false, CONNECTION LIMIT 0", undo=tuple(unblock)),
        Step(StepName.DRAIN, PHASE, live,
             f"wait up to {t.drain_wait_seconds:.0f} s for sessions doing active work (a query running, or a "
             "transaction holding locks) to end; idle sessions, and those idle in a transaction holding nothing, "
             "are not waited for",
             (Action("wait", live, f"poll pg_stat_activity and pg_locks for active client sessions on {live}"),),
             requires=(StepName.BLOCK,), postcondition="the original is still blocked"),
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
        sequences.plan_step(ctx, admin),
        Step(StepName.SWAP_PROMOTE, PHASE, restored,
             f"check the copy's identity from the maintenance database, then it takes the name {live}, still "
             "closed, with the live database's comment",
             sql_actions(admin, restored, [db.rename_statement(restored, live), *db.block_statements(live),
                                           db.comment_statement(live, live_comment)]),
             destructive=True, requires=(StepName.SWAP_KEEP,),
             precondition=f"{restored} is the validated copy (oid, marker, no session since closed); "
             f"{kept} is the original; {live} is free",
             postcondition=f"{live} is the restored copy, closed; {kept} is kept; {restored} is gone",
             undo=(db.rename_statement(live, restored).as_string(admin),
                   db.rename_statement(kept, live).as_string(admin))),
        Step(StepName.REOPEN, PHASE, live, "reopen the restored database with the live database's old settings",
             tuple(Action("sql", live, s) for s in unblock), destructive=True, requires=(StepName.SWAP_PROMOTE,),
             precondition=f"{live} is the validated copy (by oid)",
             postcondition=f"{live} allows connections as before: {facts['settings']}", undo=tuple(block)),
        Step(StepName.HEALTH, PHASE, live, "SELECT 1 through the application's own URL, with retries: the outage "
             "window closes (marks the RTO)",
             (Action("read", live, f"SELECT 1 through {redact_url(ctx.url)}, up to {HEALTH_ATTEMPTS} attempts"),),
             requires=(StepName.REOPEN,), postcondition="the database answers"),
    ]


# --- live preconditions ---------------------------------------------------------------------------

def copy_identity_check(ctx: RunContext, now=None) -> list[Check]:
    """The copy's identity, read from the maintenance database: oid, marker, closed, no session since closed.
    ``now``: the catalog as the caller just read it (inside the window, one read per decision)."""
    now = now or ctx.live()
    restored = ctx.state().restored
    return now.copy_identity(restored.sessions_at_close if restored else None)


def copy_ready_and_original_live(ctx: RunContext, step: Step, *, blocked: bool = False,
                                 no_sessions: bool = False) -> Check:
    """What block, terminate and keep need: the validated copy, closed and unchanged since its validation,
    beside the original, which has the live name."""
    now = ctx.live()
    original, live = now.original, now.named(ctx.database)
    identity = failed(copy_identity_check(ctx, now)) if now.the_copy is not None else []
    found = {"situation": now.situation.value, "copy ready": now.copy_ready and not identity,
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
        f"the validated copy was changed since it was closed ({describe_failures(identity)}): do not use it; "
        "find out who opened it, then run 02_execute from the top for a new run" if identity else
        "the validated copy is not there, closed, as its validation left it: run 02_execute from the top for this "
        "run (create-copy again), then the gate" if not now.copy_ready else
        f"the live name does not hold the original as this step needs ({now.describe()}): run `rollback resume` "
        "for this run, which acts from what the catalog shows")
    return Check(f"{step.name} may act: " + ", ".join(want), passed, want, found, detail)


def original_blocked(ctx: RunContext, step: Step, name: str = "the original database refuses new connections") -> Check:
    """The original (by oid, whatever its name: live while blocked, kept after the swap) takes no connection."""
    original = ctx.live().original
    found = {"allow_connections": original.allow_connections, "connection_limit": original.connection_limit} \
        if original else None
    return compare(name, {"allow_connections": False, "connection_limit": 0}, found)


def way_back_now(ctx: RunContext) -> str:
    """The way back from where the run stands now, read from the catalog: every statement, the unblock included."""
    return describe_way_back(ctx.live().way_back(ctx.previous_settings()), ctx.env.maintenance_database)


# --- block, drain, terminate ----------------------------------------------------------------------

def block_connections(ctx: RunContext) -> pd.DataFrame:
    if run_by_strategy_cell(ctx, StepName.BLOCK):
        return None
    return dispatch(ctx, StepName.BLOCK, _block, postcondition=original_blocked,
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


def drain_connections(ctx: RunContext) -> pd.DataFrame:
    """Wait for sessions doing active work to end on their own; idle ones are left to ``terminate``, at once."""
    if run_by_strategy_cell(ctx, StepName.DRAIN):
        return None
    return dispatch(ctx, StepName.DRAIN, _drain, postcondition=original_blocked, precondition=original_blocked)


def _drain(ctx: RunContext, step: Step) -> pd.DataFrame:
    t = ctx.env.thresholds
    started = time.monotonic()
    with db.connect(ctx.admin_url, step=step.name) as admin:
        found = db.sessions(admin, ctx.database)
        active = [s for s in found if s["activity"] == "active"]
        left = db.wait_for_no_sessions(admin, ctx.database, t.drain_wait_seconds, t.poll_interval_seconds,
                                       active_only=True) if active else []
    idle = [s for s in found if s["activity"] == "idle"]
    waited = round(time.monotonic() - started, 3)
    ctx.record(step.name, "info", f"{len(idle)} idle session(s) not waited for (terminated next); "
               f"{len(active)} active session(s) waited for {waited} s, {len(left)} still active",
               idle=idle, active=active, still_active=left, waited_seconds=waited)
    return pd.DataFrame([{**s, "drain": "not waited for (idle)"} for s in idle]
                        + [{**s, "drain": "still active: terminated next" if s["pid"] in {x["pid"] for x in left}
                            else "ended on its own"} for s in active])


def _original_empty(ctx: RunContext, step: Step) -> Check:
    original = ctx.live().original
    found = {"closed": original.closed, "sessions": original.sessions} if original else None
    return compare("the original is blocked with no other session", {"closed": True, "sessions": 0}, found)


def terminate_sessions(ctx: RunContext) -> pd.DataFrame:
    """Terminate every other session left on the live database (never the runbook's own)."""
    if run_by_strategy_cell(ctx, StepName.TERMINATE):
        return None
    return dispatch(ctx, StepName.TERMINATE, _terminate, postcondition=_original_empty,
                    precondition=lambda c, s: copy_ready_and_original_live(c, s, blocked=True))


def _terminate(ctx: RunContext, step: Step) -> pd.DataFrame:
    t = ctx.env.thresholds
    with db.connect(ctx.admin_url, step=step.name) as admin:
        victims = db.sessions(admin, ctx.database)
        atomic_write_json(ctx.run_dir / TERMINATED_SESSIONS, victims)
        execute_actions(ctx, admin, step)
        ctx.record(step.name, "info", f"terminated {len(victims)} session(s)", terminated=victims)
        left = db.wait_for_no_sessions(admin, ctx.database, t.terminate_timeout_seconds, t.poll_interval_seconds)
    if left:
        raise StepError(f"{len(left)} session(s) on {ctx.database} survived termination.",
                        next_action="find them with pg_stat_activity and end them, then re-run this cell; or "
                        + way_back_now(ctx), expected=0, found=[s["pid"] for s in left], escalate="L3")
    return pd.DataFrame(victims)


# --- reopen, health -------------------------------------------------------------------------------

def reopen_connections(ctx: RunContext) -> pd.DataFrame:
    """Allow connections to the restored database again, with the live database's old settings.

    The kept pre-rollback database stays closed to new connections, so nothing writes to it by
    mistake; the journal and the summary hold the SQL to open it for inspection.
    """
    if run_by_strategy_cell(ctx, StepName.REOPEN):
        return None
    def the_copy_is_live(c: RunContext, s: Step) -> Check:
        now = c.live()
        copy, live = now.the_copy, now.named(c.database)
        return Check(f"{c.database} is the validated copy (by oid), nothing else", bool(
            copy and live and copy.oid == live.oid and now.copy_validated), copy.oid if copy else None,
            live.oid if live else None, "" if copy and live and copy.oid == live.oid else
            "only the validated copy is reopened by the runbook: " + now.describe())

    return dispatch(ctx, StepName.REOPEN, _reopen, postcondition=reopened_as_before, precondition=the_copy_is_live)


def reopened_as_before(ctx: RunContext, step: Step) -> Check:
    """The database with the live name accepts connections with the settings it had before the block."""
    live = ctx.live().named(ctx.database)
    found = {"allow_connections": live.allow_connections, "connection_limit": live.connection_limit} \
        if live else None
    return compare(f"{ctx.database} accepts connections as before", ctx.previous_settings(), found)


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
    if run_by_strategy_cell(ctx, StepName.HEALTH):
        return None
    return dispatch(ctx, StepName.HEALTH, lambda c, s: _health(c, s, attempts, pause))


def _health(ctx: RunContext, step: Step, attempts: int, pause: float) -> pd.DataFrame:
    tries = []
    for attempt in range(1, attempts + 1):
        started = time.monotonic()
        try:
            with db.connect(ctx.url, step=step.name) as conn:
                value = conn.execute("SELECT 1").fetchone()[0]
            tries.append({"attempt": attempt, "ok": value == 1, "ms": round((time.monotonic() - started) * 1000, 1)})
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
