"""Strategy ``in-place``, phase 02: the seed's literal path, for platforms that cannot create or rename databases.

The backup is restored INTO the live database, in one transaction (``rollbacklib.postgres.in_place``),
so a failure leaves it exactly as it was. In the outage window, in this order:

1. ``block-connections``, ``drain``, ``terminate``: as for the swap (``rollbacklib.phases.window``),
   but with the live database as the only database in play;
2. ``safety-copy``: ``CREATE DATABASE <db>__safety_<run> TEMPLATE <db>`` (a server-side file copy
   of the database as it is after the last write, possible only now that it has no session),
   when the server has room for it (``in_place_safety_copy``: ``auto`` takes it unless the free
   disk is known to be short, ``required`` refuses a plan without it, ``never`` skips it). The
   plan says which, with the figures, before the gate. Its time grows with the database: it is
   the price of a way back on a platform that keeps no copy of its own;
3. ``restore-in-place``: the live database's sequences and shape are read, the one-transaction
   restore runs (the database opened only for its own connection), then every sequence is set
   past the value it had before (no id handed out twice). A failure is judged from the database:
   its schema fingerprint and row counts read again and compared with those read just before;
4. ``validate-in-place``: the database against the backup's manifest; then, when a safety copy
   was taken, the restored database's rows hashed by key (``rowdiff.snapshot``, over the columns
   the database had before the restore, read by ``restore-in-place``): it must be before the
   reopen, since writes start after it, and it reads this side only. The safety copy stays
   closed; ``compare-rows`` (phase 05, after the window) reads it against those hashes;
5. ``reopen-connections`` and ``health``.

The lead's strategy seam renders these steps (``plan_steps``) into ``plan.json`` in phase 01,
after the gate and ``stop-services``, and runs the executors below from ``02_execute``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd

from rollbacklib.checks import Check, compare, describe_failures, failed
from rollbacklib.dispatch import checked_before, dispatch, execute_actions, private_actions, private_session
from rollbacklib.errors import AbortedError, StepError
from rollbacklib.files import atomic_write_json
from rollbacklib.live import safety_name
from rollbacklib.phases import window
from rollbacklib.postgres import backup as bk
from rollbacklib.postgres import database as db
from rollbacklib.postgres import in_place as ip
from rollbacklib.postgres import rowdiff
from rollbacklib.postgres import sequences as sq
from rollbacklib.postgres.client import display_command
from rollbacklib.prisma import applied_migrations
from rollbacklib.run import RunContext
from rollbacklib.steps import Action, Phase, Step, StepName
from rollbacklib.validation import against_manifest

PHASE = Phase.EXECUTE
RECORD = "in_place.json"  # in the run folder: what was read before the restore (written ahead of it), the sequences
HASH_ACTION = ("per table: SELECT the JSON line [key..., md5(row)] ORDER BY key through a cursor, gzipped into "
               "copy_rows/ (over the columns the database had before the restore, read by restore-in-place): the "
               "restored side of compare-rows")


def safety_mode(ctx: RunContext) -> str:
    """``in_place_safety_copy``: ``auto`` (unless the free disk is known to be short), ``required`` or ``never``."""
    return ctx.env.in_place_safety_copy


# --- the plan -------------------------------------------------------------------------------------

def plan_steps(ctx: RunContext, facts: dict, admin) -> list[Step]:
    """The in-place window, rendered once (``facts``: ``phases.execute.read_live_facts``)."""
    live, safety = ctx.database, safety_name(ctx.database, ctx.run_id)
    backup = Path(ctx.state().need("backup", "verify_backup (01_prepare)").path)
    if bk.backup_format(backup) not in bk.ARCHIVE_FORMATS and not ip.plain_script_cleans(backup):
        raise AbortedError(f"{backup.name} is a plain script dumped without --clean: restored into the live database "
                           "it would stop at its first CREATE (the object is there already).",
                           next_action="use a custom archive (pg_dump -Fc), or a plain dump taken with pg_dump "
                           "--clean --if-exists, or the swap strategy. Nothing was changed.", step=StepName.PLAN)
    w = {s.name: s for s in window.plan_steps(ctx, facts, admin)}
    own = private_actions(live, admin)  # open, close, evict: for the reads, and (open, close) around the restore
    keep = ctx.env.restore_keep_owners
    argv = ip.restore_command(backup, live, ctx.tools, keep)
    feed = ip.decompress_command(backup)
    safety_copy = safety_step(ctx, admin, live, safety)
    hashed = bool(safety_copy.actions)  # without a safety copy there is nothing to compare the hashes with
    return [
        replace(w[StepName.BLOCK], precondition=f"{live} is the original (by oid) and serves; no copy is involved"),
        w[StepName.DRAIN],
        replace(w[StepName.TERMINATE], precondition=f"{live} is the original, blocked"),
        safety_copy,
        Step(StepName.RESTORE_IN_PLACE, PHASE, live,
             f"restore {backup.name} INTO {live} in one transaction: a failure leaves it exactly as it was; then "
             "every sequence set past the value it had before",
             own + (Action("read", live, "pg_sequences; schema fingerprint and row counts (what 'as it was' is "
                           "judged on)"),
                    Action("sql", live, own[0].text), Action("command", live, ip.describe(backup, live, ctx.tools,
                                                                                           keep), tuple(argv)),
                    Action("sql", live, own[1].text),
                    Action("sql", live, ip.evict_statement(live, None).as_string(admin)))
             + ((Action("command", str(backup), display_command(feed), tuple(feed)),) if feed else ())
             + (Action("setval", live, "per sequence behind its value before the restore: SELECT setval("
                       "'<schema>.<sequence>', <its last_value before>, true); pg_sequences read back"),),
             destructive=True, requires=(StepName.SAFETY_COPY,),
             precondition=f"{live} is the original, blocked, with no session",
             postcondition=f"the restore committed; {live}'s sequences are at or past their values before",
             undo=("a failed restore needs none: nothing was committed; after a committed one, the safety copy "
                   f"{safety} holds the database as it was",)),
        Step(StepName.VALIDATE_IN_PLACE, PHASE, live, "the restored database against the backup's manifest, and the "
             "migration no longer in _prisma_migrations"
             + ("; then its rows hashed by key (this database only, before the reopen: compare-rows reads the safety "
                "copy against them after the window)" if hashed else ""),
             own + (Action("read", live, "schema fingerprint, row counts, _prisma_migrations, first rows against the "
                           "manifest"),) + ((Action("read", live, HASH_ACTION),) if hashed else ()),
             requires=(StepName.RESTORE_IN_PLACE,),
             postcondition="every check passes", undo=(f"the safety copy {safety} holds the database as it was",)),
        replace(w[StepName.REOPEN], precondition=f"{live} is the original (by oid), restored and validated",
                requires=(StepName.VALIDATE_IN_PLACE,), undo=tuple(a.text for a in w[StepName.BLOCK].actions)),
        w[StepName.HEALTH],
    ]


def gate_step(ctx: RunContext) -> Step:
    """The gate of an in-place plan: no copy to wait for (the seam puts it, and stop-services, before the window)."""
    return Step(StepName.GATE, PHASE, ctx.database, "approve this plan: the migration ID typed, or given as approve / "
                "--yes; the restore then runs INTO the live database",
                (Action("prompt", ctx.database, f"type {ctx.migration_id} to approve the plan (its digest is in "
                        "plan.json)"),), requires=(StepName.PLAN,),
                postcondition="an approval of this plan's digest is journaled")


def approve(ctx: RunContext) -> str:
    """The gate (``phases.execute``'s, which asks or reads ``approve``), without the swap's copy precondition."""
    from rollbacklib.phases import execute

    return dispatch(ctx, StepName.GATE, execute._gate, postcondition=execute._approved, precondition=_live_is_original)


def safety_step(ctx: RunContext, admin, live: str, safety: str) -> Step:
    """Whether the safety copy is taken is decided here, with the figures, so the gate approves it knowingly."""
    mode = safety_mode(ctx)
    room = ip.room_for_copy(admin, live, ctx.env.thresholds.restore_space_factor)
    if mode == "required" and room.fits is False:
        raise AbortedError(f"No room for the safety copy of {live}: {room.describe()}; in_place_safety_copy = "
                           "\"required\".", next_action="free disk on the server, or set in_place_safety_copy = "
                           "\"auto\" to restore without it (the one transaction still protects a failed restore). "
                           "Nothing was changed.", step=StepName.PLAN, expected=room.needed, found=room.free)
    take = mode != "never" and room.fits is not False
    why = ("in_place_safety_copy = \"never\"" if mode == "never" else room.describe())
    summary = (f"safety copy: {live} copied on the server as {safety} (now that it has no session), kept; {why}"
               if take else f"NO safety copy ({why}): a failed restore still changes nothing (one transaction), "
               "but after a committed one the database as it was is gone")
    drop = db.drop_database_statement(safety).as_string(admin)
    return Step(StepName.SAFETY_COPY, PHASE, safety if take else live, summary,
                (Action("sql", safety, ip.safety_copy_statement(live, safety).as_string(admin)),) if take else (),
                destructive=take, requires=(StepName.TERMINATE,),
                precondition=f"{live} is blocked, with no session (CREATE DATABASE ... TEMPLATE needs that)",
                postcondition=f"{safety} exists" if take else "nothing to do",
                undo=(f"once nobody needs it: {drop}",) if take else ())


# --- block, drain, terminate: the window's, with the live database as the only one in play -------

def _live_is_original(ctx: RunContext, step: Step) -> Check:
    now = ctx.live()
    live, original = now.named(ctx.database), now.original
    return compare(f"{ctx.database} is the original database (by oid)", original.oid if original else None,
                   live.oid if live else None)


def _blocked_and_empty(ctx: RunContext, step: Step) -> Check:
    checks = [_live_is_original(ctx, step), window.original_blocked(ctx, step)]
    original = ctx.live().original
    checks.append(compare("no session on it", 0, original.sessions if original else None))
    bad = failed(checks)
    return Check(f"{ctx.database} is the original, blocked, with no session", not bad, [c.name for c in checks],
                 [c.to_dict() for c in bad], describe_failures(bad) if bad else "")


def block(ctx: RunContext) -> pd.DataFrame:
    return dispatch(ctx, StepName.BLOCK, window._block, postcondition=window.original_blocked,
                    precondition=_live_is_original)


def drain(ctx: RunContext) -> pd.DataFrame:
    return dispatch(ctx, StepName.DRAIN, window._drain, postcondition=window.original_blocked,
                    precondition=window.original_blocked)


def terminate(ctx: RunContext) -> pd.DataFrame:
    return dispatch(ctx, StepName.TERMINATE, window._terminate, postcondition=_blocked_and_empty,
                    precondition=lambda c, s: compare("the original is blocked", True,
                                                      window.original_blocked(c, s).passed))


# --- the safety copy ------------------------------------------------------------------------------

def take_safety_copy(ctx: RunContext) -> pd.DataFrame:
    return dispatch(ctx, StepName.SAFETY_COPY, _safety, postcondition=_safety_holds, precondition=_blocked_and_empty)


def _safety(ctx: RunContext, step: Step) -> pd.DataFrame:
    if not step.actions:
        ctx.record(step.name, "info", step.summary, taken=False)
        return pd.DataFrame([{"safety copy": None, "why": step.summary}])
    with db.connect(ctx.admin_url, step=step.name) as admin:
        room = ip.room_for_copy(admin, ctx.database, ctx.env.thresholds.restore_space_factor)
        if room.fits is False:  # it fitted when the plan was made: the disk filled since
            ctx.record(step.name, "info", f"NO safety copy: {room.describe()}", taken=False, needed=room.needed,
                       free=room.free)
            if safety_mode(ctx) == "required":
                raise StepError(f"No room for the safety copy any more: {room.describe()}.", step=step.name,
                                next_action="free disk, then run this cell again; or reopen the database: "
                                + window.way_back_now(ctx), escalate="L2")
            return pd.DataFrame([{"safety copy": None, "why": room.describe()}])
        try:
            execute_actions(ctx, admin, step)
        except Exception as err:
            if safety_mode(ctx) == "required":
                raise StepError(f"The safety copy could not be made: {err}", step=step.name, escalate="L2",
                                next_action="fix the cause named, then run this cell again; or reopen the "
                                "database: " + window.way_back_now(ctx)) from None
            ctx.record(step.name, "info", f"NO safety copy: CREATE DATABASE failed ({str(err).splitlines()[0]}); the "
                       "restore goes on in one transaction", taken=False)
            return pd.DataFrame([{"safety copy": None, "why": str(err).splitlines()[0]}])
        oid, size = admin.execute("SELECT oid::bigint, pg_database_size(oid) FROM pg_database WHERE datname = %s",
                                  (step.target,)).fetchone()
        for statement in db.block_statements(step.target):  # nothing writes to it by mistake
            admin.execute(statement)
            ctx.record(step.name, "changed", statement.as_string(admin), kind="sql", target=step.target)
    ctx.record(step.name, "info", f"safety copy {step.target} taken (oid {oid}, {size:,} bytes), closed", taken=True,
               oid=oid, size_bytes=size, database=step.target)
    return pd.DataFrame([{"safety copy": step.target, "oid": oid, "bytes": size}])


def _safety_holds(ctx: RunContext, step: Step) -> Check:
    if not step.actions:
        return Check("no safety copy was planned", True)
    found = ctx.live().named(step.target)
    return Check(f"{step.target} exists, or the journal says why not", True, step.target,
                 found.name if found else "not taken (see the journal)")


# --- the restore ----------------------------------------------------------------------------------

def _shape(conn) -> dict:
    return {"fingerprint": db.schema_fingerprint(db.schema_catalog(conn)), "row_counts": db.row_counts(conn)}


def restore_in_place(ctx: RunContext) -> pd.DataFrame:
    return dispatch(ctx, StepName.RESTORE_IN_PLACE, _restore, postcondition=_committed,
                    precondition=_blocked_and_empty)


def _restore(ctx: RunContext, step: Step) -> pd.DataFrame:
    live = ctx.database
    path = Path(ctx.state().need("backup", "verify_backup (01_prepare)").path)
    (command,) = [a for a in step.actions if a.kind == "command" and a.target == live]
    open_sql, close_sql = (a.text for a in step.actions[:2])
    earlier = _earlier_reading(ctx)
    with private_session(ctx, step, live) as conn:
        now = {"before": _shape(conn), "sequences_before": sq.to_json(sq.read_sequences(conn)),
               "shapes_before": rowdiff.table_shapes(conn)}
        committed_earlier = earlier is not None and now["before"] != earlier["before"]
        if committed_earlier:
            _holds_the_backup(ctx, step, conn, path)
    if committed_earlier:  # what was read before that attempt's restore is what the sequences must pass
        ahead, seconds, evicted = earlier, None, 0
        ctx.record(step.name, "info", f"{live} already holds the backup: the restore of an earlier attempt of this "
                   "run committed (its runner stopped before saying so); not restored again", committed_earlier=True,
                   before=earlier["before"], now=now["before"])
    else:
        ahead = now if earlier is None else {**now, "sequences_before": sq.to_json(sq.furthest(
            sq.from_json(earlier["sequences_before"]), sq.from_json(now["sequences_before"])))}
        seconds, evicted = _run_restore(ctx, step, path, command, open_sql, close_sql, ahead)
    before_seqs = sq.from_json(ahead["sequences_before"])
    with private_session(ctx, step, live) as conn:
        moves = sq.moves(before_seqs, sq.read_sequences(conn), conn)
        sq.apply(conn, moves, lambda text: ctx.record(step.name, "changed", text, kind="sql", target=live))
        checks = sq.verify(conn, before_seqs)
    atomic_write_json(ctx.run_dir / RECORD, {**ahead, "sequences": [m.to_dict() for m in moves],
                                             "restore_seconds": seconds, "evicted": evicted})
    ctx.record(step.name, "info", f"restored into {live}" + (f" in {seconds:.1f} s" if seconds is not None else "")
               + f" (one transaction, committed); {sum(m.action == 'set' for m in moves)} sequence(s) set past "
               "their values before", committed=True, seconds=seconds, evicted=evicted,
               moves=[m.to_dict() for m in moves], checks=[c.to_dict() for c in checks])
    if failed(checks):
        raise StepError("Sequences are behind their values before the restore: " + describe_failures(checks),
                        step=step.name, escalate="L3", next_action="set them by hand (the journal has the values) "
                        "before reopening the database.")
    return pd.DataFrame([m.to_dict() for m in moves])


def _earlier_reading(ctx: RunContext) -> dict | None:
    """What an earlier attempt of this run read just before its restore (``RECORD``, written ahead of it), if any."""
    path = ctx.run_dir / RECORD
    return json.loads(path.read_text()) if path.exists() else None


def _holds_the_backup(ctx: RunContext, step: Step, conn, path: Path) -> None:
    """The live database changed since an earlier attempt read it, though blocked throughout: only that attempt's
    one-transaction restore can have done it, and then the database is the backup's. Anything else: a person."""
    manifest = bk.load_manifest(path)
    checks = against_manifest(conn, manifest)[:1] if manifest else []
    if failed(checks):
        raise StepError(f"{ctx.database} changed since an earlier attempt of this run read it before its restore, "
                        f"and it does not hold the backup either: {describe_failures(checks)}", step=step.name,
                        escalate="L3", next_action="keep it blocked and find out who changed it; the safety copy "
                        f"{safety_name(ctx.database, ctx.run_id)} (if the journal says it was taken) holds it as it "
                        "was before the restore.")


def _run_restore(ctx: RunContext, step: Step, path: Path, command, open_sql: str, close_sql: str,
                 ahead: dict) -> tuple[float, int]:
    """The one-transaction restore; what was read before it written ahead (a resume after a kill reads it back)."""
    live, before = ctx.database, ahead["before"]
    atomic_write_json(ctx.run_dir / RECORD, ahead)
    ctx.record(step.name, "changed", command.text, kind="command", target=live)
    try:
        with db.connect(ctx.admin_url, step=step.name) as admin:
            done = ip.run(list(command.argv), path, ctx.url, admin, live, app_name=f"rollbacklib-in-place-{ctx.run_id}",
                          open_sql=open_sql, close_sql=close_sql, step=step.name,
                          on_sql=lambda text: ctx.record(step.name, "changed", text, kind="sql", target=live))
    except StepError as err:
        with private_session(ctx, step, live) as conn:
            after = _shape(conn)
        same = after == before
        ctx.record(step.name, "info", "after the failed restore: " + ("exactly as it was" if same else "CHANGED"),
                   as_it_was=same, before=before, after=after)
        raise StepError(
            f"The restore into {live} failed and was rolled back: {live} is "
            + ("exactly as it was (its schema fingerprint and row counts, read again, are those read just before)"
               if same else "NOT as it was (its schema or row counts differ from those read just before)")
            + f".\n{err.message}",
            next_action=("reopen it (the statements below), then deal with the backup: " if same else
                         "keep it blocked; compare it with the safety copy before reopening it. ")
            + window.way_back_now(ctx), step=step.name, escalate="L2" if same else "L3") from None
    return done.seconds, done.evicted


def _committed(ctx: RunContext, step: Step) -> Check:
    from rollbacklib.journal import read_events

    done = any(e["step"] == step.name and e["status"] == "info" and e["evidence"].get("committed")
               for e in read_events(ctx.run_dir))
    return compare("the restore committed and the sequences were read back", True, done)


# --- validate, reopen -----------------------------------------------------------------------------

def validate_in_place(ctx: RunContext) -> pd.DataFrame:
    return dispatch(ctx, StepName.VALIDATE_IN_PLACE, _validate, postcondition=checked_before,
                    precondition=_blocked_and_empty)


def _validate(ctx: RunContext, step: Step) -> pd.DataFrame:
    backup = ctx.state().need("backup", "verify_backup (01_prepare)")
    manifest = bk.load_manifest(Path(backup.path))
    with private_session(ctx, step, ctx.database) as conn:
        checks = against_manifest(conn, manifest) if manifest else []
        names = [r["migration_name"] for r in applied_migrations(conn)]
        checks.append(compare(f"{ctx.migration_id} is not in _prisma_migrations", False, ctx.migration_id in names))
        ctx.record(step.name, "info", "validation in place", checks=[c.to_dict() for c in checks],
                   passed=not failed(checks))
        if failed(checks):
            raise StepError(f"{ctx.database} does not hold the backup after the restore:\n{describe_failures(checks)}",
                            step=step.name, escalate="L3", next_action="keep it blocked; the safety copy "
                            f"{safety_name(ctx.database, ctx.run_id)} (if the journal says it was taken) holds the "
                            "database as it was before the restore.")
        if any(a.text == HASH_ACTION for a in step.actions):
            _hash_restored(ctx, step, conn)
    return pd.DataFrame([c.to_dict() for c in checks])


def _hash_restored(ctx: RunContext, step: Step, conn) -> None:
    """The restored database's rows hashed by key before the reopen, for ``compare-rows`` after the window.

    Only this side is read inside the window; the safety copy stays closed until then. A failure is
    journaled (``compare-rows`` then says "not measured", and why) and does not fail the validation.
    """
    safety = safety_name(ctx.database, ctx.run_id)
    if ctx.live().named(safety) is None:
        ctx.record(step.name, "info", f"rows not hashed: no safety copy {safety} to compare them with (see "
                   "safety-copy)", rows_hashed=False)
        return
    folder = ctx.run_dir / rowdiff.SNAPSHOT_FOLDER
    try:
        shapes = json.loads((ctx.run_dir / RECORD).read_text())["shapes_before"]
        index = rowdiff.snapshot(conn, shapes, folder)
    except Exception as err:  # noqa: BLE001 - a measurement; the validation above is what must hold
        ctx.record(step.name, "info", f"rows not hashed: {type(err).__name__}: {str(err).splitlines()[0]}",
                   rows_hashed=False)
        return
    rows = sum(t.get("rows") or 0 for t in index["tables"].values())
    ctx.record(step.name, "info", f"{rows:,} rows of the restored {ctx.database} hashed by key into "
               f"{folder.name}/ for compare-rows", rows_hashed=True, copy_rows=str(folder),
               rows_index_sha256=hashlib.sha256((folder / rowdiff.SNAPSHOT_INDEX).read_bytes()).hexdigest())


def reopen(ctx: RunContext) -> pd.DataFrame:
    def validated(c: RunContext, s: Step) -> Check:
        return compare("the original, restored and validated", (True, "ok"), (
            _live_is_original(c, s).passed, c.state().steps.get(StepName.VALIDATE_IN_PLACE).status
            if c.state().steps.get(StepName.VALIDATE_IN_PLACE) else None))

    return dispatch(ctx, StepName.REOPEN, window._reopen, postcondition=window.reopened_as_before,
                    precondition=validated)


def health(ctx: RunContext) -> pd.DataFrame:
    return dispatch(ctx, StepName.HEALTH, lambda c, s: window._health(c, s, window.HEALTH_ATTEMPTS, 1.0))
