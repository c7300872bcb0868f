"""The rows the restore discarded (the RPO in rows), counted after the outage window, in phase 05.

The copy's rows were hashed by key at its validation, before the gate (``rowdiff.snapshot``);
here the kept pre-rollback database, closed since the swap and no longer changing, is hashed
the same way through a private connection and compared with them. Its time grows with the
database, so it runs once production serves again: ``rows_lost`` lands in ``run.json`` when
it is ready, and the report says it is pending until then.
"""

from __future__ import annotations

import pandas as pd

from rollbacklib.checks import Check, compare
from rollbacklib.dispatch import dispatch, private_actions, private_session
from rollbacklib.journal import read_events
from rollbacklib.live import kept_name, restored_name, settled_session_count
from rollbacklib.phases.window import original_blocked
from rollbacklib.postgres import database as db
from rollbacklib.steps import Action, Phase, Step, StepName

PHASE = Phase.CLOSE


def compare_rows_step(ctx, admin=None) -> Step:
    """The kept database against the copy's row hashes, taken at its validation.

    The kept database keeps ``CONNECTION LIMIT 0`` throughout and is closed again the instant
    the runbook has connected; the copy (live by now) is not read at all.
    """
    copy, kept = restored_name(ctx.database, ctx.run_id), kept_name(ctx.database, ctx.run_id)
    return Step(StepName.COMPARE_ROWS, PHASE, kept,
                "the rows the restore discarded: the kept pre-rollback database against the copy's row hashes, by "
                "key, after the outage window",
                private_actions(kept, admin) + (
                    Action("read", kept, "per table: SELECT key, md5(row) ORDER BY key through a cursor, merged with "
                           f"the hashes of {copy} taken at validate-copy: keys only in the kept database (inserted), "
                           "only in the copy (deleted), in both with different rows (updated)"),),
                destructive=True, requires=(StepName.HEALTH,),
                postcondition=f"{kept} is closed again (ALLOW_CONNECTIONS false, CONNECTION LIMIT 0)",
                undo=(db.private_connection_statements(kept)[1].as_string(admin),))


def _measured_and_unchanged(ctx, step: Step) -> Check:
    """Closed, and no session on the kept database since it was measured: a way back in between means measure again."""
    closed = original_blocked(ctx, step, "the kept database is closed again")
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
    """A comparison that cannot be made (whatever the reason) is journaled as not measured, with the reason, and
    does not fail the run: what must hold is the postcondition, the kept database closed."""
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
    with db.connect(ctx.admin_url, step=StepName.COMPARE_ROWS) as admin:
        return settled_session_count(admin, kept)
