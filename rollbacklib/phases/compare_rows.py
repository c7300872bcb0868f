"""The rows the restore discarded (the RPO in rows), counted after the outage window, in phase 05.

One side was hashed by key inside the run before production served again (``rowdiff.snapshot``
into ``copy_rows/``); here the other side, closed and no longer changing, is hashed the same way
through a private connection and compared with them. Its time grows with the database, so it
runs once production serves again: ``rows_lost`` lands in ``run.json`` when it is ready, and the
report says it is pending until then. The two sides:

- ``swap``: the copy was hashed at its validation, before the gate; the kept pre-rollback
  database (closed since the swap) is read here;
- ``in-place``: the restored live database was hashed at ``validate-in-place``, before the
  reopen (writes start after it); the safety copy (the database before the restore, closed
  since it was taken) is read here. Without a safety copy there is nothing to compare with:
  the step says "not measured" and opens nothing.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from rollbacklib.checks import Check, compare
from rollbacklib.dispatch import dispatch, private_actions, private_session
from rollbacklib.journal import read_events
from rollbacklib.live import (Database, kept_name, restored_name, safety_copy_oid, safety_name,
                              settled_session_count)
from rollbacklib.phases.window import original_blocked
from rollbacklib.postgres import database as db
from rollbacklib.steps import Action, Phase, Step, StepName

PHASE = Phase.CLOSE


def _step(kept: str, summary: str, hashes: str, admin) -> Step:
    return Step(StepName.COMPARE_ROWS, PHASE, kept, summary,
                private_actions(kept, admin) + (
                    Action("read", kept, "per table: SELECT key, md5(row) ORDER BY key through a cursor, merged with "
                           f"{hashes}: keys only in {kept} (inserted after the backup), only in the restored "
                           "database (deleted), in both with different rows (updated)"),),
                destructive=True, requires=(StepName.HEALTH,),
                postcondition=f"{kept} is closed again (ALLOW_CONNECTIONS false, CONNECTION LIMIT 0) and had no "
                "session since it was measured",
                undo=(db.private_connection_statements(kept)[1].as_string(admin),))


def compare_rows_step(ctx, admin=None) -> Step:
    """Swap: the kept database against the copy's row hashes, taken at its validation.

    The kept database keeps ``CONNECTION LIMIT 0`` throughout and is closed again the instant
    the runbook has connected; the copy (live by now) is not read at all.
    """
    copy, kept = restored_name(ctx.database, ctx.run_id), kept_name(ctx.database, ctx.run_id)
    return _step(kept, "the rows the restore discarded: the kept pre-rollback database against the copy's row "
                 "hashes, by key, after the outage window", f"the hashes of {copy} taken at validate-copy", admin)


def in_place_step(ctx, admin, safety_planned: bool) -> Step:
    """In-place: the safety copy against the restored database's row hashes, taken at validate-in-place.

    Without a planned safety copy the step reads nothing and says why (``rows_lost`` not measured).
    """
    live, safety = ctx.database, safety_name(ctx.database, ctx.run_id)
    if not safety_planned:
        return Step(StepName.COMPARE_ROWS, PHASE, live, "the rows the restore discarded: NOT measured (no safety "
                    "copy is planned: the database before the restore is not kept)", (), requires=(StepName.HEALTH,),
                    postcondition="nothing to do")
    return _step(safety, "the rows the restore discarded: the safety copy (the database before the restore) "
                 f"against the row hashes of the restored {live}, by key, after the outage window",
                 f"the hashes of the restored {live} taken at validate-in-place, before the reopen", admin)


# --- the database the restore replaced, as the catalog shows it ----------------------------------

def _is_safety_copy(ctx, step: Step) -> bool:
    return step.target == safety_name(ctx.database, ctx.run_id)


def _kept_now(ctx, step: Step) -> tuple[str, Database | None]:
    """Its name and its entry in the catalog now: the swap's original (by oid, kept under its new name), or
    in-place's safety copy (by name, and only with the oid safety-copy journaled when it took it)."""
    if not _is_safety_copy(ctx, step):
        return ctx.state().need("swap", "swap_keep_live (02_execute)").kept, ctx.live().original
    found, taken = ctx.live().named(step.target), safety_copy_oid(read_events(ctx.run_dir))
    return step.target, found if found is not None and found.oid == taken else None


def _measured_and_unchanged(ctx, step: Step) -> Check:
    """Closed, and no session on the kept database since it was measured: a way back in between means measure again."""
    if not step.actions:
        return Check("nothing to compare: no safety copy was planned", True)
    name, kept = _kept_now(ctx, step)
    if _is_safety_copy(ctx, step):
        if kept is None:
            return Check(f"nothing to compare: {name} was not taken (see the journal)", True)
        closed = compare("the safety copy is closed again", {"allow_connections": False, "connection_limit": 0},
                         {"allow_connections": kept.allow_connections, "connection_limit": kept.connection_limit})
    else:
        closed = original_blocked(ctx, step, "the kept database is closed again")
    if not closed.passed:
        return closed
    measured = next((e["evidence"].get("kept_sessions") for e in reversed(read_events(ctx.run_dir))
                     if e["step"] == StepName.COMPARE_ROWS and e["status"] == "info" and "kept_sessions" in e["evidence"]),
                    None)
    return compare(f"{name} is closed and had no session since it was measured", measured,
                   kept.sessions_ever if kept else None)


def compare_rows(ctx) -> pd.DataFrame:
    """Rows inserted, updated or deleted after the backup that the restore discarded, per table (RPO in rows)."""
    return dispatch(ctx, StepName.COMPARE_ROWS, _compare_rows, postcondition=_measured_and_unchanged)


def _compare_rows(ctx, step: Step) -> pd.DataFrame:
    """A comparison that cannot be made (whatever the reason) is journaled as not measured, with the reason, and
    does not fail the run: what must hold is the postcondition, the kept database closed."""
    from rollbacklib.postgres import rowdiff

    if not step.actions:
        ctx.record(step.name, "info", f"rows lost not measured: {step.summary.split(': ', 1)[1]}", rows_lost=None)
        return pd.DataFrame([{"rows lost": "not measured: no safety copy"}])
    name, kept = _kept_now(ctx, step)
    restored = ctx.database if _is_safety_copy(ctx, step) else restored_name(ctx.database, ctx.run_id)
    folder = ctx.run_dir / rowdiff.SNAPSHOT_FOLDER
    why_not = _why_not_comparable(ctx, step, name, kept, folder / rowdiff.SNAPSHOT_INDEX)
    if why_not:
        ctx.record(step.name, "info", f"rows lost not measured: {why_not}", rows_lost=None, kept=name,
                   **({"kept_sessions": _kept_sessions(ctx, name)} if kept is not None else {}))
        return pd.DataFrame([{"rows lost": f"not measured: {why_not}"}])
    try:
        with private_session(ctx, step, name) as conn:
            lost = rowdiff.diff_against_snapshot(conn, folder)
    except Exception as err:  # noqa: BLE001 - a measurement; the postcondition guards the databases
        failure = f"{type(err).__name__}: " + (getattr(err, "message", None) or str(err)).splitlines()[0]
        ctx.record(step.name, "info", f"rows lost not measured: {failure}", rows_lost=None, kept=name,
                   kept_sessions=_kept_sessions(ctx, name))
        return pd.DataFrame([{"rows lost": f"not measured: {failure}"}])
    ctx.record(step.name, "info", f"{lost['total']} row(s) written after the backup were discarded by the restore",
               rows_lost=lost, kept=name, restored=restored, kept_sessions=_kept_sessions(ctx, name))
    return pd.DataFrame([{"table": t, "key": ", ".join(d["key"]), "inserted": d["inserted"], "updated": d["updated"],
                          "deleted": d["deleted"], "lost": d["lost"], "note": d["note"]}
                         for t, d in lost["tables"].items()])


def _why_not_comparable(ctx, step: Step, name: str, kept: Database | None, index) -> str:
    """In-place only (the swap's copy and its hashes are checked by identity before the swap): the safety copy
    must be the one taken, and the hashes those validate-in-place journaled."""
    if not _is_safety_copy(ctx, step):
        return ""
    if kept is None:
        return f"no safety copy {name} (not taken, or not the one this run took: see the journal of safety-copy)"
    last = next((e["evidence"] for e in reversed(read_events(ctx.run_dir))
                 if e["step"] == StepName.VALIDATE_IN_PLACE and "rows_hashed" in e["evidence"]), {})
    hashed = last.get("rows_index_sha256") if last.get("rows_hashed") else None
    if hashed is None or not index.exists():
        return "the restored database's row hashes were not taken at validate-in-place (see its journal)"
    if hashlib.sha256(index.read_bytes()).hexdigest() != hashed:
        return f"{index.parent.name}/{index.name} is not the one validate-in-place wrote (its sha256 differs)"
    return ""


def _kept_sessions(ctx, kept: str) -> int | None:
    with db.connect(ctx.admin_url, step=StepName.COMPARE_ROWS) as admin:
        return settled_session_count(admin, kept)
