"""The swap, inside the outage window (``rollbacklib.phases.window``): the live database is kept, the copy goes live.

``swap-keep-live`` renames the live database to ``<db>__pre_rollback_<run>`` (kept, never
dropped); ``swap-promote-copy`` gives the copy the live name, still closed until
``reopen-connections`` right after it, once its identity is checked from the maintenance
database (oid, marker, no session since it was closed). Both act from what the catalog shows,
so a swap cut short is finished, and a swap someone undid by hand is not run over.
"""

from __future__ import annotations

import pandas as pd

from rollbacklib.checks import Check, compare, describe_failures, failed
from rollbacklib.dispatch import dispatch, execute_actions
from rollbacklib.errors import StepError
from rollbacklib.live import kept_name, restored_name
from rollbacklib.phases.window import copy_identity_check, copy_ready_and_original_live, way_back_now
from rollbacklib.postgres import database as db
from rollbacklib.run import RunContext
from rollbacklib.state import Swap
from rollbacklib.steps import Step, StepName


# --- keep -----------------------------------------------------------------------------------------

def _original_kept(ctx: RunContext, step: Step) -> Check:
    original = ctx.live().original
    kept = kept_name(ctx.database, ctx.run_id)
    return compare(f"the original is kept as {kept}", kept, original.name if original else None)


def swap_keep_live(ctx: RunContext) -> pd.DataFrame:
    def may_keep(c: RunContext, s: Step) -> Check:
        if _original_kept(c, s).passed:
            return Check("the original is already kept: finishing a swap cut short", True)
        return copy_ready_and_original_live(c, s, blocked=True, no_sessions=True)

    return dispatch(ctx, StepName.SWAP_KEEP, _swap_keep, postcondition=_original_kept, precondition=may_keep)


def _swap_keep(ctx: RunContext, step: Step) -> pd.DataFrame:
    live, kept, restored = ctx.database, kept_name(ctx.database, ctx.run_id), restored_name(ctx.database, ctx.run_id)
    with db.connect(ctx.admin_url, step=step.name) as admin:
        if _original_kept(ctx, step).passed:
            ctx.record(step.name, "info", f"{live} is already renamed to {kept}: finishing a swap cut short")
        else:
            execute_actions(ctx, admin, step)
        ctx.update(swap=Swap(live=live, kept=kept, restored=restored))
    return pd.DataFrame([ctx.live().to_dict()])


# --- promote --------------------------------------------------------------------------------------

def _promoted(ctx: RunContext, step: Step) -> Check:
    now = ctx.live()
    copy, original = now.the_copy, now.original
    found = {"live name": copy.name if copy else None, "closed or reopened": bool(copy),
             "original": original.name if original else None}
    return compare("the copy has the live name and the original is kept",
                   {"live name": ctx.database, "closed or reopened": True,
                    "original": kept_name(ctx.database, ctx.run_id)}, found)


def swap_promote_copy(ctx: RunContext) -> pd.DataFrame:
    def may_promote(c: RunContext, s: Step) -> Check:
        now = c.live()
        copy = now.the_copy
        if copy is not None and copy.name == c.database:
            return Check("the copy already has the live name: finishing a promote cut short", True)
        checks = copy_identity_check(c, now)
        original = now.original
        checks.append(compare("the original is kept, the live name is free",
                              {"original": kept_name(c.database, c.run_id), "live name free": True},
                              {"original": original.name if original else None,
                               "live name free": now.named(c.database) is None}))
        bad = failed(checks)
        c.record(s.name, "info", "the copy's identity, read from the maintenance database: "
                 + ("holds" if not bad else "does NOT hold"), checks=[x.to_dict() for x in checks])
        return Check("the copy is the validated one, unchanged, and the live name is free", not bad,
                     [x.name for x in checks], [x.to_dict() for x in bad],
                     "" if not bad else "do not promote: " + describe_failures(checks) + "\n" + way_back_now(c))

    return dispatch(ctx, StepName.SWAP_PROMOTE, _swap_promote, postcondition=_promoted, precondition=may_promote)


def _swap_promote(ctx: RunContext, step: Step) -> pd.DataFrame:
    live, kept, restored = ctx.database, kept_name(ctx.database, ctx.run_id), restored_name(ctx.database, ctx.run_id)
    rename, *rest = step.actions
    with db.connect(ctx.admin_url, step=step.name) as admin:
        copy = ctx.live().the_copy
        if copy is not None and copy.name == live:
            ctx.record(step.name, "info", f"the copy already carries the name {live}: finishing a swap cut short")
            execute_actions(ctx, admin, step, tuple(rest))  # closed until reopen-connections, and the live comment
        else:
            try:
                execute_actions(ctx, admin, step, (rename,))
            except Exception as err:
                raise StepError(f"Putting the restored copy in place failed ({err}).",
                                next_action=way_back_now(ctx), escalate="L3") from None
            execute_actions(ctx, admin, step, tuple(rest))
        ctx.update(swap=Swap(live=live, kept=kept, restored=restored, completed=True))
        ctx.record(step.name, "info", f"restored copy is now {live}; the pre-rollback database is kept as {kept} "
                   "(closed to connections)", kept=kept, live=live, databases=ctx.live().to_dict())
    return pd.DataFrame([{"database": live, "is": "the restored copy"},
                         {"database": kept, "is": "the pre-rollback database, kept (closed to connections)"}])
