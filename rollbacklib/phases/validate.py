"""Phase 03, validate: the database that serves the live name now is the copy that was validated.

The copy was validated against the backup in phase 02 (``rollbacklib.validation``), closed for
good, and put live inside the outage window only once its identity held
(``rollbacklib.phases.window``). Here, with production serving again, the result is checked
from the catalog and one small read of the live database, never a table scan: the live name
holds the copy (by oid), the original is kept and closed, the live database's settings,
grants, locale and comment are the pre-rollback ones, and the migration is not applied.
"""

from __future__ import annotations

import pandas as pd

from rollbacklib.checks import Check, as_frame, compare, describe_failures, failed
from rollbacklib.dispatch import checked_before, dispatch
from rollbacklib.errors import ValidationFailed
from rollbacklib.journal import read_events
from rollbacklib.live import kept_name
from rollbacklib.phases.window import way_back_now
from rollbacklib.postgres import database as db
from rollbacklib.postgres import properties as dbp
from rollbacklib.steps import Action, Phase, Step, StepName

PHASE = Phase.VALIDATE
# The one read of a table this phase makes (the plan shows it as it runs): is the migration still applied?
APPLIED = "SELECT count(*) FROM _prisma_migrations WHERE migration_name = %s AND rolled_back_at IS NULL"


def plan_steps(ctx) -> list[Step]:
    live, kept = ctx.database, kept_name(ctx.database, ctx.run_id)
    return [Step(StepName.VALIDATION, PHASE, live,
                 f"{live} is the validated copy (by oid), {kept} the original, closed; the live database's settings, "
                 "grants, locale and comment are the pre-rollback ones; the migration is not applied",
                 (Action("read", live, "pg_database, pg_shdescription for both oids; the live database's settings "
                         f"and grants; {APPLIED.replace('%s', repr(ctx.migration_id))}"),),
                 requires=(StepName.HEALTH,), postcondition="every check passes")]


def validate_restored(ctx) -> pd.DataFrame:
    """The database serving the live name, checked against what was validated, with the checks it passed in 02."""
    return dispatch(ctx, StepName.VALIDATION, _validate, postcondition=checked_before)


def _validate(ctx, step: Step) -> pd.DataFrame:
    checks = _live_checks(ctx, step)
    earlier = _checks_at_validate_copy(ctx)
    passed = not failed(checks) and not failed(earlier)
    ctx.record(step.name, "info", "passed" if passed else "FAILED", passed=passed,
               checks=[c.to_dict() for c in earlier + checks], expected_from="validate-copy and the catalog",
               sample_lost=None)
    if not passed:
        raise ValidationFailed(
            f"The database serving {ctx.database} is not what was validated:\n{describe_failures(earlier + checks)}",
            next_action=f"escalate to L3; the original is kept as {kept_name(ctx.database, ctx.run_id)} (closed): "
            "a person decides whether to put it back. " + way_back_now(ctx),
            escalate="L3")
    return as_frame(earlier + checks)


def _live_checks(ctx, step: Step) -> list[Check]:
    now = ctx.live()
    copy, original, live = now.the_copy, now.original, now.named(ctx.database)
    kept = kept_name(ctx.database, ctx.run_id)
    checks = [
        Check(f"{ctx.database} is the validated copy (by oid)", bool(copy and live and copy.oid == live.oid
                                                                     and now.copy_validated),
              copy.oid if copy else None, live.oid if live else None),
        compare(f"the original is kept as {kept}, closed", {"name": kept, "closed": True},
                {"name": original.name, "closed": original.closed} if original else None),
    ]
    if live is None:
        return checks
    state = ctx.state()
    with db.connect(ctx.admin_url, step=step.name) as admin:
        if state.live_properties:
            checks.append(compare("database settings, grants, locale and comment equal pre-rollback",
                                  dbp.comparable(state.live_properties),
                                  dbp.comparable(dbp.read_properties(admin, ctx.database))))
    with db.connect(ctx.url, step=step.name) as conn:
        applied = conn.execute(APPLIED, (ctx.migration_id,)).fetchone()[0]
    checks.append(compare(f"{ctx.migration_id} is not applied on the live database", 0, applied))
    return checks


def _checks_at_validate_copy(ctx) -> list[Check]:
    event = next((e for e in reversed(read_events(ctx.run_dir)) if e["step"] == StepName.VALIDATE_COPY
                  and e["status"] == "info" and "checks" in e["evidence"]), None)
    if event is None:
        return [Check("the copy's checks at validate-copy are in the journal", False, "an event", None)]
    return [Check(**{**c, "detail": ((c.get("detail") or "") + " (checked at validate-copy, before the copy was "
                                      "closed)").strip()}) for c in event["evidence"]["checks"]]
