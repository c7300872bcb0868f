"""The step model: every step of every phase is data before it is action.

A ``Step`` names its phase and target, the exact statements, commands or calls it will make
(its ``actions``, rendered once), whether it changes the live system (``destructive``), what
must hold before it runs (the steps it ``requires``, and an approval of the plan when it is
destructive), what holds after it (its postcondition, checked against the live system) and
how to undo it. The plan of a run is the list of its steps; ``plan.json`` holds it with the
sha256 of its canonical form, and the gate binds its approval to that digest.

``rollbacklib.dispatch.dispatch`` is the only way a step runs: precondition, journal, execute, postcondition.
The dry run, ``plan.json``, the notebooks' plan table and the terminal print the same
``Step`` objects that ``dispatch`` executes, so what was shown is what runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from rollbacklib.errors import RefusedError, StepError
from rollbacklib.files import atomic_write_json

PLAN_NAME = "plan.json"


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
    SERVICE_SNAPSHOT = "service-snapshot"
    PLAN = "plan"
    CREATE_COPY = "create-copy"
    RESTORE = "restore"
    ANALYZE_COPY = "analyze-copy"
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
    SEQUENCES = "sequences"
    SALVAGE_PREVIEW = "salvage-preview"
    SALVAGE_CARRY = "salvage-carry"
    SAFETY_COPY = "safety-copy"
    RESTORE_IN_PLACE = "restore-in-place"
    VALIDATE_IN_PLACE = "validate-in-place"
    BOOKKEEPING = "bookkeeping"
    VALIDATION = "validation"
    COMPARE_ROWS = "compare-rows"
    REOPEN = "reopen-connections"
    HEALTH = "health"
    START_SERVICES = "start-services"
    SERVICE_HEALTH = "service-health"
    SMOKE_TESTS = "smoke-tests"
    CLOSE = "close"
    # strategies (rollbacklib/strategies/)
    STRATEGY = "strategy"
    RESOLVE = "resolve-rolled-back"
    RESOLVE_CHECK = "validate-resolved"
    # the surgical strategy (rollbacklib/surgical/)
    SURGICAL_SCHEMA = "surgical-compare-schema"
    SURGICAL_SIDE = "surgical-side-restore"
    SURGICAL_DDL = "surgical-reverse-ddl"
    SURGICAL_BACKFILL = "surgical-backfill"
    SURGICAL_AFTER_DATA = "surgical-after-data-ddl"
    SURGICAL_BOOKKEEPING = "surgical-bookkeeping"
    SURGICAL_VERIFY = "surgical-verify"
    SURGICAL_DROP_SIDE = "surgical-drop-side"
    NOTIFY_INITIATED = "notify-initiated"
    NOTIFY_WINDOW_OPEN = "notify-window-open"
    NOTIFY_WINDOW_CLOSED = "notify-window-closed"
    NOTIFY_COMPLETED = "notify-completed"
    CHECKLISTS = "checklists"
    # dependency probes (rollbacklib/dependencies.py) and the staging check (rollbacklib/phases/staging_check.py)
    DEPENDENCIES = "dependencies"
    DEPENDENCIES_AFTER = "dependencies-after"
    STAGING_CHECK = "staging-check"


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


def sql_actions(conn, target: str, statements) -> tuple[Action, ...]:
    """SQL statements (psycopg ``Composable``) rendered once, as the actions of a step on ``target``."""
    return tuple(Action("sql", target, s.as_string(conn)) for s in statements)


def canonical(steps: list[Step]) -> bytes:
    return json.dumps([s.to_dict() for s in steps], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


@dataclass
class Plan:
    steps: list[Step]
    digest: str = field(init=False)
    # Phase 01's strategy choice, shown with the plan (not part of the digest: the steps are what is approved)
    strategy: dict | None = None

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
        return {"digest": self.digest, "steps": [s.to_dict() for s in self.steps],
                **({"strategy": self.strategy} if self.strategy else {})}


def write_plan(run_dir: Path, plan: Plan) -> Path:
    return atomic_write_json(Path(run_dir) / PLAN_NAME, plan.to_dict())


def read_plan(run_dir: Path) -> Plan | None:
    """The run's plan; StepError if ``plan.json`` no longer matches the digest written in it."""
    path = Path(run_dir) / PLAN_NAME
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    plan = Plan([Step.from_dict(s) for s in data["steps"]], strategy=data.get("strategy"))
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
