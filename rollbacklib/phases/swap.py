"""The swap (phase 02's last step and phase 03's last): the live database is kept, the validated copy goes live.

``swap-keep-live`` renames the live database to ``<db>__pre_rollback_<run>`` (kept, never
dropped); the copy is checked under its own name in phase 03 (``bookkeeping``, then
``validation``) and only then takes the live name (``swap-promote-copy``), still closed until
phase 04 reopens it. Each step finishes a swap cut short from what the catalog shows.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rollbacklib.checks import Check, compare
from rollbacklib.errors import StepError
from rollbacklib.phases.execute import _sql, kept_name, restored_name, unblock_advice
from rollbacklib.postgres import backup as bk
from rollbacklib.postgres import database as db
from rollbacklib.prisma import applied_migrations, migration_state
from rollbacklib.run import RunContext
from rollbacklib.state import Swap
from rollbacklib.steps import (Action, Phase, Step, StepName, checked_before, dispatch, execute_actions,
                               private_actions, private_session)


def validated_swap_steps(ctx: RunContext, admin) -> tuple[list[Step], list[Step]]:
    """Phase 03's steps around its validation: the bookkeeping check on the copy, then the copy goes live.

    The copy is read under its own name, which no application knows, and takes the live name
    only once validated: no unvalidated database is ever reachable by the live name.
    """
    live, restored, kept = ctx.database, restored_name(ctx), kept_name(ctx)
    bookkeeping = Step(StepName.BOOKKEEPING, Phase.VALIDATE, restored,
                       "assert the copy's _prisma_migrations equals the backup's (never edited)",
                       private_actions(restored, admin) + (Action("read", restored, "SELECT * FROM _prisma_migrations"),),
                       destructive=True, requires=(StepName.SWAP_KEEP,),
                       postcondition="_prisma_migrations equals the backup's manifest")
    promote = Step(StepName.SWAP_PROMOTE, Phase.VALIDATE, restored,
                   f"the validated copy takes the name {live}, still closed until phase 04",
                   _sql(admin, restored, [db.rename_statement(restored, live), *db.block_statements(live)]),
                   destructive=True, requires=(StepName.VALIDATION,),
                   postcondition=f"{live} is the restored copy, {kept} is kept, {restored} is gone",
                   undo=(db.rename_statement(live, restored).as_string(admin),
                         db.rename_statement(kept, live).as_string(admin)))
    return [bookkeeping], [promote]


# --- the swap -----------------------------------------------------------------------------------

def _catalog(ctx: RunContext, admin) -> dict[str, bool]:
    live, kept, restored = ctx.database, kept_name(ctx), restored_name(ctx)
    return {name: db.database_exists(admin, name) for name in (live, kept, restored)}


def swap_keep_live(ctx: RunContext) -> pd.DataFrame:
    def kept(c: RunContext, s: Step) -> Check:
        with db.connect(c.admin_url, step=s.name) as admin:
            found = _catalog(c, admin)
        return Check(f"{kept_name(c)} is kept", found[kept_name(c)], True, found)

    return dispatch(ctx, ctx.planned(StepName.SWAP_KEEP), _swap_keep, postcondition=kept)


def _swap_keep(ctx: RunContext, step: Step) -> pd.DataFrame:
    live, kept, restored = ctx.database, kept_name(ctx), restored_name(ctx)
    with db.connect(ctx.admin_url, step=step.name) as admin:
        found = _catalog(ctx, admin)
        if found[kept]:
            ctx.record(step.name, "info", f"{live} is already renamed to {kept}: finishing a swap cut short",
                       databases=found)
        else:
            if db.sessions(admin, live):
                raise StepError(f"Sessions are still connected to {live}.",
                                next_action="run terminate_sessions again, then this cell.")
            execute_actions(ctx, admin, step)
        ctx.update(swap=Swap(live=live, kept=kept, restored=restored))
        return pd.DataFrame([_catalog(ctx, admin)])


def swap_promote_copy(ctx: RunContext) -> pd.DataFrame:
    def promoted(c: RunContext, s: Step) -> Check:
        with db.connect(c.admin_url, step=s.name) as admin:
            found = _catalog(c, admin)
        live, kept, restored = c.database, kept_name(c), restored_name(c)
        return compare("the copy is live, the old database kept", {live: True, kept: True, restored: False}, found)

    return dispatch(ctx, ctx.planned(StepName.SWAP_PROMOTE), _swap_promote, postcondition=promoted)


def _swap_promote(ctx: RunContext, step: Step) -> pd.DataFrame:
    live, kept, restored = ctx.database, kept_name(ctx), restored_name(ctx)
    with db.connect(ctx.admin_url, step=step.name) as admin:
        found = _catalog(ctx, admin)
        if found[live] and not found[restored]:
            ctx.record(step.name, "info", f"the copy already carries the name {live}: finishing a swap cut short")
            for action in step.actions[1:]:  # keep it closed until phase 04 reopens it
                admin.execute(action.text.encode())
                ctx.record(step.name, "changed", action.text, kind=action.kind, target=action.target)
        else:
            try:
                execute_actions(ctx, admin, step)
            except Exception as err:
                undo = db.rename_statement(kept, live)
                admin.execute(undo)
                ctx.record(step.name, "changed", f"undone: {undo.as_string(admin)}")
                ctx.update(swap=None)
                raise StepError(f"Putting the restored copy in place failed ({err}); the original is back as {live}.",
                                next_action=unblock_advice(ctx), escalate="L3") from None
        ctx.update(swap=Swap(live=live, kept=kept, restored=restored, completed=True))
        ctx.record(step.name, "info", f"restored copy is now {live}; the pre-rollback database is kept as {kept} "
                   "(closed to connections)", kept=kept, live=live, databases=_catalog(ctx, admin))
    return pd.DataFrame([{"database": live, "is": "the restored copy"},
                         {"database": kept, "is": "the pre-rollback database, kept (closed to connections)"}])


# --- Prisma's bookkeeping -----------------------------------------------------------------------

def check_bookkeeping(ctx: RunContext) -> str:
    """After a full restore ``_prisma_migrations`` must equal the backup's rows: assert, never edit."""
    return dispatch(ctx, ctx.planned(StepName.BOOKKEEPING), _bookkeeping, postcondition=checked_before)


def _bookkeeping(ctx: RunContext, step: Step) -> str:
    backup = ctx.state().need("backup", "verify_backup (01_prepare)")
    manifest = bk.load_manifest(Path(backup.path))
    with private_session(ctx, step, step.target) as conn:
        rows = applied_migrations(conn)
    expected = manifest["prisma_migrations"] if manifest else None
    state = migration_state(rows, ctx.migration_id)
    ctx.record(step.name, "info", f"{ctx.migration_id} is {state} after the restore", rows=rows, state=state)
    if expected is not None and rows != expected:
        raise StepError("_prisma_migrations after the restore differs from the backup's manifest.",
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
