"""Strategy ``in-place``: restore the backup INTO the live database, in one transaction (the seed's literal path).

For platforms that cannot create or rename databases. It undoes any schema change and, like
the swap, discards every write made after the backup: the same rows, projected from the live
database against the backup's manifest (``situation.swap_loss``, the swap's projection), and
counted exactly after the window (``compare-rows``: the safety copy against the row hashes of
the restored database that ``validate-in-place`` took before the reopen, when the copy was
taken). Its time is the restore's, plus the safety copy's (a server-side file copy of the live
database) when the server has room for one.

Its steps (``rollbacklib.phases.in_place``): the gate, ``stop-services``, ``block-connections``,
``drain``, ``terminate``, ``safety-copy``, ``restore-in-place``, ``validate-in-place``,
``reopen-connections``, ``health`` (02), then the services back with their health and smoke
tests (04), ``compare-rows`` and the close (05). Every 02 step runs from the notebook's generic
strategy cell, with the in-place live preconditions (the live database is the original, by oid;
blocked; no session); the window's own cells, whose preconditions are the swap's (a validated
copy), are journaled no-ops for it (``dispatch.run_by_strategy_cell``), so a swap's
preconditions never weaken. ``compare-rows`` runs from 05's own cell.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rollbacklib.errors import ConfigError
from rollbacklib.steps import Action, Phase, Step, StepName
from rollbacklib.strategies import Assessment
from rollbacklib.strategies.swap import discards


def _guarded(run):
    """An in-place executor runs only in a plan that holds ``restore-in-place`` (plan.json, under the digest)."""
    def guarded(ctx):
        plan = ctx.plan()
        if plan is None or StepName.RESTORE_IN_PLACE not in {s.name for s in plan.steps}:
            raise ConfigError("state.json says strategy in-place, but plan.json holds no restore-in-place step: "
                              "refused, nothing was changed.", step="strategy",
                              next_action="start a new run from 01_prepare; find out who edited state.json "
                              "(verify-audit names it).")
        return run(ctx)

    guarded.__name__ = getattr(run, "__name__", "in_place_step")
    return guarded


def _executors() -> dict:
    from rollbacklib.phases import execute
    from rollbacklib.phases import in_place as ip

    runs = {StepName.STOP_SERVICES: execute.stop_services_step, StepName.BLOCK: ip.block, StepName.DRAIN: ip.drain,
            StepName.TERMINATE: ip.terminate, StepName.SAFETY_COPY: ip.take_safety_copy,
            StepName.RESTORE_IN_PLACE: ip.restore_in_place, StepName.VALIDATE_IN_PLACE: ip.validate_in_place,
            StepName.REOPEN: ip.reopen, StepName.HEALTH: ip.health}
    return {name: _guarded(run) for name, run in runs.items()}


class InPlace:
    name = "in-place"
    summary = ("restore the backup INTO the live database in one transaction (no second database; a safety copy "
               "first when the server has room)")

    @property
    def executors(self) -> dict:
        return _executors()

    def assess(self, ctx, situation) -> Assessment:
        loss = situation.swap_loss
        safety = self._safety(ctx)
        estimate = situation.restore_seconds
        basis = (f"restore of {situation.backup_bytes} bytes at {situation.throughput['bytes_per_second'] / 1e6:.1f} "
                 f"MB/s ({situation.throughput['basis']}), in one transaction; safety copy: {safety['why']}")
        if estimate is not None and safety["take"] and safety["size"]:  # a file copy: read and written once
            estimate += safety["size"] / situation.throughput["bytes_per_second"]
        common = dict(rows_lost=loss["inserted"] + loss["deleted"], updates_lost=loss["updated"],
                      seconds_lost=situation.seconds_since_backup, estimate_seconds=estimate, estimate_basis=basis,
                      discards=discards(situation).replace("after the swap by compare-rows",
                                                           "after the window by compare-rows, against the safety copy"),
                      detail={"tables": loss["tables"], "safety_copy": safety})
        if situation.state in ("absent", "rolled-back"):
            return Assessment(self.name, False, f"{situation.migration_id} is {situation.state} in _prisma_migrations: "
                              "there is no applied migration to undo", **common)
        if situation.state == "failed" and situation.schema_equal:
            return Assessment(self.name, False, f"{situation.migration_id} failed without changing the schema: a "
                              "restore would undo nothing but discard the writes made since the backup", **common)
        how = ("failed part way (the schema differs from the backup's)" if situation.partly_applied
               else situation.state)
        return Assessment(self.name, True, f"{situation.migration_id} is {how}: the backup restored into the live "
                          "database in one transaction undoes it (a failure leaves it as it was); "
                          + ("a safety copy is taken first" if safety["take"] else "NO safety copy: " + safety["why"]),
                          **common)

    @staticmethod
    def _safety(ctx) -> dict:
        """Whether the safety copy fits, read from the server now (the plan decides again, with the same figures)."""
        from rollbacklib.phases import in_place as ip
        from rollbacklib.postgres import database as db
        from rollbacklib.postgres.in_place import room_for_copy

        mode = ip.safety_mode(ctx)
        if mode == "never":
            return {"take": False, "why": 'in_place_safety_copy = "never"', "size": None, "fits": None}
        with db.connect(ctx.admin_url, step=StepName.STRATEGY) as admin:
            room = room_for_copy(admin, ctx.database, ctx.env.thresholds.restore_space_factor)
            size = admin.execute("SELECT pg_database_size(%s)", (ctx.database,)).fetchone()[0]
        return {"take": room.fits is not False, "why": room.describe(), "size": size, "fits": room.fits,
                "needed": room.needed, "free": room.free}

    def plan_steps(self, ctx, admin, facts) -> list[Step]:
        from rollbacklib.phases import close, compare_rows, execute, restore_service
        from rollbacklib.phases import in_place as ip

        live = ctx.database
        window = ip.plan_steps(ctx, facts, admin)
        safety = next(s for s in window if s.name == StepName.SAFETY_COPY)
        backup = Path(ctx.state().need("backup", "verify_backup (01_prepare)").path).name
        copy = (f"after a safety copy {safety.target}" if safety.actions else "with NO safety copy (see its step)")
        gate = Step(StepName.GATE, Phase.EXECUTE, live,
                    f"approve this plan: restore {backup} INTO {live} in one transaction {copy}; every write since "
                    "the backup is discarded",
                    (Action("prompt", live, f"approve plan (its digest is in plan.json) to restore {backup} into "
                            f"{live} in place"),), requires=(StepName.PLAN,),
                    postcondition="an approval of this plan's digest is journaled")
        stop = [s for s in execute.plan_steps(ctx, facts, admin) if s.name == StepName.STOP_SERVICES]
        window = [replace(s, requires=(StepName.STOP_SERVICES,)) if s.name == StepName.BLOCK else s for s in window]
        (closing,) = close.plan_steps(ctx)
        later = [replace(s, requires=tuple(StepName.VALIDATE_IN_PLACE if r == StepName.VALIDATION else r
                                           for r in s.requires)) for s in restore_service.plan_steps(ctx)]
        rows = compare_rows.in_place_step(ctx, admin, safety_planned=bool(safety.actions))
        return [gate, *stop, *window, *later, rows, closing]


STRATEGY = InPlace()
