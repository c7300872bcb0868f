"""Phase 03, validate: the copy recognised without connecting to it, the rows the restore discarded, the promote.

The copy was validated against the backup in phase 02 (``rollbacklib.validation``) and closed
for good; here its identity is read from the maintenance database (``rollbacklib.live``), the
kept database is compared with the copy's row hashes, and the copy goes live
(``rollbacklib.phases.swap``).
"""

from __future__ import annotations

import pandas as pd

from rollbacklib.checks import Check, as_frame, compare, describe_failures, failed
from rollbacklib.dispatch import checked_before, dispatch, private_actions, private_session
from rollbacklib.errors import ValidationFailed
from rollbacklib.live import kept_name, restored_name
from rollbacklib.postgres import database as db
from rollbacklib.postgres import properties as dbp
from rollbacklib.steps import Action, Phase, Step, StepName

PHASE = Phase.VALIDATE


# --- phase 03 ---------------------------------------------------------------------------------

def plan_steps(ctx, admin=None, live_comment: str | None = None) -> list[Step]:
    from rollbacklib.phases.swap import promote_step

    copy = restored_name(ctx.database, ctx.run_id)
    return [Step(StepName.VALIDATION, PHASE, copy,
                 "the copy (closed since its validation, never reopened) recognised from the maintenance database: "
                 "oid, marker, no session since closed; its settings and grants against the live database's",
                 (Action("read", copy, "pg_database, pg_shdescription, pg_stat_database, pg_stat_activity for the "
                         "copy's oid; its settings and grants"),),
                 requires=(StepName.SWAP_KEEP,), postcondition="every check passes"),
            compare_rows_step(ctx, admin), promote_step(ctx, admin, live_comment)]


# --- the copy, recognised without connecting to it ------------------------------------------------

def validate_restored(ctx) -> pd.DataFrame:
    """The copy's identity and properties (read from the catalog), with the checks its validation passed in 02."""
    return dispatch(ctx, StepName.VALIDATION, _validate, postcondition=checked_before)


def _validate(ctx, step: Step) -> pd.DataFrame:
    from rollbacklib.phases.swap import copy_identity_check

    state = ctx.state()
    checks = copy_identity_check(ctx)
    copy = ctx.live().the_copy
    if state.live_properties and copy is not None:
        with db.connect(ctx.admin_url, step=step.name) as admin:
            found = dbp.comparable(dbp.read_properties(admin, copy.name))
        want = {k: v for k, v in dbp.comparable(state.live_properties).items() if k != "comment"}
        checks.append(compare("database settings, grants and locale equal pre-rollback", want,
                              {k: v for k, v in found.items() if k != "comment"},
                              "the comment is given back at the promote"))
    earlier = _checks_at_validate_copy(ctx)
    passed = not failed(checks) and not failed(earlier)
    ctx.record(step.name, "info", "passed" if passed else "FAILED", passed=passed,
               checks=[c.to_dict() for c in earlier + checks], expected_from="validate-copy and the catalog",
               sample_lost=None)
    if not passed:
        raise ValidationFailed(
            f"The restored copy is not the one that was validated, or is not what the backup holds (it was not put "
            f"live):\n{describe_failures(earlier + checks)}",
            next_action="keep connections closed; find out who changed the copy. " + way_back_now(ctx),
            escalate="L3")
    return as_frame(earlier + checks)


def _checks_at_validate_copy(ctx) -> list[Check]:
    from rollbacklib.journal import read_events

    event = next((e for e in reversed(read_events(ctx.run_dir)) if e["step"] == StepName.VALIDATE_COPY
                  and e["status"] == "info" and "checks" in e["evidence"]), None)
    if event is None:
        return [Check("the copy's checks at validate-copy are in the journal", False, "an event", None)]
    return [Check(**{**c, "detail": ((c.get("detail") or "") + " (checked at validate-copy, before the copy was "
                                      "closed)").strip()}) for c in event["evidence"]["checks"]]


def way_back_now(ctx) -> str:
    from rollbacklib.live import describe_way_back

    return describe_way_back(ctx.live().way_back(ctx.previous_settings()), ctx.env.maintenance_database)


# --- the rows the restore discarded -------------------------------------------------------------

def compare_rows_step(ctx, admin=None) -> Step:
    """The kept database against the copy's row hashes, taken at its validation.

    The kept database keeps ``CONNECTION LIMIT 0`` throughout and is closed again the instant
    the runbook has connected; the copy is not read at all (it was hashed before it was
    closed). Its time adds to the downtime.
    """
    copy, kept = restored_name(ctx.database, ctx.run_id), kept_name(ctx.database, ctx.run_id)
    return Step(StepName.COMPARE_ROWS, PHASE, kept,
                "the rows the restore discarded: the kept pre-rollback database against the copy's row hashes, by key",
                private_actions(kept, admin) + (
                    Action("read", kept, "per table: SELECT key, md5(row) ORDER BY key through a cursor, merged with "
                           f"the hashes of {copy} taken at validate-copy: keys only in the kept database (inserted), "
                           "only in the copy (deleted), in both with different rows (updated)"),),
                destructive=True, requires=(StepName.VALIDATION,),
                postcondition=f"{kept} is closed again (ALLOW_CONNECTIONS false, CONNECTION LIMIT 0)",
                undo=(db.private_connection_statements(kept)[1].as_string(admin),))


def _kept_closed(ctx, step: Step) -> Check:
    original = ctx.live().original
    found = {"allow_connections": original.allow_connections, "connection_limit": original.connection_limit} \
        if original else None
    return compare("the kept database is closed again", {"allow_connections": False, "connection_limit": 0}, found)


def _measured_and_unchanged(ctx, step: Step) -> Check:
    """Closed, and no session on the kept database since it was measured: a way back in between means measure again."""
    from rollbacklib.journal import read_events

    closed = _kept_closed(ctx, step)
    measured = next((e["evidence"].get("kept_sessions") for e in reversed(read_events(ctx.run_dir))
                     if e["step"] == StepName.COMPARE_ROWS and e["status"] == "info" and "kept_sessions" in e["evidence"]),
                    None)
    original = ctx.live().original
    found = original.sessions_ever if original else None
    if not closed.passed:
        return closed
    return compare("the kept database is closed and had no session since it was measured", measured, found)


def compare_rows(ctx) -> pd.DataFrame:
    """Rows inserted, updated or deleted after the backup that the restore discarded, per table (RPO in rows)."""
    return dispatch(ctx, StepName.COMPARE_ROWS, _compare_rows, postcondition=_measured_and_unchanged)


def _compare_rows(ctx, step: Step) -> pd.DataFrame:
    """A comparison that cannot be made (whatever the reason) is journaled as not measured, with the reason,
    and does not hold the service down: what must hold is the postcondition, the kept database closed."""
    from rollbacklib.postgres import rowdiff

    swap = ctx.state().need("swap", "swap_keep_live (02_execute)")
    copy = restored_name(ctx.database, ctx.run_id)
    try:
        with private_session(ctx, step, swap.kept) as kept:
            lost = rowdiff.diff_against_snapshot(kept, ctx.run_dir / rowdiff.SNAPSHOT_FOLDER)
    except Exception as err:  # noqa: BLE001 - a measurement; the postcondition guards the databases
        failure = f"{type(err).__name__}: " + (getattr(err, "message", None) or str(err)).splitlines()[0]
        ctx.record(step.name, "info", f"rows lost not measured: {failure}", rows_lost=None, kept=swap.kept,
                   kept_sessions=_kept_sessions(ctx, swap.kept))
        return pd.DataFrame([{"rows lost": f"not measured: {failure}"}])
    ctx.record(step.name, "info", f"{lost['total']} row(s) written after the backup were discarded by the restore",
               rows_lost=lost, kept=swap.kept, restored=copy, kept_sessions=_kept_sessions(ctx, swap.kept))
    return pd.DataFrame([{"table": t, "key": ", ".join(d["key"]), "inserted": d["inserted"], "updated": d["updated"],
                          "deleted": d["deleted"], "lost": d["lost"], "note": d["note"]}
                         for t, d in lost["tables"].items()])


def _kept_sessions(ctx, kept: str) -> int | None:
    from rollbacklib.live import settled_session_count

    with db.connect(ctx.admin_url, step=StepName.COMPARE_ROWS) as admin:
        return settled_session_count(admin, kept)
