"""Is a database what the backup promised, and what the migration's config expects?

``against_manifest`` compares a database with the manifest of the backup it was restored
from (schema fingerprint, row counts, Prisma bookkeeping, first rows of every table, probes).
``against_expectations`` runs the checks the config states for the migration being rolled
back (columns and nullability, counts, queries, relations, sample).
"""

from __future__ import annotations

from rollbacklib.postgres import database as db
from rollbacklib.postgres.rows import NO_PRIMARY_KEY
from rollbacklib.checks import Check, compare, skipped
from rollbacklib.config import Expectations
from rollbacklib.prisma import applied_migrations


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
