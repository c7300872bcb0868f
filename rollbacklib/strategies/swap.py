"""Strategy ``swap``: restore the backup beside the live database, validate it, swap it in by renaming.

It undoes any schema change, and discards every write made after the backup: the rows
inserted, updated or deleted since, which phase 01 projects from the live database against
the backup's manifest (``situation.projected_swap_loss``) and ``compare-rows`` counts exactly
after the swap. Its steps are the phase modules' own (``rollbacklib.phases``), each run by its
notebook cell, so it has no executor of its own.
"""

from __future__ import annotations

from rollbacklib.strategies import Assessment


def _seconds(value: float | None) -> str:
    return "an unknown time" if value is None else f"{value:.0f} s"


def discards(situation) -> str:
    loss = situation.swap_loss
    tables = ", ".join(f"{t}: {d['inserted']} inserted, {d['updated'] if d['updated'] is not None else '?'} updated, "
                       f"{d['deleted']} deleted" for t, d in loss["tables"].items() if d["lost"])
    return (f"{loss['inserted'] + loss['deleted']} row(s) and {loss['updated']} update(s) written since the backup "
            f"({loss['inserted']} inserted, {loss['updated']} updated, {loss['deleted']} deleted; "
            f"{_seconds(situation.seconds_since_backup)} of writes)" + (f": {tables}" if tables else "")
            + f"; {loss['basis']}, counted exactly after the swap by compare-rows")


class Swap:
    name = "swap"
    summary = "restore the backup beside the live database, validate it, swap it in (the live one is kept)"
    executors: dict = {}

    def assess(self, ctx, situation) -> Assessment:
        loss = situation.swap_loss
        common = dict(rows_lost=loss["inserted"] + loss["deleted"], updates_lost=loss["updated"],
                      seconds_lost=situation.seconds_since_backup, estimate_seconds=situation.restore_seconds,
                      estimate_basis=f"restore of {situation.backup_bytes} bytes at "
                      f"{situation.throughput['bytes_per_second'] / 1e6:.1f} MB/s ({situation.throughput['basis']})",
                      discards=discards(situation), detail={"tables": loss["tables"]})
        if situation.state in ("absent", "rolled-back"):
            return Assessment(self.name, False, f"{situation.migration_id} is {situation.state} in _prisma_migrations: "
                              "there is no applied migration to undo", **common)
        if situation.state == "failed" and situation.schema_equal:
            return Assessment(self.name, False, f"{situation.migration_id} failed without changing the schema (Prisma "
                              "P3009: finished_at is empty, its error is in _prisma_migrations.logs); the live schema "
                              "equals the backup's, so a restore would undo nothing but discard "
                              f"{common['rows_lost']} row(s) and {common['updates_lost']} update(s) made since the "
                              "backup", **common)
        if situation.partly_applied:
            applied = [e for e in situation.effects if e["status"].startswith("applied")]
            why = (f"{situation.migration_id} failed part way ({len(applied)} of {len(situation.effects)} changes of "
                   "its migration.sql applied, the schema differs from the backup's): a full restore undoes them")
        else:
            why = f"{situation.migration_id} is {situation.state}: a full restore to the backup undoes it"
        return Assessment(self.name, True, why, **common)

    def plan_steps(self, ctx, admin, facts) -> list:
        from rollbacklib.phases import close, compare_rows, execute, restore_service, salvage, validate

        carry = [salvage.carry_step(ctx, admin)] if salvage.requested(ctx) else []
        return [*execute.plan_steps(ctx, facts, admin), *validate.plan_steps(ctx), *restore_service.plan_steps(ctx),
                compare_rows.compare_rows_step(ctx, admin), *carry, *close.plan_steps(ctx)]


STRATEGY = Swap()
