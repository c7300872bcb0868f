"""Strategy ``resolve-only``: a migration that failed without changing the schema is marked rolled back, nothing else.

Prisma's P3009 state (``finished_at`` empty, the error in ``logs``) with the live schema equal
to the backup's: a restore would undo nothing and discard every write since the backup. This
does what ``prisma migrate resolve --rolled-back NAME`` does (prisma-engines, schema-core
``mark_migration_rolled_back``): under the schema engine's advisory lock, every row of that
migration that is not finished and not rolled back gets ``rolled_back_at = now()``, by its id;
nothing else is touched. It discards nothing (``rows_lost`` 0, measured: the live database is
never replaced and the run's only change is that row, checked against the captured table).

Steps: ``gate`` and ``resolve-rolled-back`` (02), ``validate-resolved`` (03), ``close`` (05).
What must change before the next deploy (the rows that make the failed statement fail) is read
with a read-only query in phase 01 and again in 03.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
from psycopg import sql

from rollbacklib.checks import Check, as_frame, compare, describe_failures
from rollbacklib.errors import StepError, ValidationFailed
from rollbacklib.journal import read_events
from rollbacklib.postgres import backup as bk
from rollbacklib.postgres import database as db
from rollbacklib.prisma import MIGRATIONS_TABLE, applied_migrations, migration_state
from rollbacklib.steps import Action, Phase, Step, StepName
from rollbacklib.strategies import Assessment

# The schema engine's advisory lock on PostgreSQL (prisma-engines, sql-schema-connector: acquire_lock).
PRISMA_ADVISORY_LOCK = 72707369


def _failed_rows(rows: list[dict], migration_id: str) -> list[dict]:
    return [r for r in rows if r["migration_name"] == migration_id and r["finished_at"] is None
            and r["rolled_back_at"] is None]


def statements(ids: list[str]) -> list[sql.Composable]:
    """What ``prisma migrate resolve --rolled-back`` runs: lock, one UPDATE per failed row (by id), unlock."""
    return [sql.SQL("SELECT pg_advisory_lock({})").format(sql.Literal(PRISMA_ADVISORY_LOCK)),
            *[sql.SQL("UPDATE {} SET {} = now() WHERE {} = {}").format(
                sql.Identifier(MIGRATIONS_TABLE), sql.Identifier("rolled_back_at"), sql.Identifier("id"),
                sql.Literal(i)) for i in ids],
            sql.SQL("SELECT pg_advisory_unlock({})").format(sql.Literal(PRISMA_ADVISORY_LOCK))]


class ResolveOnly:
    name = "resolve-only"
    summary = "mark the failed migration rolled back, as `prisma migrate resolve --rolled-back` does; nothing restored"

    def __init__(self):
        self.executors = {StepName.RESOLVE: mark_rolled_back, StepName.RESOLVE_CHECK: validate_resolved}

    def assess(self, ctx, situation) -> Assessment:
        common = dict(rows_lost=0, updates_lost=0, seconds_lost=0.0, estimate_seconds=0.0,
                      estimate_basis="one UPDATE of one row of _prisma_migrations: no data moved",
                      discards="nothing: no row and no update is discarded; only _prisma_migrations.rolled_back_at of "
                      "the failed row is set", detail={"logs": situation.logs, "blockers": situation.blockers})
        if situation.state != "failed":
            return Assessment(self.name, False, f"{situation.migration_id} is {situation.state}, not failed: Prisma "
                              "refuses to mark it rolled back (P3012 when applied, P3011 without a row)", **common)
        if situation.schema_equal is None:
            return Assessment(self.name, False, "the backup has no manifest with its schema: whether the failed "
                              "migration changed the schema can not be told", **common)
        if not situation.schema_equal:
            return Assessment(self.name, False, f"{situation.migration_id} failed part way: the live schema differs "
                              f"from the backup's ({len(situation.schema_diff)} difference(s)); marking it rolled "
                              "back would leave those changes in place", **common)
        return Assessment(self.name, True, f"{situation.migration_id} failed without changing the schema (Prisma "
                          "P3009): the live schema equals the backup's, so nothing needs restoring", **common)

    def plan_steps(self, ctx, admin, facts) -> list[Step]:
        from rollbacklib.phases import close

        live = ctx.database
        with db.connect(ctx.url, step=StepName.PLAN) as conn:
            ids = [r["id"] for r in _failed_rows(applied_migrations(conn), ctx.migration_id)]
            rendered = [s.as_string(conn) for s in statements(ids)]
        undo = tuple(sql.SQL("UPDATE {} SET {} = NULL WHERE {} = {}").format(
            sql.Identifier(MIGRATIONS_TABLE), sql.Identifier("rolled_back_at"), sql.Identifier("id"),
            sql.Literal(i)).as_string(None) for i in ids)
        (closing,) = close.plan_steps(ctx)
        return [
            Step(StepName.GATE, Phase.EXECUTE, live, "approve this plan: mark the failed migration rolled back",
                 (Action("prompt", live, f"approve plan (its digest is in plan.json) to mark {ctx.migration_id} "
                         "rolled back"),), postcondition="an approval of this plan's digest is journaled"),
            Step(StepName.RESOLVE, Phase.EXECUTE, live, f"mark {ctx.migration_id} rolled back exactly as `prisma "
                 f"migrate resolve --rolled-back {ctx.migration_id}` does; nothing else is touched",
                 tuple(Action("sql", live, text) for text in rendered), destructive=True,
                 requires=(StepName.GATE,), precondition="the migration is failed now and the live schema still "
                 "equals the backup's", postcondition="rolled_back_at is set on the failed row(s); every other value "
                 "of _prisma_migrations is as captured", undo=undo),
            Step(StepName.RESOLVE_CHECK, Phase.VALIDATE, live, "the migration is rolled back, the schema is the "
                 "backup's, nothing else changed; what must change before the next deploy",
                 (Action("read", live, "SELECT * FROM _prisma_migrations; the schema catalog against the backup's "
                         "manifest; the database's oid; the failed statement's condition (read-only)"),),
                 requires=(StepName.RESOLVE,), postcondition="every check passes"),
            replace(closing, requires=(StepName.RESOLVE_CHECK,)),
        ]


# --- executing ----------------------------------------------------------------------------------

def _captured_migrations(ctx) -> list[dict]:
    captured = ctx.state().need("captured", "capture_state (01_prepare)")
    return json.loads((Path(captured.folder) / captured.files["migrations"]).read_text())


def _schema_is_the_backups(ctx, conn) -> Check:
    manifest = bk.load_manifest(Path(ctx.state().need("backup", "verify_backup (01_prepare)").path)) or {}
    return compare("the live schema equals the backup's", manifest.get("schema_fingerprint"),
                   db.schema_fingerprint(db.schema_catalog(conn)))


def _still_failed(ctx, step: Step) -> Check:
    with db.connect(ctx.url, step=step.name) as conn:
        state = migration_state(applied_migrations(conn), ctx.migration_id)
        schema = _schema_is_the_backups(ctx, conn)
    if state != "failed":
        return Check("the migration is failed now", False, "failed", state,
                     detail=f"{ctx.migration_id} is {state} now: run 01_prepare again for a new plan")
    return schema if not schema.passed else Check("the migration is failed now and the schema is the backup's", True)


def _only_rolled_back_at(ctx, rows: list[dict]) -> Check:
    """``_prisma_migrations`` now equals the captured one but for ``rolled_back_at`` of the failed row(s)."""
    before = {r["id"]: r for r in _captured_migrations(ctx)}
    failed = {r["id"] for r in _failed_rows(list(before.values()), ctx.migration_id)}
    differences = []
    for row in rows:
        old = before.get(row["id"])
        if old is None:
            differences.append(f"{row['id']}: new row")
            continue
        for key, value in row.items():
            if key == "rolled_back_at" and row["id"] in failed:
                if value is None:
                    differences.append(f"{row['id']}: rolled_back_at still empty")
            elif value != old[key]:
                differences.append(f"{row['id']}: {key} changed")
    differences += [f"{i}: row gone" for i in before.keys() - {r['id'] for r in rows}]
    return Check("only rolled_back_at of the failed row changed in _prisma_migrations", not differences, [],
                 differences)


def _rolled_back(ctx, step: Step) -> Check:
    with db.connect(ctx.url, step=step.name) as conn:
        return _only_rolled_back_at(ctx, applied_migrations(conn))


def mark_rolled_back(ctx):
    """Step ``resolve-rolled-back``: the statements the plan shows, run as shown; each UPDATE must touch one row."""
    from rollbacklib.dispatch import dispatch

    return dispatch(ctx, StepName.RESOLVE, _resolve, precondition=_still_failed, postcondition=_rolled_back)


def _resolve(ctx, step: Step) -> str:
    with db.connect(ctx.url, step=step.name) as conn:
        for action in step.actions:
            cursor = conn.execute(action.text)
            changes = action.text.startswith("UPDATE")
            ctx.record(step.name, "changed" if changes else "ran", action.text, kind=action.kind, target=action.target,
                       rows=cursor.rowcount if changes else None)
            if changes and cursor.rowcount != 1:
                raise StepError(f"{action.text} updated {cursor.rowcount} rows, expected 1.",
                                next_action="read _prisma_migrations by hand before going on; the journal has what "
                                "ran.", step=step.name, expected=1, found=cursor.rowcount, escalate="L3")
    return f"{ctx.migration_id} marked rolled back"


def validate_resolved(ctx) -> pd.DataFrame:
    """Step ``validate-resolved``: the checks, ``rows_lost`` as measured, and what must change before the next deploy."""
    from rollbacklib.dispatch import checked_before, dispatch

    return dispatch(ctx, StepName.RESOLVE_CHECK, _validate, postcondition=checked_before)


def _validate(ctx, step: Step) -> pd.DataFrame:
    from rollbacklib.strategies.situation import _blockers, intended_effects, migration_script, effect_status

    state = ctx.state()
    with db.connect(ctx.url, step=step.name) as conn:
        rows = applied_migrations(conn)
        checks = [compare("the migration is rolled back (rolled_back_at set, as Prisma reads it)", "rolled-back",
                          migration_state(rows, ctx.migration_id)),
                  _schema_is_the_backups(ctx, conn), _only_rolled_back_at(ctx, rows)]
        oid = conn.execute("SELECT oid::bigint FROM pg_database WHERE datname = current_database()").fetchone()[0]
        checks.append(compare("the live database is the original one (never replaced)", state.original_oid, oid))
        counts = db.row_counts(conn)
        script = migration_script(ctx)
        catalog = db.schema_catalog(conn)
        effects = [{**e.to_dict(), "status": effect_status(e, catalog, catalog)}
                   for e in intended_effects(script.read_text(encoding="utf-8"))] if script else []
        blockers = _blockers(conn, effects)
    changed = [e for e in read_events(ctx.run_dir) if e["status"] == "changed"]
    only_resolve = all(e["step"] == StepName.RESOLVE for e in changed)
    passed = all(c.passed for c in checks)
    rows_lost = None
    if passed and only_resolve:
        from rollbacklib.postgres.rowdiff import TableDiff, totals

        rows_lost = totals([TableDiff(t, kept_rows=n, restored_rows=n, note="not replaced: nothing was restored")
                            for t, n in counts.items() if t != MIGRATIONS_TABLE], [])
        rows_lost["basis"] = (f"nothing restored: the live database (oid {oid}) was never replaced and the run's only "
                              f"change was {len(changed)} UPDATE(s) of _prisma_migrations.rolled_back_at")
    ctx.record(step.name, "info", "resolve-only: " + ("every check passed" if passed else "checks failed"),
               checks=[c.to_dict() for c in checks], passed=passed, rows_lost=rows_lost, blockers=blockers)
    for blocker in blockers:
        ctx.record(step.name, "info", f"before the next deploy: {blocker['must_change']} (first: "
                   f"{', '.join(blocker['first_keys'])})", blocker=blocker)
    if not passed:
        raise ValidationFailed(f"resolve-only did not leave what it should:\n{describe_failures(checks)}",
                               next_action="read _prisma_migrations and the schema by hand; escalate to L3.",
                               escalate="L3")
    return as_frame(checks)


STRATEGY = ResolveOnly()
