"""The dispatcher: the only way a step runs. Precondition, journal, execute, postcondition.

Every answer it needs about the live system comes from ``rollbacklib.live`` at the moment
of asking: a step is skipped as done only when its postcondition holds now, a destructive
step runs only when its live precondition holds now, and after any error the server's and
production's state is said first. The records (``state.json``, the journal) only say what
to look for; the approval of the plan is read from the journal's approval event, the one
record an edit of ``plan.json`` and ``state.json`` together cannot move.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Callable, TypeVar

from rollbacklib import escalation
from rollbacklib.checks import Check
from rollbacklib.errors import OUTCOME_EXIT, ConfigError, RefusedError, RollbackError, StepError, unexpected
from rollbacklib.journal import read_events
from rollbacklib.run import RunContext
from rollbacklib.steps import Action, Phase, Step, StepName, canonical, read_plan

T = TypeVar("T")
Condition = Callable[[RunContext, Step], Check]


def dispatch(ctx: RunContext, step: Step | str, execute: Callable[[RunContext, Step], T], *,
             postcondition: Condition | None = None, precondition: Condition | None = None) -> T | None:
    """Run ``step`` (a ``Step``, or the name of one in ``plan.json``): precondition, journal, execute, postcondition.

    Under a dry run, steps after phase 01 are journaled as ``planned`` (each action verbatim)
    and not executed. A step already done in this run whose postcondition holds now is
    skipped with that evidence. ``precondition`` is a live fact checked right before the
    step acts; when it does not hold the step is refused and changes nothing. Any error is
    journaled with the outcome the run has reached: ``aborted`` while no change was made,
    ``failed`` after one (``ConfigError`` and ``RefusedError`` keep theirs).
    """
    name = step if isinstance(step, str) else step.name
    try:
        if isinstance(step, str):
            if not_in_plan(ctx, step):
                return None
            step = ctx.planned(step)
    except RollbackError as err:
        ctx.record(name, "started", f"{name}: read from plan.json")
        _journal_failure(ctx, Step(name, ctx.phase, "", ""), err)
        raise
    ctx.record(step.name, "started", step.summary, target=step.target, destructive=step.destructive)
    escalation.arm(ctx)  # a step boundary: the run past its time escalates to L2 (and a timer covers a long step)
    try:
        if ctx.dry_run and step.phase != Phase.PREPARE:
            for action in step.actions:
                ctx.record(step.name, "planned", action.text, kind=action.kind, target=action.target,
                           destructive=step.destructive)
            ctx.mark_step(step.name, "skipped")
            ctx.record(step.name, "skipped", "dry run: planned above, not executed")
            return None
        check_precondition(ctx, step, live=precondition is not None)
        if ctx.state().done(step.name) and postcondition is not None:
            holds = postcondition(ctx, step)
            if not holds.passed:
                ctx.record(step.name, "info", f"done earlier, but it does not hold now: {holds.name}",
                           check=holds.to_dict())
            if holds.passed:
                ctx.record(step.name, "skipped", f"already done, and it holds now: {holds.name}",
                           evidence=holds.to_dict())
                return None
        if precondition is not None:
            ready = precondition(ctx, step)
            ctx.record(step.name, "info", f"precondition: {ready.name}", check=ready.to_dict())
            if not ready.passed:
                raise RefusedError(
                    f"{step.name} refused, nothing was changed by it: {ready.name} does not hold now "
                    f"({ready.detail or 'see expected and found'}).",
                    next_action=ready.detail or "run 02_execute from the top for this run.",
                    step=step.name, expected=ready.expected, found=ready.found,
                    # after a change, the live system is not what the rollback left: a person decides
                    escalate="L3" if ctx.changes_began() else None)
        result = execute(ctx, step)
        if postcondition is not None:
            holds = postcondition(ctx, step)
            ctx.record(step.name, "info", f"postcondition: {holds.name}", check=holds.to_dict())
            if not holds.passed:
                raise StepError(f"{step.name} ran but its postcondition does not hold: {holds.name}.",
                                next_action="inspect the target by hand before going on; the journal has what ran.",
                                expected=holds.expected, found=holds.found, escalate="L3")
    except RollbackError as err:
        _journal_failure(ctx, step, err)
        raise
    except Exception as err:
        wrapped = unexpected(err, step.name)
        _journal_failure(ctx, step, wrapped)
        raise wrapped from err
    ctx.mark_step(step.name, "ok")
    ctx.record(step.name, "ok")
    return result


def not_in_plan(ctx: RunContext, name: str) -> bool:
    """A cell whose step the chosen strategy's plan does not hold is a no-op, journaled as such."""
    plan, choice = ctx.plan(), ctx.state().strategy
    if plan is None or not choice or any(s.name == name for s in plan.steps):
        return False
    ctx.record(name, "info", f"{name}: not in this plan (strategy {choice.get('chosen')})", strategy=choice.get("chosen"),
               not_in_plan=True)
    return True


CELL_STRATEGY = "swap"  # the strategy whose 02-05 steps each have a notebook cell of their own


def run_by_strategy_cell(ctx: RunContext, name: str) -> bool:
    """A step of the swap's own cells (the window's, ``stop-services``) that another strategy's plan holds is run by
    that strategy's generic cell (``strategies.run_phase_steps``), with its own live preconditions: its own cell,
    whose preconditions are the swap's, journals that and does nothing (True)."""
    plan, choice = ctx.plan(), (ctx.state().strategy or {}).get("chosen")
    if plan is None or choice in (None, CELL_STRATEGY) or not any(s.name == name for s in plan.steps):
        return False
    ctx.record(name, "info", f"{name}: run by strategy {choice}'s cell (the strategy's own steps), not this one",
               strategy=choice, run_by_strategy=True)
    return True


def checked_before(ctx: RunContext, step: Step) -> Check:
    """The postcondition of a step that only checks: its own check is the evidence; a re-run need not repeat it."""
    return Check(f"{step.name} passed in this run", True)


# --- the approval -------------------------------------------------------------------------------

def approval_event(run_dir) -> dict | None:
    """The latest approval the journal holds (what the gate recorded), or None."""
    return next((e for e in reversed(read_events(run_dir)) if e["step"] == StepName.GATE
                 and e["status"] == "info" and "approval" in e["evidence"]), None)


def check_approval(ctx: RunContext, step: Step) -> None:
    """``plan.json`` as it is now must be the plan whose digest the journal's approval event holds."""
    event = approval_event(ctx.run_dir)
    if event is None or ctx.state().approval is None:
        raise RefusedError(
            f"{step.name} changes {step.target} and this run has no approval: refused, nothing was changed by it.",
            next_action="if the gate was refused, stop here: the live database is as it was. To go on, run "
            "the gate cell again and type the migration ID (or pass approve / --yes), then this cell.",
            step=step.name)
    approved = event["evidence"]["approval"]
    plan = read_plan(ctx.run_dir)
    digest = hashlib.sha256(canonical(plan.steps)).hexdigest() if plan else None
    if digest != approved["plan_digest"] or approved["migration_id"] != ctx.migration_id:
        raise RefusedError(
            f"{step.name}: the journal's approval is for plan {approved['plan_digest'][:12]}, plan.json is now "
            f"{digest[:12] if digest else 'missing'}: refused, nothing was changed by it. plan.json was changed "
            "after its approval.",
            next_action="do not go on with this run: find out who changed plan.json (verify-audit names it); "
            "start a new run from 01_prepare and approve its plan.",
            step=step.name, expected=approved["plan_digest"], found=digest)


def check_precondition(ctx: RunContext, step: Step, *, live: bool = False) -> None:
    """A destructive step needs an approval of this very plan; a step without a live precondition needs what it
    requires done (one with a live precondition asks the catalog instead: ``dispatch``)."""
    if step.destructive:
        check_approval(ctx, step)
    if live:
        return
    state = ctx.state()
    missing = [name for name in step.requires if not state.done(name)]
    if missing:
        raise StepError(f"{step.name} needs {', '.join(missing)} done first in this run.",
                        next_action=f"run the cell(s) for {', '.join(missing)} first; if one failed or was "
                        "refused, follow what its cell says instead.", step=step.name,
                        expected="done", found={n: (state.steps[n].status if n in state.steps else "not run")
                                                for n in missing})


# --- failures -----------------------------------------------------------------------------------

def _journal_failure(ctx: RunContext, step: Step, err: RollbackError) -> None:
    if err.step is None:
        err.step = step.name
    if "lock timeout" in err.message or "statement timeout" in err.message:  # pg_dump's lock wait is the latter
        _name_what_it_waited_on(ctx, err)
    if not isinstance(err, (ConfigError, RefusedError)):
        err.outcome = "failed" if ctx.changes_began() else "aborted"
        err.exit_code = OUTCOME_EXIT[err.outcome]
    now = ctx.live()
    close_left_copy(ctx, step.name, now)
    health = now.health_line()
    if health and not err.message.startswith(health):
        err.message = f"{health}\n{err.message}"
    back = now.way_back(ctx.previous_settings()) if now.production_down else []
    if back and "ON_ERROR_STOP" not in err.next_action:
        from rollbacklib.live import describe_way_back

        err.next_action += " The way back, from what the catalog shows now: " + describe_way_back(
            back, ctx.env.maintenance_database)
    ctx.mark_step(step.name, err.outcome)
    escalation.prepare(ctx, err)  # its level and who that is, in the message, the journal and the report
    evidence = {k: v for k, v in err.to_dict().items() if k not in ("message", "step")}
    ctx.record(step.name, err.outcome, err.message, **evidence, live=now.to_dict(), way_back=back)
    escalation.on_failure(ctx, step.name, err)  # journaled, and the escalation channel told (never blocking)


def close_left_copy(ctx: RunContext, step: str, now=None) -> None:
    """A copy left open beside a serving original is closed: never reachable while nobody watches it."""
    from rollbacklib.postgres import database as db

    now = now or ctx.live()
    copy = now.the_copy
    if copy is None or now.copy_oid is None or copy.oid != now.copy_oid or copy.name != now.copy or copy.closed:
        return  # only this run's own copy (by oid), under its own name, and only when open
    try:
        with db.connect(ctx.admin_url, step=step) as admin:
            for statement in db.block_statements(copy.name):
                admin.execute(statement)
                ctx.record(step, "ran", statement.as_string(admin), kind="sql", target=copy.name,
                           why="a copy left behind is closed to every session")
    except RollbackError:
        return


def _name_what_it_waited_on(ctx: RunContext, err: RollbackError) -> None:
    """A timeout says which sessions held the locks it may have waited on (pid, user, state, query)."""
    from rollbacklib.postgres import database as db

    try:
        with db.connect(ctx.admin_url, step=err.step) as admin:
            holders = db.lock_holders(admin, ctx.database)
    except RollbackError:
        return
    if holders:
        err.message += "\nIt waited on: " + "; ".join(
            f"pid {h['pid']} (user {h['user']}, {h['state']} since {h['since']}): {h['query']}" for h in holders)
        err.found = holders
    err.next_action = ("end or wait for the session(s) named above (SELECT pg_terminate_backend(pid) once a person "
                       "agrees), then run again; " + err.next_action)
    err.escalate = err.escalate or "L1"


# --- actions ------------------------------------------------------------------------------------

def execute_actions(ctx: RunContext, conn, step: Step, actions: tuple[Action, ...] | None = None) -> None:
    """Run a step's SQL actions verbatim on ``conn``, journaling each (``changed`` when destructive)."""
    for action in step.actions if actions is None else actions:
        if action.kind != "sql":
            continue
        conn.execute(action.text.encode())
        ctx.record(step.name, "changed" if step.destructive else "ran", action.text, kind=action.kind,
                   target=action.target)


def private_actions(database: str, conn=None) -> tuple[Action, ...]:
    """The actions of taking a private connection to a closed database (see ``private_session``)."""
    from rollbacklib.postgres import database as db

    return tuple(Action("sql", database, s.as_string(conn)) for s in db.private_connection_statements(database))


@contextmanager
def private_session(ctx: RunContext, step: Step, database: str):
    """A connection to ``database`` that no other session can share, from the step's own rendered statements."""
    from rollbacklib.postgres import database as db

    statements = [a.text for a in step.actions if a.kind == "sql" and a.target == database][:3]
    with db.connect(ctx.admin_url, step=step.name) as admin:
        with db.private_connection(admin, ctx.url, database, statements) as conn:
            for text in statements:
                ctx.record(step.name, "changed" if step.destructive else "ran", text, kind="sql", target=database)
            yield conn


# --- the end of a phase -------------------------------------------------------------------------

def finish_phase(ctx: RunContext) -> None:
    """Journal "phase ok" only when every step of this phase in the plan is done (or dry-run skipped)."""
    state = ctx.state()
    plan = ctx.plan()
    names = [s.name for s in plan.for_phase(ctx.phase)] if plan else []
    names += [n for n in state.steps if n not in names and _phase_of(ctx, n) == ctx.phase]
    not_done = {n: (state.steps[n].status if n in state.steps else "not run") for n in names
                if n not in state.steps or state.steps[n].status not in ("ok", "skipped")}
    if not_done:
        ctx.record("phase", "info", f"{ctx.phase} not finished: " + ", ".join(f"{n} {s}" for n, s in not_done.items()),
                   not_done=not_done)
        refused = any(s == "refused" for s in not_done.values())
        error = (RefusedError if refused else StepError)(
            f"{ctx.phase} is not finished: " + ", ".join(f"{n} ({s})" for n, s in not_done.items()) + ".",
            next_action="follow the message of the first step above that did not pass; do not go on to the next "
            "phase.", step="phase", found=not_done)
        if not refused:
            error.outcome = "failed" if ctx.changes_began() else "aborted"
            error.exit_code = OUTCOME_EXIT[error.outcome]
        raise error
    ctx.record("phase", "ok", f"{ctx.phase} finished")


def _phase_of(ctx: RunContext, step_name: str) -> str | None:
    for event in ctx.journal.events():
        if event["step"] == step_name and event["status"] == "started":
            return event["phase"]
    return None
