"""Is a database what the backup promised, and what the migration's config expects?

``against_manifest`` compares a database with the manifest of the backup it was restored
from (schema fingerprint, row counts, Prisma bookkeeping, first rows of every table, probes).
``against_expectations`` runs the checks the config states for the migration being rolled
back (columns and nullability, counts, queries, relations, sample).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from rollbacklib.postgres import database as db
from rollbacklib.postgres import properties as dbp
from rollbacklib.postgres.rows import NO_PRIMARY_KEY
from rollbacklib.checks import Check, as_frame, compare, describe_failures, failed, skipped
from rollbacklib.config import Expectations
from rollbacklib.errors import ValidationFailed
from rollbacklib import way_back
from rollbacklib.postgres import backup as bk
from rollbacklib.prisma import applied_migrations, migration_state
from rollbacklib.steps import Action, checked_before, Phase, Step, StepName, dispatch, private_actions, private_session

PHASE = Phase.VALIDATE


def _schema_diff(expected: dict, found: dict) -> str:
    lines = []
    for kind in ("columns", "constraints", "indexes"):
        want = {tuple(sorted(x.items())) for x in expected.get(kind, [])}
        have = {tuple(sorted(x.items())) for x in found.get(kind, [])}
        for item in sorted(want - have)[:5]:
            lines.append(f"missing {kind[:-1]} {dict(item)}")
        for item in sorted(have - want)[:5]:
            lines.append(f"unexpected {kind[:-1]} {dict(item)}")
    return "; ".join(lines)


def against_manifest(conn, manifest: dict) -> list[Check]:
    """Every comparison a manifest allows; each check says expected and found."""
    checks = []
    catalog = db.schema_catalog(conn)
    fingerprint = db.schema_fingerprint(catalog)
    check = compare("schema fingerprint equals backup", manifest["schema_fingerprint"], fingerprint)
    if not check.passed and "schema" in manifest:
        check.detail = _schema_diff(manifest["schema"], catalog)
    checks.append(check)

    counts = db.row_counts(conn)
    for table, expected in sorted(manifest.get("row_counts", {}).items()):
        checks.append(compare(f"rows in {table} equal backup", expected, counts.get(table)))

    checks.append(compare("_prisma_migrations equals backup", manifest.get("prisma_migrations", []),
                          applied_migrations(conn),
                          "after a full restore the bookkeeping is the backup's; the runbook asserts it, never edits it"))

    digests = db.table_digests(conn)
    for table, expected in sorted(manifest.get("table_digests", {}).items()):
        found = digests.get(table, {})
        checks.append(Check(f"first {expected['rows']} rows of {table} equal backup", expected["md5"] == found.get("md5"),
                            expected["md5"], found.get("md5"), f"ordered by {', '.join(expected['order_by'])}"))

    for probe in manifest.get("probes", []):
        if "error" in probe:
            continue
        checks.append(compare(f"{probe['name']} equals backup", probe["value"], db.run_probe(conn, probe["sql"])))
    return checks


def against_expectations(conn, expect: Expectations | None, manifest: dict | None) -> list[Check]:
    if expect is None:
        return [skipped("migration expectations", "this migration has no [migrations.<id>.expect] in the config")]
    checks = []
    for col in expect.columns:
        info = db.column_info(conn, col.table, col.column)
        label = f"{col.table}.{col.column}"
        checks.append(compare(f"{label} {'exists' if col.exists else 'is absent'}", col.exists, info is not None))
        if info is None or not col.exists:
            continue
        if col.nullable is not None:
            checks.append(compare(f"{label} nullable", col.nullable, info["nullable"]))
        if col.data_type is not None:
            checks.append(compare(f"{label} type", col.data_type, info["data_type"]))

    counts = db.row_counts(conn) if expect.tables_match_backup else {}
    for table in expect.tables_match_backup:
        if not manifest:
            checks.append(skipped(f"rows in {table} equal pre-migration", "no manifest to compare with"))
            continue
        checks.append(compare(f"rows in {table} equal pre-migration", manifest["row_counts"].get(table), counts.get(table)))

    recorded = {p["sql"]: p for p in (manifest or {}).get("probes", [])}
    for query in expect.queries:
        value = db.run_probe(conn, query.sql)
        probe = recorded.get(query.sql)
        if probe is None or "error" in probe:
            checks.append(skipped(query.name, f"not recorded in the backup's manifest; found {value!r}"))
        else:
            checks.append(compare(f"{query.name} unchanged", probe["value"], value))

    for rel in expect.relations:
        ref_table, ref_column = rel.references.split(".")
        label = f"{rel.table}.{rel.column} -> {rel.references}"
        checks.append(compare(f"foreign key {label} exists", True,
                              db.foreign_key_exists(conn, rel.table, rel.column, ref_table, ref_column)))
        checks.append(compare(f"no orphans in {label}", 0, db.orphan_count(conn, rel.table, rel.column, ref_table, ref_column)))
    return checks


def sample_difference(before: list[dict], after: list[dict], key: list[str]) -> dict:
    """Rows of a sample taken before the rollback that the restored database no longer has.

    ``key`` is the table's primary key (``database.primary_key_columns``), composite or not;
    ``missing_after`` lists each lost row's key values in that order. No key: no comparison.
    """
    sampled = {"sampled_before": len(before), "sampled_after": len(after), "key": key}
    if not key:
        return {**sampled, "missing_after": None, "reason": NO_PRIMARY_KEY}
    after_keys = {tuple(row.get(c) for c in key) for row in after}
    missing = [[row.get(c) for c in key] for row in before if tuple(row.get(c) for c in key) not in after_keys]
    return {**sampled, "missing_after": missing}


# --- phase 03 ---------------------------------------------------------------------------------

def plan_steps(ctx, admin=None) -> list[Step]:
    from rollbacklib.phases.execute import restored_name
    from rollbacklib.phases.swap import validated_swap_steps

    copy = restored_name(ctx)
    before, after = validated_swap_steps(ctx, admin)
    return before + [Step(StepName.VALIDATION, PHASE, copy,
                          "the restored copy (closed, under its own name) against the backup and the migration's checks",
                          private_actions(copy, admin) + (
                              Action("read", copy, "schema fingerprint, row counts, _prisma_migrations, first rows of "
                                     "every table, probes, configured expectations, database settings and grants, "
                                     "sampled rows"),),
                          destructive=True, requires=(StepName.BOOKKEEPING,), postcondition="every check passes"),
                      compare_rows_step(ctx, admin)] + after


# --- the rows the restore discarded -------------------------------------------------------------

def compare_rows_step(ctx, admin=None) -> Step:
    """The kept database against the validated copy, both read through private connections, both still closed.

    The kept database keeps ``CONNECTION LIMIT 0`` throughout and is closed again the instant the
    runbook has connected; the copy is read under its own name (no application knows it) before
    it goes live, so nothing writes to either while they are compared. Its time adds to the downtime.
    """
    from rollbacklib.phases.execute import kept_name, restored_name

    copy, kept = restored_name(ctx), kept_name(ctx)
    return Step(StepName.COMPARE_ROWS, PHASE, kept,
                "the rows the restore discarded: the kept pre-rollback database against the restored copy, by key",
                private_actions(kept, admin) + private_actions(copy, admin) + (
                    Action("read", f"{kept}, {copy}", "per table, on each side: SELECT key, md5(row) ORDER BY key "
                           "through a cursor; the two streams merged: keys only in the kept database (inserted), "
                           "only in the copy (deleted), in both with different rows (updated)"),),
                destructive=True, requires=(StepName.VALIDATION,),
                postcondition=f"{kept} is closed again (ALLOW_CONNECTIONS false, CONNECTION LIMIT 0); {copy} still "
                "closed", undo=tuple(db.private_connection_statements(name)[1].as_string(admin) for name in (kept, copy)))


def _both_closed(ctx, step: Step) -> Check:
    from rollbacklib.phases.execute import restored_name

    swap = ctx.state().need("swap", "swap_keep_live (02_execute)")
    copy = ctx.database if swap.completed else restored_name(ctx)  # a re-run after the copy went live
    with db.connect(ctx.admin_url, step=step.name) as admin:
        found = {swap.kept: db.database_settings(admin, swap.kept),
                 copy: db.database_settings(admin, copy)["allow_connections"]}
    return compare("the kept database is closed again and the copy still closed",
                   {swap.kept: {"allow_connections": False, "connection_limit": 0}, copy: False}, found)


def compare_rows(ctx) -> pd.DataFrame:
    """Rows inserted, updated or deleted after the backup that the restore discarded, per table (RPO in rows)."""
    return dispatch(ctx, ctx.planned(StepName.COMPARE_ROWS), _compare_rows, postcondition=_both_closed)


def _compare_rows(ctx, step: Step) -> pd.DataFrame:
    """A comparison that cannot be made (whatever the reason) is journaled as not measured, with the reason,
    and does not hold the service down: what must hold is the postcondition, both databases closed."""
    from rollbacklib.phases.execute import restored_name
    from rollbacklib.postgres import rowdiff

    swap = ctx.state().need("swap", "swap_keep_live (02_execute)")
    copy = restored_name(ctx)
    try:
        with private_session(ctx, step, swap.kept) as kept, private_session(ctx, step, copy) as restored:
            lost = rowdiff.diff_databases(kept, restored)
    except Exception as err:  # noqa: BLE001 - a measurement; the postcondition guards the databases
        failure = f"{type(err).__name__}: " + (getattr(err, "message", None) or str(err)).splitlines()[0]
        ctx.record(step.name, "info", f"rows lost not measured: {failure}", rows_lost=None, kept=swap.kept)
        return pd.DataFrame([{"rows lost": f"not measured: {failure}"}])
    ctx.record(step.name, "info", f"{lost['total']} row(s) written after the backup were discarded by the restore",
               rows_lost=lost, kept=swap.kept, restored=copy)
    return pd.DataFrame([{"table": t, "key": ", ".join(d["key"]), "inserted": d["inserted"], "updated": d["updated"],
                          "deleted": d["deleted"], "lost": d["lost"], "note": d["note"]}
                         for t, d in lost["tables"].items()])


def expected_description(ctx) -> tuple[dict, bool]:
    """What the live database must now equal: the manifest, or (plain backups) the restored copy."""
    backup = ctx.state().need("backup", "verify_backup (01_prepare)")
    manifest = bk.load_manifest(Path(backup.path))
    if manifest is not None:
        return manifest, True
    described = ctx.run_dir / "restored_description.json"
    return json.loads(described.read_text()), False


def validate_restored(ctx) -> pd.DataFrame:
    """Schema, counts, bookkeeping, rows, the migration's own expectations: all against the live database."""
    return dispatch(ctx, ctx.planned(StepName.VALIDATION), _validate, postcondition=checked_before)


def _validate(ctx, step: Step) -> pd.DataFrame:
    expected, from_manifest = expected_description(ctx)
    state = ctx.state()
    with private_session(ctx, step, step.target) as conn:
        checks = against_manifest(conn, expected)
        checks += against_expectations(conn, ctx.migration.expect if ctx.migration else None,
                                       expected if from_manifest else None)
        migration = migration_state(applied_migrations(conn), ctx.migration_id)
        checks.append(Check(f"{ctx.migration_id} no longer applied", migration in ("absent", "rolled-back"),
                            "absent", migration))
        if state.live_properties:
            with db.connect(ctx.admin_url, step=step.name) as admin:
                found = dbp.comparable(dbp.read_properties(admin, step.target))
            checks.append(compare("database settings, grants and locale equal pre-rollback",
                                  dbp.comparable(state.live_properties), found))
        sample = ctx.migration.expect.sample if ctx.migration and ctx.migration.expect.sample else None
        lost = None
        if sample and state.captured and "sample" in state.captured.files:
            before = json.loads((Path(state.captured.folder) / state.captured.files["sample"]).read_text())
            after = db.sample_rows(conn, sample.table, sample.order_by, sample.limit)
            lost = sample_difference(before, json.loads(json.dumps(after, default=str)),
                                     db.primary_key_columns(conn, sample.table))
    passed = not failed(checks)
    ctx.record(step.name, "info", "passed" if passed else "FAILED", passed=passed,
               checks=[c.to_dict() for c in checks], expected_from="manifest" if from_manifest else "restored copy",
               sample_lost=lost)
    if not passed:
        raise ValidationFailed(
            f"The restored copy does not match the backup (it was not put live):\n{describe_failures(checks)}",
            next_action=(f"keep connections closed. The pre-rollback database is kept as "
                         f"{state.swap.kept if state.swap else None}; "
                         + way_back.describe(way_back.way_back(state, ctx.run_id), ctx.env.maintenance_database)),
            escalate="L3",
        )
    return as_frame(checks)
