"""Phase 02, execute: the ``swap`` strategy.

1. restore the backup into a new database beside the live one and validate it against the
   manifest (the live database is not touched; any failure aborts with nothing changed);
2. the gate: the migration ID must be given or typed;
3. stop new connections to the live database, wait for sessions to drain, terminate the rest;
4. swap by renaming: live -> ``<db>__pre_rollback_<run>`` (kept, never dropped), restored -> live;
5. assert the Prisma bookkeeping is the backup's.

Every step is described as data first (``plan``); a dry run prints the plan and does nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from rollbacklib.postgres import backup as bk
from rollbacklib.postgres import database as db
from rollbacklib.postgres import identity
from rollbacklib.postgres import properties as dbp
from rollbacklib.checks import Check, as_frame, describe_failures, failed
from rollbacklib.errors import AbortedError, FailedError, RefusedError, RollbackError
from rollbacklib.postgres.client import with_database
from rollbacklib.prisma import applied_migrations, migration_state
from rollbacklib.run import RunContext, confirm, step
from rollbacklib.phases.restore_service import scale_services
from rollbacklib.phases.validate import against_expectations, against_manifest

MAX_IDENTIFIER = 63


@dataclass
class PlannedStep:
    name: str
    target: str
    action: str
    destructive: bool
    undo: str


def _name(base: str, suffix: str) -> str:
    return base[: MAX_IDENTIFIER - len(suffix)] + suffix


def restored_name(ctx: RunContext) -> str:
    return _name(ctx.database, f"__restored_{ctx.run_id}")


def kept_name(ctx: RunContext) -> str:
    return _name(ctx.database, f"__pre_rollback_{ctx.run_id}")


def plan(ctx: RunContext) -> list[PlannedStep]:
    """Exactly what phase 02 will run, in order, against what; nothing is executed."""
    live, restored, kept = ctx.database, restored_name(ctx), kept_name(ctx)
    backup = ctx.require("backup", "01_prepare (verify_backup)")
    with db.connect(ctx.admin_url, step="plan") as admin:
        settings = db.database_settings(admin, live)
        size = admin.execute("SELECT pg_size_pretty(pg_database_size(%s))", (live,)).fetchone()[0]
        props = dbp.read_properties(admin, live)
        render = lambda s: s.as_string(admin)  # noqa: E731
        create = render(dbp.create_statement(restored, props))
        carry = "; ".join(render(s) for s in dbp.apply_statements(restored, props)) or "(none to carry)"
        block = "; ".join(render(s) for s in db.block_statements(live))
        unblock = "; ".join(render(s) for s in db.unblock_statements(live, settings))
        rename = db.rename_statement
        rename_live, rename_restored = render(rename(live, kept)), render(rename(restored, live))
        undo_keep, undo_restored = render(rename(kept, live)), render(rename(live, restored))
        drop_restored = render(db.drop_database_statement(restored))
    t = ctx.env.thresholds
    services = ", ".join(f"{s.name}" for s in ctx.env.services) or "(none configured)"
    return [
        PlannedStep("stop services", ctx.env.service_platform, f"scale to 0: {services}", False, "scale back in phase 04"),
        PlannedStep("create restore target", restored, f"{create} -- needs free disk on the server for a copy "
                    f"of about the live database's size ({size})", False, drop_restored),
        PlannedStep("restore backup", restored, bk.describe_restore(Path(backup["path"]), restored, ctx.tools, ctx.env.restore_keep_owners),
                    False, drop_restored),
        PlannedStep("validate restored copy", restored, "compare with the backup's manifest", False, "-"),
        PlannedStep("carry database settings and grants", restored, carry, False, drop_restored),
        PlannedStep("gate", live, f"type or approve {ctx.migration_id}", False, "-"),
        PlannedStep("block new connections", live, block, True, unblock),
        PlannedStep("drain sessions", live, f"wait up to {t.drain_wait_seconds:.0f} s for sessions to end", False, "-"),
        PlannedStep("terminate sessions", live,
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{live}' AND pid <> pg_backend_pid()",
                    True, "sessions reconnect once connections are allowed again"),
        PlannedStep("swap: keep the live database", live, rename_live, True, undo_keep),
        PlannedStep("swap: restored copy goes live", restored, rename_restored, True,
                    f"{undo_restored}; then {undo_keep}"),
        PlannedStep("check Prisma bookkeeping", live, "_prisma_migrations must equal the backup's rows", False, "-"),
    ]


@step("plan")
def show_plan(ctx: RunContext) -> pd.DataFrame:
    steps = plan(ctx)
    (ctx.run_dir / "plan.json").write_text(json.dumps([asdict(s) for s in steps], indent=2))
    for s in steps:
        ctx.record("plan", "planned" if ctx.dry_run else "info", s.name, **asdict(s))
    return pd.DataFrame([asdict(s) for s in steps])


def _dry(ctx: RunContext, name: str) -> bool:
    if ctx.dry_run:
        ctx.record(name, "skipped", "dry run: see the plan above for what would run")
    return ctx.dry_run


def _skip(ctx: RunContext, name: str) -> bool:
    """Dry run, or this run already swapped: a step re-run (a cell run twice) must not act again."""
    if _dry(ctx, name):
        return True
    swap = ctx.state().get("swap") or {}
    if swap.get("completed"):
        ctx.record(name, "skipped", f"already done: this run swapped {swap['live']} in at an earlier attempt")
        return True
    return False


@step("stop-services")
def stop_services(ctx: RunContext) -> pd.DataFrame:
    return scale_services(ctx, "stop-services", stop=True)


@step("restore")
def restore_copy(ctx: RunContext) -> pd.DataFrame:
    """Restore the backup into a new database and validate it. The live database is untouched."""
    if _skip(ctx, "restore"):
        return pd.DataFrame()
    backup = ctx.require("backup", "01_prepare (verify_backup)")
    path = Path(backup["path"])
    manifest = bk.load_manifest(path)
    restored = restored_name(ctx)
    with db.connect(ctx.admin_url, step="restore") as admin:
        props = dbp.read_properties(admin, ctx.database)
        if db.database_exists(admin, restored):
            if ctx.state().get("restored", {}).get("name") != restored or ctx.state().get("swap"):
                raise AbortedError(f"A database named {restored} already exists and this run did not make it.",
                                   next_action="inspect it and drop it by hand, or start a new run.")
            admin.execute(db.drop_database_statement(restored))  # our own half-done copy from a retried step
        admin.execute(dbp.create_statement(restored, props))
    ctx.remember(restored={"name": restored, "validated": False}, live_properties=props)
    ctx.record("restore", "info", f"restoring {path.name} ({path.stat().st_size / 1e6:.1f} MB) into {restored}",
               command=bk.describe_restore(path, restored, ctx.tools, ctx.env.restore_keep_owners))
    try:
        seconds = bk.restore_into(path, ctx.url, restored, ctx.tools, keep_owners=ctx.env.restore_keep_owners)
        with db.connect(with_database(ctx.url, restored), step="restore") as conn:
            checks = against_manifest(conn, manifest) if manifest else [check_restored_history(ctx, conn, path)]
            checks += against_expectations(conn, ctx.migration.expect if ctx.migration else None, manifest)
            description = bk.describe_database(conn, ctx.config.all_queries())
        if failed(checks):
            raise AbortedError(f"The restored copy fails its checks:\n{describe_failures(checks)}",
                               next_action="this backup does not give the state the migration's checks expect "
                               "(or is not what its manifest says): use another backup, or fix the expectations.")
    except Exception as err:
        _drop_restored(ctx, restored)
        message = err.message if isinstance(err, RollbackError) else f"{type(err).__name__}: {err}"
        advice = err.next_action if isinstance(err, RollbackError) else "read the error above."
        raise AbortedError(f"Restoring into {restored} failed; the live database was not touched.\n{message}",
                           next_action="ABORT: nothing was changed. " + advice, escalate="L3") from None
    with db.connect(ctx.admin_url, step="restore") as admin:  # after the restore: they could get in its way
        for statement in dbp.apply_statements(restored, props):
            admin.execute(statement)
    if manifest is None:  # the plan's plain format: what was restored becomes what is expected
        (ctx.run_dir / "restored_description.json").write_text(json.dumps(description, indent=2, default=str))
    ctx.remember(restored={"name": restored, "validated": True, "seconds": round(seconds, 3),
                           "row_counts": description["row_counts"]})
    ctx.record("restore", "info", f"restored into {restored} in {seconds:.1f} s",
               seconds=seconds, checks=[c.to_dict() for c in checks], row_counts=description["row_counts"])
    return as_frame(checks) if checks else pd.DataFrame([{"table": t, "rows": n} for t, n in description["row_counts"].items()])


def check_restored_history(ctx: RunContext, restored, path: Path) -> Check:
    """A backup without a manifest: its Prisma history is known only once restored. Raises when not the live one's."""
    with db.connect(ctx.url, step="restore") as live:
        live_rows = applied_migrations(live)
    check = identity.restored_history_check(restored, live_rows)
    identity.refuse_unless_identical([check], backup=path, live_database=ctx.database, abort="",
                                     environment=f"--env {ctx.env.name} (${ctx.env.database_url_env})")
    return check


def _drop_restored(ctx: RunContext, restored: str) -> None:
    with db.connect(ctx.admin_url, step="restore") as admin:
        admin.execute(db.drop_database_statement(restored))
    ctx.record("restore", "info", f"dropped the failed copy {restored} (it held nothing but the failed restore)")
    ctx.remember(restored=None)


@step("gate")
def approve_swap(ctx: RunContext) -> str:
    if _skip(ctx, "gate"):
        return "dry run: no gate"
    try:
        confirm(ctx, f"Swap the restored copy in for {ctx.database} (the live database is kept as {kept_name(ctx)}).")
    except RefusedError:
        restored = ctx.state().get("restored")
        if restored:  # leave the server as it was: the copy is ours and holds only the backup
            _drop_restored(ctx, restored["name"])
        raise
    return "approved"


@step("block-connections")
def block_connections(ctx: RunContext) -> pd.DataFrame:
    if _skip(ctx, "block-connections"):
        return pd.DataFrame()
    ctx.require("restored", "restore_copy")
    live = ctx.database
    with db.connect(ctx.admin_url, step="block-connections") as admin:
        settings = db.database_settings(admin, live)
        if "blocked" not in ctx.state():
            ctx.remember(blocked={"database": live, "previous": settings})
        for statement in db.block_statements(live):
            admin.execute(statement)
        after = db.database_settings(admin, live)
    ctx.record("block-connections", "changed", f"new connections to {live} stopped", before=settings, after=after)
    if after["allow_connections"] or after["connection_limit"] != 0:
        raise FailedError(f"Blocking connections to {live} did not take effect.", next_action=unblock_advice(ctx),
                          expected={"allow_connections": False, "connection_limit": 0}, found=after)
    return pd.DataFrame([{"setting": k, "before": settings[k], "after": after[k]} for k in ("allow_connections", "connection_limit")])


def unblock_advice(ctx: RunContext) -> str:
    blocked = ctx.state().get("blocked")
    if not blocked:
        return "nothing was blocked."
    statements = db.unblock_statements(blocked["database"], blocked["previous"])
    return (f"the live database {blocked['database']} refuses new connections; to return to how it was run: "
            + "; ".join(s.as_string(None) for s in statements) + ";")


@step("drain")
def drain_connections(ctx: RunContext) -> pd.DataFrame:
    """Wait for sessions to end, then terminate what is left (never the runbook's own)."""
    if _skip(ctx, "drain"):
        return pd.DataFrame()
    ctx.require("blocked", "block_connections")
    t = ctx.env.thresholds
    live = ctx.database
    with db.connect(ctx.admin_url, step="drain") as admin:
        left = db.wait_for_no_sessions(admin, live, t.drain_wait_seconds, t.poll_interval_seconds)
        ctx.record("drain", "info", f"{len(left)} session(s) left after waiting {t.drain_wait_seconds:.0f} s")
        terminated = []
        if left:
            terminated = db.terminate_sessions(admin, live)
            (ctx.run_dir / "terminated_sessions.json").write_text(json.dumps(terminated, indent=2, default=str))
            ctx.record("drain", "changed", f"terminated {len(terminated)} session(s)", terminated=terminated)
            left = db.wait_for_no_sessions(admin, live, t.terminate_timeout_seconds, t.poll_interval_seconds)
    if left:
        raise FailedError(f"{len(left)} session(s) on {live} survived termination.",
                          next_action="find them with pg_stat_activity and end them, then re-run this cell; or " + unblock_advice(ctx),
                          expected=0, found=[s["pid"] for s in left], escalate="L3")
    return pd.DataFrame(terminated)


@step("swap")
def swap_in(ctx: RunContext) -> pd.DataFrame:
    if _skip(ctx, "swap"):
        return pd.DataFrame()
    restored = ctx.require("restored", "restore_copy")
    if not restored or not restored.get("validated"):
        raise AbortedError("The restored copy was not validated.", next_action="run restore_copy again.")
    live, kept, new = ctx.database, kept_name(ctx), restored["name"]
    with db.connect(ctx.admin_url, step="swap") as admin:
        if db.database_exists(admin, kept) and not db.database_exists(admin, live) and db.database_exists(admin, new):
            ctx.record("swap", "info", f"finishing a swap cut short: {live} is already kept as {kept}")
            return _finish_swap(ctx, admin, live, kept, new)
        if db.sessions(admin, live):
            raise FailedError(f"Sessions are still connected to {live}.", next_action="run drain_connections again.")
        db.rename_database(admin, live, kept)
        ctx.remember(swap={"kept": kept, "live": live, "restored": new, "completed": False})
        ctx.record("swap", "changed", f"{live} renamed to {kept} (kept)")
        return _finish_swap(ctx, admin, live, kept, new)


def _finish_swap(ctx: RunContext, admin, live: str, kept: str, new: str) -> pd.DataFrame:
    try:
        db.rename_database(admin, new, live)
    except Exception as err:
        db.rename_database(admin, kept, live)
        ctx.remember(swap=None)
        ctx.record("swap", "changed", f"undone: {kept} renamed back to {live}")
        raise FailedError(f"Putting the restored copy in place failed ({err}); the original is back as {live}.",
                          next_action=unblock_advice(ctx), escalate="L3") from None
    # Until phase 04 reopens it, only the runbook's (superuser/owner) sessions may use it.
    admin.execute(db.connection_limit_statement(live, 0))
    names = {n: db.database_exists(admin, n) for n in (live, kept, new)}
    ctx.remember(swap={"kept": kept, "live": live, "restored": new, "completed": True})
    ctx.record("swap", "changed", f"restored copy is now {live}; the pre-rollback database is kept as {kept}",
               kept=kept, live=live, databases=names)
    return pd.DataFrame([{"database": live, "is": "the restored copy"}, {"database": kept, "is": "the pre-rollback database, kept"}])


@step("bookkeeping")
def check_bookkeeping(ctx: RunContext) -> str:
    """After a full restore ``_prisma_migrations`` must equal the backup's rows: assert, never edit."""
    if _dry(ctx, "bookkeeping"):
        return "dry run"
    backup = ctx.require("backup", "01_prepare")
    manifest = bk.load_manifest(Path(backup["path"]))
    with db.connect(ctx.url, step="bookkeeping") as conn:
        rows = applied_migrations(conn)
    expected = manifest["prisma_migrations"] if manifest else None
    state = migration_state(rows, ctx.migration_id)
    ctx.record("bookkeeping", "info", f"{ctx.migration_id} is {state} after the restore", rows=rows, state=state)
    if expected is not None and rows != expected:
        raise FailedError("_prisma_migrations after the restore differs from the backup's manifest.",
                          next_action="compare the rows in the journal with the manifest before reopening.",
                          expected=expected, found=rows, escalate="L3")
    return prisma_warning(ctx.migration_id, state)


def prisma_warning(migration_id: str, state: str) -> str:
    return (
        f"**`_prisma_migrations` is the backup's: `{migration_id}` is now _{state}_.**\n\n"
        f"- `prisma migrate status` will report `{migration_id}` as **not yet applied**.\n"
        f"- The next `prisma migrate deploy` **will apply it again**: redeploy a release without "
        f"`prisma/migrations/{migration_id}/`, or one that does not run `migrate deploy` on start.\n"
        f"- Do **not** run `prisma migrate resolve --rolled-back {migration_id}`: with no row for it Prisma "
        "answers P3011, and for a successful migration P3012; `--rolled-back` only applies to a failed one."
    )

