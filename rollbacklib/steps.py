"""The step model: every step of every phase is data before it is action.

A ``Step`` names its phase and target, the exact statements, commands or calls it will make
(its ``actions``, rendered once), whether it changes the live system (``destructive``), what
must hold before it runs (the steps it ``requires``, and an approval of the plan when it is
destructive), what holds after it (its postcondition, checked against the live system) and
how to undo it. The plan of a run is the list of its steps; ``plan.json`` holds it with the
sha256 of its canonical form, and the gate binds its approval to that digest.

``dispatch`` is the only way a step runs: precondition, journal, execute, postcondition.
The dry run, ``plan.json``, the notebooks' plan table and the terminal print the same
``Step`` objects that ``dispatch`` executes, so what was shown is what runs.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from rollbacklib.checks import Check
from rollbacklib.errors import (OUTCOME_EXIT, ConfigError, RefusedError, RollbackError, StepError)
from rollbacklib.files import atomic_write_json

if TYPE_CHECKING:  # pragma: no cover
    from rollbacklib.run import RunContext

PLAN_NAME = "plan.json"
T = TypeVar("T")


class Phase(StrEnum):
    PREPARE = "01_prepare"
    EXECUTE = "02_execute"
    VALIDATE = "03_validate"
    RESTORE_SERVICE = "04_restore_service"
    CLOSE = "05_close"


PHASES = tuple(p.value for p in Phase)


class StepName(StrEnum):
    """Every step's name, once: the journal, the state, the summary and the tests use these."""

    MIGRATION = "migration"
    RELEASE = "release"
    VERIFY_BACKUP = "verify-backup"
    MIGRATION_STATE = "migration-state"
    CAPTURE = "capture"
    PLAN = "plan"
    CREATE_COPY = "create-copy"
    RESTORE = "restore"
    VALIDATE_COPY = "validate-copy"
    CARRY_PROPERTIES = "carry-properties"
    CLOSE_COPY = "close-copy"
    GATE = "gate"
    STOP_SERVICES = "stop-services"
    BLOCK = "block-connections"
    DRAIN = "drain"
    TERMINATE = "terminate"
    SWAP_KEEP = "swap-keep-live"
    SWAP_PROMOTE = "swap-promote-copy"
    BOOKKEEPING = "bookkeeping"
    VALIDATION = "validation"
    COMPARE_ROWS = "compare-rows"
    REOPEN = "reopen-connections"
    HEALTH = "health"
    START_SERVICES = "start-services"
    CLOSE = "close"


@dataclass(frozen=True)
class Action:
    """One thing a step does, exactly as it will be done.

    ``kind`` is ``sql`` (run verbatim), ``command`` (``argv`` run verbatim, ``text`` its shell
    form), ``read`` (reads only), ``wait``, ``prompt``, ``platform`` (a service platform call,
    or a person's task when no platform is configured) or ``file`` (written in the run folder).
    """

    kind: str
    target: str
    text: str
    argv: tuple[str, ...] | None = None

    @property
    def executes(self) -> bool:
        """Does this action send a statement or start a program (what the dry run must show verbatim)?"""
        return self.kind in ("sql", "command")


@dataclass(frozen=True)
class Step:
    name: str
    phase: str
    target: str
    summary: str
    actions: tuple[Action, ...] = ()
    destructive: bool = False
    requires: tuple[str, ...] = ()
    precondition: str = ""
    postcondition: str = ""
    undo: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        data = asdict(self)
        data["actions"] = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in a.items()} for a in data["actions"]]
        data["requires"], data["undo"] = list(self.requires), list(self.undo)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Step":
        actions = tuple(Action(a["kind"], a["target"], a["text"], tuple(a["argv"]) if a.get("argv") else None)
                        for a in data["actions"])
        return cls(**{**data, "actions": actions, "requires": tuple(data["requires"]), "undo": tuple(data["undo"])})


def canonical(steps: list[Step]) -> bytes:
    return json.dumps([s.to_dict() for s in steps], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


@dataclass
class Plan:
    steps: list[Step]
    digest: str = field(init=False)

    def __post_init__(self):
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names repeat in the plan: {names}")
        self.digest = hashlib.sha256(canonical(self.steps)).hexdigest()

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise StepError(f"The plan of this run has no step {name!r}.",
                        next_action="run 01_prepare again for this run to write its plan.", step=name)

    def for_phase(self, phase: str) -> list[Step]:
        return [s for s in self.steps if s.phase == phase]

    def statements(self) -> list[str]:
        """Every statement and command line the plan will execute, in order."""
        return [a.text for s in self.steps for a in s.actions if a.executes]

    def to_dict(self) -> dict:
        return {"digest": self.digest, "steps": [s.to_dict() for s in self.steps]}


def write_plan(run_dir: Path, plan: Plan) -> Path:
    return atomic_write_json(Path(run_dir) / PLAN_NAME, plan.to_dict())


def read_plan(run_dir: Path) -> Plan | None:
    """The run's plan; StepError if ``plan.json`` no longer matches the digest written in it."""
    path = Path(run_dir) / PLAN_NAME
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    plan = Plan([Step.from_dict(s) for s in data["steps"]])
    if plan.digest != data.get("digest"):
        raise RefusedError(f"{path} was changed after it was written (its steps no longer match its digest).",
                           next_action="run 01_prepare again to write a new plan, then approve that one.",
                           step=StepName.PLAN, expected=data.get("digest"), found=plan.digest)
    return plan


def plan_frame(steps: list[Step]):
    """The steps as a table, one row per action: what the notebooks show."""
    import pandas as pd

    rows = []
    for s in steps:
        for i, a in enumerate(s.actions or (Action("-", s.target, "(nothing to execute)"),)):
            rows.append({"phase": s.phase if i == 0 else "", "step": s.name if i == 0 else "",
                         "destructive": ("yes" if s.destructive else "") if i == 0 else "", "kind": a.kind,
                         "target": a.target, "action": a.text, "undo": "; ".join(s.undo) if i == 0 else ""})
    return pd.DataFrame(rows)


# --- the dispatcher ---------------------------------------------------------------------------

def dispatch(ctx: "RunContext", step: Step, execute: Callable[["RunContext", Step], T], *,
             postcondition: Callable[["RunContext", Step], Check] | None = None) -> T | None:
    """Run ``step``: check its precondition, journal it, execute it, check its postcondition.

    Under a dry run, steps after phase 01 are journaled as ``planned`` (each action verbatim)
    and not executed. A step already done in this run whose postcondition still holds is
    skipped with that evidence. Any error is journaled with the outcome the run has reached:
    ``aborted`` while no change was made, ``failed`` after one (``ConfigError`` and
    ``RefusedError`` keep theirs).
    """
    ctx.record(step.name, "started", step.summary, target=step.target, destructive=step.destructive)
    try:
        if ctx.dry_run and step.phase != Phase.PREPARE:
            for action in step.actions:
                ctx.record(step.name, "planned", action.text, kind=action.kind, target=action.target,
                           destructive=step.destructive)
            ctx.mark_step(step.name, "skipped")
            ctx.record(step.name, "skipped", "dry run: planned above, not executed")
            return None
        check_precondition(ctx, step)
        if ctx.state().done(step.name) and postcondition is not None:
            holds = postcondition(ctx, step)
            if holds.passed:
                ctx.record(step.name, "skipped", f"already done in this run: {holds.name}", evidence=holds.to_dict())
                return None
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
        wrapped = StepError(f"{type(err).__name__}: {err}", next_action="read the traceback in the executed "
                            "notebook; escalate to L1.", step=step.name, escalate="L1")
        _journal_failure(ctx, step, wrapped)
        raise wrapped from err
    ctx.mark_step(step.name, "ok")
    ctx.record(step.name, "ok")
    return result


def checked_before(ctx: "RunContext", step: Step) -> Check:
    """The postcondition of a step that only checks: its own check is the evidence; a re-run need not repeat it."""
    return Check(f"{step.name} passed in this run", True)


def check_precondition(ctx: "RunContext", step: Step) -> None:
    """A destructive step needs a valid approval of this plan; every step needs what it requires done."""
    state = ctx.state()
    if step.destructive:
        approval = state.approval
        if approval is None:
            raise RefusedError(
                f"{step.name} changes {step.target} and this run has no approval: refused, nothing was changed by it.",
                next_action="if the gate was refused, stop here: the live database is as it was. To go on, run "
                "the gate cell again and type the migration ID (or pass approve / --yes), then this cell.",
                step=step.name)
        plan = ctx.plan()
        if plan is None or approval.plan_digest != plan.digest or approval.migration_id != ctx.migration_id:
            raise RefusedError(
                f"{step.name}: the approval was given for plan {approval.plan_digest[:12]}, this run's plan is "
                f"{plan.digest[:12] if plan else 'missing'}: refused.",
                next_action="approve the plan as it is now (run the gate cell again), then this cell.",
                step=step.name, expected=approval.plan_digest, found=plan.digest if plan else None)
    missing = [name for name in step.requires if not state.done(name)]
    if missing:
        raise StepError(f"{step.name} needs {', '.join(missing)} done first in this run.",
                        next_action=f"run the cell(s) for {', '.join(missing)} first; if one failed or was "
                        "refused, follow what its cell says instead.", step=step.name,
                        expected="done", found={n: (state.steps[n].status if n in state.steps else "not run")
                                                for n in missing})


def _journal_failure(ctx: "RunContext", step: Step, err: RollbackError) -> None:
    if err.step is None:
        err.step = step.name
    if "lock timeout" in err.message or "statement timeout" in err.message:  # pg_dump's lock wait is the latter
        _name_what_it_waited_on(ctx, err)
    if not isinstance(err, (ConfigError, RefusedError)):
        err.outcome = "failed" if ctx.changes_began() else "aborted"
        err.exit_code = OUTCOME_EXIT[err.outcome]
    ctx.mark_step(step.name, err.outcome)
    evidence = {k: v for k, v in err.to_dict().items() if k not in ("message", "step")}
    ctx.record(step.name, err.outcome, err.message, **evidence)


def _name_what_it_waited_on(ctx: "RunContext", err: RollbackError) -> None:
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


def execute_actions(ctx: "RunContext", conn, step: Step) -> None:
    """Run a step's SQL actions verbatim on ``conn``, journaling each (``changed`` when destructive)."""
    for action in step.actions:
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
def private_session(ctx: "RunContext", step: Step, database: str):
    """A connection to ``database`` that no other session can share, from the step's own rendered statements."""
    from rollbacklib.postgres import database as db

    statements = [a.text for a in step.actions if a.kind == "sql" and a.target == database][:3]
    with db.connect(ctx.admin_url, step=step.name) as admin:
        with db.private_connection(admin, ctx.url, database, statements) as conn:
            for text in statements:
                ctx.record(step.name, "changed" if step.destructive else "ran", text, kind="sql", target=database)
            yield conn


def finish_phase(ctx: "RunContext") -> None:
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


def _phase_of(ctx: "RunContext", step_name: str) -> str | None:
    for event in ctx.journal.events():
        if event["step"] == step_name and event["status"] == "started":
            return event["phase"]
    return None
