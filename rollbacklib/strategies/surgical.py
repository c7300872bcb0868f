"""Strategy ``surgical``: bring back what the migration destroyed, keep everything written since.

Judged in phase 01 by computing the reversal itself (``rollbacklib.surgical``: the backup's schema
read into a scratch database, compared with the live one, the reverse DDL, backfill and checks
rendered into ``surgical.json``). It applies when every change can be undone; what it discards is
what that reversal cannot keep (values a type changed back cannot hold), counted from the live
database. Its steps: the gate, the services stopped when ``surgical.services = "drain"``, the side
restore of the affected tables, the reverse DDL, the backfill, what needs the data first, the
bookkeeping (02), the verification (03), the services back with their health and smoke tests (04),
the side database dropped and the close (05).
"""

from __future__ import annotations

from dataclasses import replace

from rollbacklib.errors import RollbackError
from rollbacklib.steps import Action, Phase, Step, StepName
from rollbacklib.strategies import Assessment


def _executors() -> dict:
    from rollbacklib.phases import execute
    from rollbacklib.surgical import execute as run

    return {StepName.STOP_SERVICES: execute.stop_services_step, StepName.SURGICAL_SIDE: run.restore_side,
            StepName.SURGICAL_DDL: run.reverse_ddl, StepName.SURGICAL_BACKFILL: run.backfill_values,
            StepName.SURGICAL_AFTER_DATA: run.after_data_ddl, StepName.SURGICAL_BOOKKEEPING: run.fix_bookkeeping,
            StepName.SURGICAL_VERIFY: run.verify_tables, StepName.SURGICAL_DROP_SIDE: run.drop_side}


class Surgical:
    name = "surgical"
    costly = True  # assessing it reads the backup's schema into a scratch database: only when asked or auto
    summary = "reverse the migration's schema change and bring the dropped values back; keep every later write"

    @property
    def executors(self) -> dict:
        return _executors()

    def assess(self, ctx, situation) -> Assessment:
        common = dict(seconds_lost=0.0, estimate_basis="the reversal's own steps (affected tables only)")
        if situation.state in ("absent", "rolled-back"):
            return Assessment(self.name, False, f"{situation.migration_id} is {situation.state}: nothing to reverse",
                              "nothing", **common)
        if situation.state == "failed" and situation.schema_equal:
            return Assessment(self.name, False, "the schema is the backup's: there is no change to reverse "
                              "(resolve-only marks the migration rolled back)", "nothing", **common)
        from rollbacklib.surgical import execute as run

        try:
            plan = run.compute(ctx)  # refused when a change cannot be reversed
        except RollbackError as err:
            return Assessment(self.name, False, str(err).splitlines()[0], "not computed", **common)
        discarded = sum(d["rows"] for d in plan.discards)
        tables = ", ".join(f"{s}.{t}" for s, t in plan.tables) or "no table"
        part = ""
        if situation.partly_applied:
            applied = [e for e in situation.effects if e["status"].startswith("applied")]
            part = (f"{situation.migration_id} failed part way ({len(applied)} of {len(situation.effects)} changes "
                    "of its migration.sql applied); ")
        return Assessment(self.name, True, part + f"every change of {situation.migration_id} can be reversed in place "
                          f"({len(plan.reversal.changes)} change(s); affected tables: {tables})",
                          f"{discarded} row value(s) a changed-back type cannot hold; every row written since is kept",
                          rows_lost=0, updates_lost=discarded, estimate_seconds=None,
                          detail={"tables": tables, "discards": plan.discards}, **common)

    def plan_steps(self, ctx, admin, facts) -> list[Step]:
        from rollbacklib.phases import close, execute, restore_service
        from rollbacklib.surgical import execute as run

        live = ctx.database
        surgical = run.plan_steps(ctx, admin)
        drain = ctx.env.surgical.services == "drain"
        gate = Step(StepName.GATE, Phase.EXECUTE, live, "approve this plan: reverse the migration in place",
                    (Action("prompt", live, f"approve plan (its digest is in plan.json) to reverse {ctx.migration_id} "
                            "in the live database"),), postcondition="an approval of this plan's digest is journaled")
        stop = [s for s in execute.plan_steps(ctx, facts, admin) if s.name == StepName.STOP_SERVICES] if drain else []
        later = restore_service.plan_steps(ctx)
        if drain:
            later = [replace(s, requires=(StepName.SURGICAL_VERIFY,)) if s.name == StepName.START_SERVICES else s
                     for s in later]
        else:  # the services stayed up: nothing to start, their health and smoke tests still run
            later = [replace(s, requires=(StepName.SURGICAL_VERIFY,)) if StepName.START_SERVICES in s.requires else s
                     for s in later if s.name != StepName.START_SERVICES]
        (closing,) = close.plan_steps(ctx)
        return [gate, *stop, *surgical, *later, replace(closing, requires=(StepName.SURGICAL_VERIFY,))]


STRATEGY = Surgical()
