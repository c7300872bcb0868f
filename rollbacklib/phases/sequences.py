"""Step ``sequences``: the restored copy hands out no id the original already handed out.

It runs inside the outage window, between the two renames (``swap-keep-live`` and
``swap-promote-copy``): the original is kept, blocked, with no session, so its sequences are
final; the copy is still under its own name (the live name does not exist then, so no
application or pooler can reach either database by it). The original's ``pg_sequences`` are
read through a private connection; only when one of them was ever used is the copy opened,
privately too, to ``setval`` each sequence that is behind and read them all back. Its cost is
two connections and one statement per sequence: milliseconds, whatever the data's size.

The copy's identity stays checkable: the runbook's own session on it is counted (the copy's
``pg_stat_database.sessions`` must move by exactly that one), and the new count replaces
``sessions_at_close``, so ``swap-promote-copy`` still refuses a copy anyone else touched. A copy
that is not the validated one (renamed away, opened, changed) is never opened here: nothing is
set, and ``swap-promote-copy``, the one gate on the copy's identity, refuses it and says why.
"""

from __future__ import annotations

import json
import time

import pandas as pd

from rollbacklib.checks import Check, compare, describe_failures, failed
from rollbacklib.dispatch import dispatch, private_actions, private_session
from rollbacklib.errors import StepError
from rollbacklib.files import atomic_write_json
from rollbacklib.journal import read_events
from rollbacklib.live import kept_name, restored_name
from rollbacklib.postgres import database as db
from rollbacklib.postgres import sequences as sq
from rollbacklib.postgres.client import with_database
from rollbacklib.run import RunContext
from rollbacklib.steps import Action, Phase, Step, StepName

SEQUENCES_FILE = "sequences.json"
COUNT_WAIT_SECONDS = 2.0


def plan_step(ctx: RunContext, admin, phase: str = Phase.EXECUTE) -> Step:
    kept, copy = kept_name(ctx.database, ctx.run_id), restored_name(ctx.database, ctx.run_id)
    return Step(StepName.SEQUENCES, phase, copy,
                "every sequence of the copy set at or past the value the original handed out last (read now that "
                "the original is blocked and its sequences are final): no id is handed out twice",
                private_actions(kept, admin) + (
                    Action("read", kept, "SELECT schemaname, sequencename, last_value, increment_by FROM "
                           "pg_sequences"),) + private_actions(copy, admin) + (
                    Action("setval", copy, "per sequence of the copy behind the original's last_value: SELECT "
                           "setval('<schema>.<sequence>', <the original's last_value>, true); then pg_sequences "
                           "read back"),),
                destructive=True, requires=(StepName.SWAP_KEEP,),
                precondition=f"the original is kept as {kept}, blocked, with no session; {copy} is opened only "
                "when it is the validated copy (oid, marker, no session since closed): else nothing is set and "
                "the promote refuses it",
                postcondition=f"every sequence of {copy} is at or past the original's; no other session opened on "
                "the copy", undo=("none needed: a sequence moved forward only skips ids",))


def carry_sequences(ctx: RunContext) -> pd.DataFrame:
    """Set the copy's sequences past the original's final values, between the renames; read them back."""
    return dispatch(ctx, StepName.SEQUENCES, _carry, postcondition=_holds, precondition=_may_act)


def _may_act(ctx: RunContext, step: Step) -> Check:
    """The original's sequences are final: it is kept, blocked, with no session (the copy is judged in ``_carry``)."""
    original = ctx.live().original
    return compare("the original is kept, blocked, with no session: its sequences are final",
                   {"name": kept_name(ctx.database, ctx.run_id), "closed": True, "sessions": 0},
                   {"name": original.name, "closed": original.closed, "sessions": original.sessions}
                   if original else None)


def _copy_checks(ctx: RunContext) -> list[Check]:
    """The copy, still under its own name, is the validated one: oid, marker, closed, no session since closed."""
    now = ctx.live()
    copy, restored = now.the_copy, ctx.state().restored
    checks = now.copy_identity(restored.sessions_at_close if restored else None) if copy else [
        Check("the validated copy is there", False, True, None)]
    checks.append(compare("the copy is still under its own name", restored_name(ctx.database, ctx.run_id),
                          copy.name if copy else None))
    return checks


def _carry(ctx: RunContext, step: Step) -> pd.DataFrame:
    kept, copy = kept_name(ctx.database, ctx.run_id), restored_name(ctx.database, ctx.run_id)
    bad = failed(_copy_checks(ctx))
    if bad:  # never open a copy that is not the validated one; the promote, next, refuses it and says why
        ctx.record(step.name, "info", "sequences NOT set: the copy is not the validated one, so it is not opened ("
                   + describe_failures(bad) + "); swap-promote-copy refuses it", identity_failed=[
                       c.to_dict() for c in bad])
        return pd.DataFrame([{"sequences": "not set", "why": describe_failures(bad)}])
    started = time.monotonic()
    with private_session(ctx, step, kept) as conn:
        before = sq.read_sequences(conn)
    used = {k: s for k, s in before.items() if s.last_value is not None}
    moves: list[sq.SequenceMove] = []
    checks: list[Check] = []
    if used:
        restored = ctx.state().need("restored", "create_copy (02_execute)")
        with private_session(ctx, step, copy) as conn:
            moves = sq.moves(before, sq.read_sequences(conn), conn)
            sq.apply(conn, moves, lambda text: ctx.record(step.name, "changed", text, kind="sql", target=copy))
            checks = sq.verify(conn, before)
        _account_own_session(ctx, step, copy, restored)
    else:
        moves = sq.moves(before, {})
    ms = round((time.monotonic() - started) * 1000, 1)
    atomic_write_json(ctx.run_dir / SEQUENCES_FILE, {"before_rollback": sq.to_json(before),
                                                     "moves": [m.to_dict() for m in moves],
                                                     "checks": [c.to_dict() for c in checks]})
    ctx.record(step.name, "info", f"{sum(m.action == 'set' for m in moves)} sequence(s) set past the original's, "
               f"{len(before)} read on the original, in {ms} ms", before_rollback=sq.to_json(before),
               moves=[m.to_dict() for m in moves], checks=[c.to_dict() for c in checks], milliseconds=ms)
    if failed(checks):
        raise StepError("The copy's sequences are still behind the original's after setval: "
                        + describe_failures(checks), step=step.name, escalate="L3",
                        next_action="do not promote the copy; read pg_sequences of both databases; "
                        "the way back is in the journal.")
    return pd.DataFrame([m.to_dict() for m in moves])


def _account_own_session(ctx: RunContext, step: Step, copy: str, restored) -> None:
    """The copy's session count must move by exactly the runbook's one session; that count is the new baseline."""
    expected = None if restored.sessions_at_close is None else restored.sessions_at_close + 1
    deadline, pause, found = time.monotonic() + COUNT_WAIT_SECONDS, 0.002, None
    with db.connect(ctx.admin_url, step=step.name) as admin:
        while True:
            row = admin.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (copy,)).fetchone()
            found = row[0] if row else None
            if expected is None or found == expected or time.monotonic() >= deadline:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
    if expected is not None and found != expected:
        raise StepError(f"Sessions on the copy {copy}: {found}, expected {expected} (the {expected - 1} counted when "
                        "it was closed, and the runbook's own one to set its sequences): another session reached it.",
                        next_action="do not promote this copy; find out who opened it; the way back is in the "
                        "journal.", step=step.name, expected=expected, found=found, escalate="L3")
    ctx.update(restored=restored.model_copy(update={"sessions_at_close": found}))
    ctx.record(step.name, "info", f"the copy's session count is {found}: the runbook's own session counted, none "
               "other", sessions_at_close=found)


def _holds(ctx: RunContext, step: Step) -> Check:
    """Read back (after a copy found not to be the validated one: holds only while it still is not): while the copy is closed, nobody opened it since (its values were read back in the session that set
    them); once it is open, its ``pg_sequences`` against the original's values journaled by the step."""
    event = next((e for e in reversed(read_events(ctx.run_dir)) if e["step"] == StepName.SEQUENCES
                  and e["status"] == "info" and ("before_rollback" in e["evidence"]
                                                 or "identity_failed" in e["evidence"])), None)
    if event is None:
        return Check("the original's sequences were read", False, "journaled", None)
    if "identity_failed" in event["evidence"]:  # nothing was set: fine while the copy stays refused, not once it holds
        bad = failed(_copy_checks(ctx))
        return Check("the copy is not the validated one: nothing to set, the promote refuses it", bool(bad),
                     "the copy refused", [c.name for c in bad])
    before = sq.from_json(event["evidence"]["before_rollback"])
    now = ctx.live()
    copy, restored = now.the_copy, ctx.state().restored
    if copy is None:
        return Check("the copy is there", False, True, None)
    if copy.allow_connections:
        with db.connect(with_database(ctx.url, copy.name), step=step.name) as conn:
            bad = failed(sq.verify(conn, before))
        return Check("every sequence of the restored database is at or past the original's", not bad, [],
                     [c.to_dict() for c in bad])
    if not any(s.last_value is not None for s in before.values()):
        return Check("no sequence of the original was ever used: nothing to set", True)
    return compare("the copy's sequences were read back in the session that set them, and no session opened on it "
                   "since", restored.sessions_at_close if restored else None, copy.sessions_ever)


def summary(run_dir) -> dict | None:
    """``sequences.json`` of a run: what was read and set (for the report)."""
    path = run_dir / SEQUENCES_FILE
    return json.loads(path.read_text()) if path.exists() else None
