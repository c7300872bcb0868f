"""Steps ``salvage-preview`` (phase 02, before the gate) and ``salvage-carry`` (phase 05, after ``compare-rows``).

``salvage-preview`` runs while the validated copy is still open to the runbook, right before
``close-copy``: the live database (serving) is compared with the copy's row hashes, and what the
restore would discard is shown per table with a sample (``rollbacklib.salvage.preview``). It
reads only. It is a projection: writes go on until the window blocks the live database, and
``compare-rows`` gives the final count.

``salvage-carry`` is in the plan only when salvage is asked for (``salvage = true`` in the
environment, or ``rollback run --salvage``), so the approval of the plan's digest covers it; it
also needs the preview journaled (in the notebooks the gate cell follows the preview, so the
count is shown first; ``rollback run`` asks at the terminal after phase 01, before any copy
exists, so there the approval covers the step and the count follows it). It does NOT run
inside the outage window: finding the rows written after the backup means reading the kept
database whole, which grows with the data, and rows carried into the copy before the promote
would also change the copy the promote recognises by its validation hash and session count.
So it runs right after ``compare-rows``, on the kept database (closed, final) through a private
connection, into the restored database while it serves: every update and delete is guarded by
the row's backup hash in its own statement, so a row the application changed since the reopen
is never overwritten, and sequences were already set past every id the original handed out
(step ``sequences``), so carried ids cannot collide with new ones.
"""

from __future__ import annotations

import os

import pandas as pd

from rollbacklib import salvage as sv
from rollbacklib.checks import Check, compare
from rollbacklib.dispatch import approval_event, checked_before, dispatch, private_actions, private_session
from rollbacklib.journal import read_events
from rollbacklib.live import kept_name, restored_name
from rollbacklib.phases.window import original_blocked
from rollbacklib.postgres import database as db
from rollbacklib.postgres import rowdiff
from rollbacklib.postgres.client import with_database
from rollbacklib.run import RunContext
from rollbacklib.steps import Action, Phase, Step, StepName

SALVAGE_ENV = "ROLLBACK_SALVAGE"  # set by `rollback run --salvage` for the phases' kernels


def requested(ctx: RunContext) -> bool:
    """Carry the discarded rows over? ``salvage`` in the environment's config, or ``rollback run --salvage``."""
    return bool(ctx.env.salvage) or os.environ.get(SALVAGE_ENV) == "1"


def preview_step(ctx: RunContext) -> Step:
    live, copy = ctx.database, restored_name(ctx.database, ctx.run_id)
    return Step(StepName.SALVAGE_PREVIEW, Phase.EXECUTE, live,
                "what the restore is about to discard: rows inserted, updated or deleted after the backup, per table "
                "by key (a projection: the live database takes writes until the window)",
                (Action("read", live, "per table: SELECT key, md5(row) ORDER BY key through a cursor, merged with the "
                        f"hashes of {copy} taken at validate-copy; createdAt/updatedAt of each row that differs"),
                 Action("file", str(ctx.run_dir / sv.FOLDER / "preview"), "preview.json and one <table>.jsonl of keys "
                        "per table")),
                requires=(StepName.VALIDATE_COPY,), postcondition="the preview is in the run folder")


def carry_step(ctx: RunContext, admin=None) -> Step:
    live, kept = ctx.database, kept_name(ctx.database, ctx.run_id)
    return Step(StepName.SALVAGE_CARRY, Phase.CLOSE, live,
                "carry the rows written after the backup from the kept database into the restored one, where its "
                "schema accepts them and the restored row is still the backup's",
                private_actions(kept, admin) + (
                    Action("read", kept, "the rows that differ from the copy's hashes, by key"),
                    Action("sql", live, "per row inserted after the backup: INSERT INTO <table> (<columns both have>) "
                           "OVERRIDING SYSTEM VALUE VALUES (...) ON CONFLICT DO NOTHING"),
                    Action("sql", live, "per row updated after the backup: UPDATE <table> SET ... WHERE <key> AND "
                           "md5(ROW(...)::text) = <its hash in the backup>"),
                    Action("sql", live, "per row deleted after the backup: DELETE FROM <table> WHERE <key> AND "
                           "md5(ROW(...)::text) = <its hash in the backup>"),
                    Action("file", str(ctx.run_dir / sv.FOLDER), "carried.json, conflicts.jsonl")),
                destructive=True, requires=(StepName.COMPARE_ROWS,),
                precondition="the preview was journaled; the live name holds the restored copy, open",
                postcondition=f"{kept} is closed again; what was carried and what conflicted is in the run folder",
                undo=("the rows carried are listed in salvage/carried.json and conflicts.jsonl: each insert can be "
                      "deleted by its key",))


# --- preview --------------------------------------------------------------------------------------

def preview(ctx: RunContext) -> pd.DataFrame:
    return dispatch(ctx, StepName.SALVAGE_PREVIEW, _preview, postcondition=checked_before)


def _preview(ctx: RunContext, step: Step) -> pd.DataFrame:
    """A projection, read only: when it cannot be made (the window has begun on a resumed run, any error) it is
    journaled as not made, with the reason, and does not stop the run: ``compare-rows`` counts after the window."""
    now = ctx.live()
    copy, live_db, original = now.the_copy, now.named(ctx.database), now.original
    serving = bool(live_db and original and live_db.oid == original.oid and live_db.open)
    if ctx.changes_began() or not serving:
        why = f"the outage window has begun ({now.describe()})"
        ctx.record(step.name, "info", f"preview not made: {why}; compare-rows counts the rows after the window",
                   salvage_preview=None, why=why)
        return pd.DataFrame([{"preview": f"not made: {why}"}])
    folder, out = ctx.run_dir / rowdiff.SNAPSHOT_FOLDER, ctx.run_dir / sv.FOLDER / "preview"
    try:
        with db.connect(ctx.url, step=step.name) as live:
            if copy is not None and copy.allow_connections:
                with db.connect(with_database(ctx.url, copy.name), step=step.name) as restored:
                    found = sv.preview(live, restored, folder, out)
            else:  # closed for good already (a resumed run): never opened again; deleted rows listed by key alone
                ctx.record(step.name, "info", "the copy is closed: rows deleted after the backup are listed by key "
                           "only")
                found = sv.preview(live, None, folder, out)
    except Exception as err:  # noqa: BLE001 - a measurement, read only
        why = f"{type(err).__name__}: " + (getattr(err, "message", None) or str(err)).splitlines()[0]
        ctx.record(step.name, "info", f"preview not made: {why}", salvage_preview=None, why=why)
        return pd.DataFrame([{"preview": f"not made: {why}"}])
    carry = requested(ctx)
    ctx.record(step.name, "info", f"projection at {found['measured_at']}: the restore would discard {found['total']} "
               f"row(s) written after the backup ({found['inserted']} inserted, {found['updated']} updated, "
               f"{found['deleted']} deleted); the final count is compare-rows' after the window"
               + ("; salvage is on: they are carried over after the reopen" if carry else ""),
               salvage_preview={k: v for k, v in found.items() if k != "tables"},
               tables={t: {k: d[k] for k in ("inserted", "updated", "deleted", "lost")}
                       for t, d in found["tables"].items()}, salvage=carry)
    return pd.DataFrame([{"table": t, "inserted": d["inserted"], "updated": d["updated"], "deleted": d["deleted"],
                          "sample": "; ".join(f"{r['kind']} {r['key']}" + "".join(
                              f" {c}={r[c]}" for c in sv.TIMESTAMPS if c in r) for r in d.get("sample", [])),
                          "all keys": d.get("file")} for t, d in found["tables"].items() if d["lost"]])


# --- carry ----------------------------------------------------------------------------------------

def _shown_then_approved(ctx: RunContext, step: Step) -> Check:
    """The preview was journaled (the count shown) and the plan approved holds this step; the copy serves.

    The notebook's gate cell comes after the preview, so there the count is shown before the
    approval; ``rollback run``'s terminal gate comes after phase 01, before any copy exists, so
    there the approval covers the carry (the step is in the digest) and the count follows it:
    the check records which order it was.
    """
    events = read_events(ctx.run_dir)
    shown = next((e["seq"] for e in events if e["step"] == StepName.SALVAGE_PREVIEW and e["status"] == "info"
                  and "salvage_preview" in e["evidence"]), None)
    approved = approval_event(ctx.run_dir)
    now = ctx.live()
    copy, live = now.the_copy, now.named(ctx.database)
    ctx.record(step.name, "info", "the count was shown " + ("before" if shown and approved and shown < approved["seq"]
                                                            else "after") + " the approval of the plan",
               preview_seq=shown, approval_seq=approved["seq"] if approved else None)
    return compare("the preview was journaled, the plan approved, and the live name holds the restored copy, open",
                   {"preview shown": True, "approved": True, "the copy serves": True},
                   {"preview shown": shown is not None, "approved": approved is not None,
                    "the copy serves": bool(copy and live and copy.oid == live.oid and live.open)})


def carry(ctx: RunContext) -> pd.DataFrame | str:
    """Carry the rows over when the plan has the step (salvage asked for in phase 01); else say it is off."""
    plan = ctx.plan()
    if plan is None or StepName.SALVAGE_CARRY not in [s.name for s in plan.steps]:
        return ("salvage is off for this run: the rows written after the backup stay in the kept database "
                "(`rollback lost-rows` exports them)")
    return dispatch(ctx, StepName.SALVAGE_CARRY, _carry, postcondition=_closed_again,
                    precondition=_shown_then_approved)


def _closed_again(ctx: RunContext, step: Step) -> Check:
    """The kept database closed again, with no session since the carry read it."""
    closed = original_blocked(ctx, step, "the kept database is closed again")
    if not closed.passed:
        return closed
    measured = next((e["evidence"].get("kept_sessions") for e in reversed(read_events(ctx.run_dir))
                     if e["step"] == StepName.SALVAGE_CARRY and "kept_sessions" in e["evidence"]), None)
    original = ctx.live().original
    return compare("the kept database is closed and had no session since the carry", measured,
                   original.sessions_ever if original else None)


def _carry(ctx: RunContext, step: Step) -> pd.DataFrame:
    swap = ctx.state().need("swap", "swap_keep_live (02_execute)")
    with private_session(ctx, step, swap.kept) as kept, db.connect(ctx.url, step=step.name) as live:
        done = sv.carry(kept, live, ctx.run_dir / rowdiff.SNAPSHOT_FOLDER, ctx.run_dir / sv.FOLDER)
    from rollbacklib.phases.compare_rows import _kept_sessions

    ctx.record(step.name, "info", f"carried {done['carried']} of {done['rows_lost']['total']} row change(s) written "
               f"after the backup into {ctx.database}; {done['conflicts']} conflicted (salvage/conflicts.jsonl)",
               salvage=done, kept_sessions=_kept_sessions(ctx, swap.kept))
    return pd.DataFrame([{"table": t, **{f"carried {k}": r["carried"][k] for k in sv.KINDS},
                          **{f"conflicts {k}": r["conflicts"][k] for k in sv.KINDS},
                          "reasons": "; ".join(f"{why} ({n})" for why, n in r["reasons"].items())}
                         for t, r in done["tables"].items()])
