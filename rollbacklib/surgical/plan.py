"""Phase 01 of the surgical strategy: compare the live schema with the backup's, and render the steps.

``compare`` (no run needed: URLs, backup, client tools) reads the backup's schema from a scratch
database, the live one from its catalog, and computes the ``Reversal``, the bookkeeping, the side
restore's commands, the backfill's statements and the fingerprint queries: one ``SurgicalPlan``,
written to the run folder as ``surgical.json``. ``plan_steps`` renders it into ``Step``s whose
actions are those exact statements; each step also names ``surgical.json``'s sha256, so the plan's
digest, which the gate approves, binds every statement the executors run.

Integration (for ``phases/prepare.py:build_plan``): run ``execute.compare_schemas(ctx)`` as a
phase-01 cell before the plan, then ``steps += plan_steps(ctx, admin)`` in place of the swap's
steps. With ``surgical.services = "drain"``, put the platform's stop step before
``surgical-reverse-ddl`` and its start step after ``surgical-bookkeeping`` (``with_services``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from psycopg import sql

from rollbacklib.errors import RefusedError
from rollbacklib.files import atomic_write_json
from rollbacklib.postgres import database as db
from rollbacklib.postgres.client import ClientTools
from rollbacklib.steps import Action, Phase, Step, StepName
from rollbacklib.surgical import apply, backfill, bookkeeping, side, verify
from rollbacklib.surgical.catalog import read_schema
from rollbacklib.surgical.reverse import Change, Reversal, reverse

SURGICAL_FILE = "surgical.json"


@dataclass
class SurgicalPlan:
    migration_id: str
    database: str
    backup: str
    side: str
    reversal: Reversal
    bookkeeping: list[dict] = field(default_factory=list)
    side_commands: list[list[str]] = field(default_factory=list)
    backfill_sql: dict[str, dict[str, str]] = field(default_factory=dict)
    verify_sql: dict[str, dict[str, str]] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)  # table -> query over key and kept columns
    backup_columns: dict[str, dict[str, str]] = field(default_factory=dict)  # affected table -> column -> type
    measured: dict = field(default_factory=dict)
    intended: list[dict] | str | None = None  # the migration's changes, each applied or not (``compare``)
    discards: list[dict] = field(default_factory=list)  # what the reversal changes of what was written since
    settings: dict = field(default_factory=dict)  # the environment's surgical settings in phase 01: what runs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SurgicalPlan":
        return cls(**{**data, "reversal": Reversal.from_dict(data["reversal"])})

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def tables(self) -> list[tuple[str, str]]:
        return sorted({(b.schema, b.table) for b in self.reversal.backfills})


def compare(url: str, admin_url: str, backup: Path, tools: ClientTools, run_id: str, migration_id: str,
            step: str = StepName.SURGICAL_SCHEMA, migration_sql: Path | None = None) -> SurgicalPlan:
    """Everything the surgical steps will run, computed from the backup's schema and the live database now.

    With ``migration_sql`` (the migration's ``migration.sql``), ``intended`` says, change by change,
    whether the live database has what the migration meant to do: all of it, part (a migration that
    failed part way) or none, and what the live database has that the migration does not explain.
    """
    with db.connect(url, step=step) as live:
        database = db.server_info(live)["database"]
        with db.connect(admin_url, step=step) as admin:
            backup_schema, intended, seconds = side.read_backup_schema(
                admin, url, backup, side.scratch_name(database, run_id), tools, step, migration_sql)
        live_schema = read_schema(live)
        reversal = reverse(backup_schema, live_schema, live)
        _nulls_that_block(live, reversal)
        discards = _cast_losses(live, reversal)
        plan = SurgicalPlan(migration_id, database, str(backup), side.side_name(database, run_id), reversal,
                            measured={"backup_schema_read_seconds": round(seconds, 3),
                                      "backup_bytes": _size(backup)})
        plan.intended = _against_intended(reversal, intended, backup_schema, live)
        plan.discards = discards
        plan.bookkeeping = bookkeeping.plan(live, migration_id)
        plan.side_commands = side.side_commands(backup, plan.side, plan.tables, tools)
        plan.backfill_sql = {b.qualified: backfill.statements(b, live) for b in reversal.backfills}
        plan.verify_sql = {b.qualified: verify.statements(b, live) for b in reversal.backfills}
        for s, t in [tuple(x) for x in reversal.altered]:
            old = backup_schema.tables[(s, t)]
            kept = reversal.kept_columns.get(old.qualified, {})
            plan.fingerprints[old.qualified] = apply.fingerprint_query(s, t, list(old.key), kept, live)
        for b in reversal.backfills:
            old = backup_schema.tables[(b.schema, b.table)]
            plan.backup_columns[b.qualified] = {c.name: c.type for c in old.columns.values()}
    return plan


def _against_intended(reversal: Reversal, intended, backup_schema, conn) -> list[dict] | str | None:
    """Each change the migration meant (backup -> intended), ``applied`` or not in the live database; then each live
    change the migration does not explain (``not in the migration``)."""
    if intended is None or isinstance(intended, str):
        return intended
    meant = [(c.kind, c.object) for c in reverse(backup_schema, intended, conn).changes]
    live = {(c.kind, c.object) for c in reversal.changes}
    rows = [{"kind": k, "object": o, "live": "applied" if (k, o) in live else "not applied"} for k, o in meant]
    return rows + [{"kind": k, "object": o, "live": "not in the migration"} for k, o in sorted(live - set(meant))]


def intended_frame(plan: "SurgicalPlan") -> pd.DataFrame:
    """The migration's intended changes against the live database (phase 01 shows it)."""
    if not isinstance(plan.intended, list):
        return pd.DataFrame([{"kind": "-", "object": "-", "live": plan.intended or "no migration.sql given"}])
    return pd.DataFrame(plan.intended, columns=["kind", "object", "live"])


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size


def _nulls_that_block(live, reversal: Reversal) -> None:
    """A NOT NULL the migration dropped cannot come back while rows written since hold NULL: irreversible."""
    for change in list(reversal.changes):
        if change.kind != "not-null-dropped":
            continue
        nsp, table, column = change.object.split(".", 2)
        nulls = live.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(
            sql.Identifier(nsp, table), sql.Identifier(column))).fetchone()[0]
        if nulls:
            change.action = "irreversible"
            change.detail = (f"{nulls} row(s) written since hold NULL in {change.object}, which the backup's schema "
                             "forbids: give them a value (or restore instead)")


def _cast_losses(live, reversal: Reversal) -> list[dict]:
    """What the reversal will discard, counted now: the rows whose value a type changed back cannot hold exactly
    (cast to the backup's type and back, it is another value). Everything else written since is kept as is."""
    out = []
    for change in reversal.changes:
        if change.kind != "type-changed":
            continue
        nsp, table, column = change.object.split(".", 2)
        col = sql.Identifier(column)
        query = sql.SQL("SELECT count(*) FROM {t} WHERE {c}::{old}::{new} IS DISTINCT FROM {c}").format(
            t=sql.Identifier(nsp, table), c=col, old=sql.SQL(change.backup), new=sql.SQL(change.live))
        out.append({"column": change.object, "from": change.live, "to": change.backup,
                    "rows": live.execute(query).fetchone()[0], "sql": query.as_string(live)})
    return out


def refuse_irreversible(plan: SurgicalPlan) -> None:
    """The plan stops at the first thing it cannot undo: a RefusedError naming every such change."""
    bad = plan.reversal.irreversible
    if bad:
        raise RefusedError(
            "The surgical reversal cannot undo: " + "; ".join(f"{c.kind} {c.object} ({c.detail})" for c in bad)
            + ". Nothing was changed.",
            next_action="choose the swap strategy (a full restore, which discards the writes made since the "
            "backup), or undo those changes by hand and run 01_prepare again.", step=StepName.SURGICAL_SCHEMA,
            found=[asdict(c) for c in bad], escalate="L2")


def changes_frame(plan: SurgicalPlan) -> pd.DataFrame:
    rows = [asdict(c) for c in plan.reversal.changes] or [asdict(Change("none", "-", "-", "the schemas match"))]
    return pd.DataFrame(rows, columns=["kind", "object", "action", "detail", "backup", "live"])


def write(run_dir: Path, plan: SurgicalPlan) -> Path:
    return atomic_write_json(Path(run_dir) / SURGICAL_FILE, plan.to_dict())


def read(run_dir: Path, step: str = StepName.SURGICAL_SCHEMA) -> SurgicalPlan:
    path = Path(run_dir) / SURGICAL_FILE
    if not path.exists():
        raise RefusedError(f"{path} is missing.", next_action="run the surgical-compare-schema cell of 01_prepare.",
                           step=step)
    return SurgicalPlan.from_dict(json.loads(path.read_text()))


# --- the steps ------------------------------------------------------------------------------------

def _bound(plan: SurgicalPlan) -> Action:
    return Action("file", SURGICAL_FILE, f"{SURGICAL_FILE} sha256 {plan.digest}")


def _sql(target: str, texts) -> tuple[Action, ...]:
    return tuple(Action("sql", target, t) for t in texts)


def ddl_statements(plan: SurgicalPlan, statements: list[str], timeout: float, conn=None) -> list[str]:
    lock = apply.lock_statement(plan.reversal.altered, conn)
    return [apply.lock_timeout_statement(timeout), *([lock] if lock else []), *statements]


def plan_steps(plan: SurgicalPlan, *, live: str, admin_conn=None) -> list[Step]:
    """The surgical steps of phases 02, 03 and 05, every statement rendered from ``plan`` (and its ``settings``)."""
    lock_timeout_seconds, attempts = plan.settings["lock_timeout_seconds"], plan.settings["attempts"]
    batch_rows = plan.settings["batch_rows"]
    r, bound, gate = plan.reversal, _bound(plan), (StepName.GATE,)
    no_loss = "restore instead (swap strategy): the backup is untouched"
    steps = [Step(StepName.SURGICAL_SIDE, Phase.EXECUTE, plan.side,
                  f"restore only {', '.join(f'{s}.{t}' for s, t in plan.tables) or 'no table'} from the backup into "
                  f"the side database {plan.side} (the live database is not copied)"
                  + (" — a plain dump is read whole to find them" if side.is_plain(Path(plan.backup)) else ""),
                  (bound,) + tuple(Action("sql", plan.side, s.as_string(admin_conn)) for s in
                                   side.drop_statements(plan.side) + side.create_statements(plan.side))
                  + tuple(Action("command", plan.side, side.shown(a), tuple(a)) for a in plan.side_commands),
                  postcondition=f"{plan.side} holds the backup's rows of the affected tables",
                  undo=tuple(s.as_string(admin_conn) for s in side.drop_statements(plan.side)))]
    steps.append(Step(StepName.SURGICAL_DDL, Phase.EXECUTE, live,
                      f"the reverse DDL, in ONE transaction (lock_timeout {lock_timeout_seconds:g} s, up to "
                      f"{attempts} attempts): " + "; ".join(f"{c.kind} {c.object}" for c in r.changes
                                                          if c.action == "reverse") ,
                      (bound,) + _sql(live, ddl_statements(plan, r.ddl, lock_timeout_seconds, admin_conn))
                      + tuple(Action("read", live, q) for q in plan.fingerprints.values()),
                      destructive=True, requires=gate + (StepName.SURGICAL_SIDE,),
                      precondition="the live schema is still the one compared in phase 01",
                      postcondition="every column of the backup is back in the live tables, with the backup's type",
                      undo=(no_loss,)))
    steps.append(Step(StepName.SURGICAL_BACKFILL, Phase.EXECUTE, live,
                      f"bring the dropped values back by primary key, {batch_rows} rows per batch, from {plan.side}; "
                      "rows written since keep theirs, rows deleted since stay deleted",
                      (bound,) + tuple(Action("sql", plan.side if name == "copy_out" else live, text)
                                       for texts in plan.backfill_sql.values() for name, text in texts.items()),
                      destructive=True, requires=gate + (StepName.SURGICAL_DDL,),
                      postcondition="every backup row still in the live table has its values back", undo=(no_loss,)))
    if r.after_data:
        steps.append(Step(StepName.SURGICAL_AFTER_DATA, Phase.EXECUTE, live,
                          "what needs the data first, in one more transaction: NOT NULLs, constraints, indexes",
                          (bound,) + _sql(live, ddl_statements(plan, r.after_data, lock_timeout_seconds, admin_conn)),
                          destructive=True, requires=gate + (StepName.SURGICAL_BACKFILL,), undo=(no_loss,)))
    steps.append(Step(StepName.SURGICAL_BOOKKEEPING, Phase.EXECUTE, live,
                      f"_prisma_migrations as Prisma expects with {plan.migration_id} gone: "
                      + (", ".join(f"{b['do']} {b['id']}" for b in plan.bookkeeping) or "nothing to change")
                      + "; every other row byte-identical",
                      (bound,) + _sql(live, [b["sql"] for b in plan.bookkeeping]), destructive=True,
                      requires=gate + ((StepName.SURGICAL_AFTER_DATA,) if r.after_data else (StepName.SURGICAL_BACKFILL,)),
                      postcondition=f"{plan.migration_id} is not applied (absent or rolled back)"))
    steps.append(Step(StepName.SURGICAL_VERIFY, Phase.VALIDATE, live,
                      "each table: rows matched, values restored (hash against the side copy), nothing lost",
                      (bound,) + tuple(Action("read", plan.side if name == "copy_out" else live, text)
                                       for texts in plan.verify_sql.values() for name, text in texts.items())
                      + tuple(Action("read", live, q) for q in plan.fingerprints.values()),
                      requires=(StepName.SURGICAL_BOOKKEEPING,)))
    steps.append(Step(StepName.SURGICAL_DROP_SIDE, Phase.CLOSE, plan.side,
                      f"drop the side database {plan.side} (a copy of backup rows; the backup stays)",
                      _sql(plan.side, [s.as_string(admin_conn) for s in side.drop_statements(plan.side)]),
                      requires=(StepName.SURGICAL_VERIFY,)))
    return steps


def with_services(steps: list[Step], stop: Step, start: Step) -> list[Step]:
    """``steps`` with the platform's ``stop`` before the reverse DDL and its ``start`` after the bookkeeping."""
    out = []
    for step in steps:
        if step.name == StepName.SURGICAL_DDL:
            out.append(stop)
        out.append(step)
        if step.name == StepName.SURGICAL_BOOKKEEPING:
            out.append(start)
    return out
