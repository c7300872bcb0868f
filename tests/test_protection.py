"""A protected environment acts only on the digest of the plan as it stands now; a dry run changes nothing."""

from __future__ import annotations

import json
from types import SimpleNamespace

import psycopg
from typer.testing import CliRunner

from rollbacklib import protection
from rollbacklib.cli import app

from conftest import MIGRATION

runner = CliRunner()


def _protected(incident, tmp_path):
    text = incident.config.read_text().replace('"scenarios/', f'"{incident.config.resolve().parent}/scenarios/')
    config = tmp_path / "runbook-protected.toml"
    config.write_text(text.replace('[environments.drill]\n', '[environments.drill]\nprotected = true\n', 1))
    incident.config = config
    return incident


def catalog_snapshot(incident) -> dict:
    """What a dry run must leave as it was: databases, relations, columns, settings, comments, Prisma's rows, counts."""
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        databases = admin.execute("SELECT oid, datname, datallowconn, datconnlimit, datacl::text FROM pg_database "
                                  "ORDER BY datname").fetchall()
        settings = admin.execute("SELECT setdatabase, setrole, setconfig FROM pg_db_role_setting ORDER BY 1, 2"
                                 ).fetchall()
        shared_comments = admin.execute("SELECT objoid, description FROM pg_shdescription ORDER BY 1").fetchall()
    with psycopg.connect(incident.url, autocommit=True) as conn:
        return {
            "databases": databases, "settings": settings, "shared_comments": shared_comments,
            "classes": conn.execute("SELECT oid, relname, relkind, relfilenode FROM pg_class WHERE relnamespace = "
                                    "'public'::regnamespace ORDER BY relname").fetchall(),
            "attributes": conn.execute("SELECT attrelid::regclass::text, attname, atttypid, attnotnull, attisdropped "
                                       "FROM pg_attribute WHERE attnum > 0 AND attrelid IN (SELECT oid FROM pg_class "
                                       "WHERE relnamespace = 'public'::regnamespace) ORDER BY 1, 2").fetchall(),
            "comments": conn.execute("SELECT objoid, objsubid, description FROM pg_description ORDER BY 1, 2").fetchall(),
            "migrations": conn.execute("SELECT * FROM _prisma_migrations ORDER BY started_at").fetchall(),
            "counts": {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                       for t in ("users", "clients", "workflows", "_prisma_migrations")},
        }


def test_the_answer_a_protected_gate_takes():
    digest = "ab" * 32
    guarded, open_ = SimpleNamespace(protected=True, name="production"), SimpleNamespace(protected=False, name="drill")
    assert protection.expected_answer(guarded, MIGRATION, digest) == digest[:12]
    assert protection.expected_answer(open_, MIGRATION, digest) == MIGRATION
    assert protection.approves(guarded, digest, MIGRATION, digest)
    assert not protection.approves(guarded, MIGRATION, MIGRATION, digest)
    assert not protection.approves(guarded, digest[:12], MIGRATION, digest)  # the short form is typed, not passed
    assert protection.approves(open_, MIGRATION, MIGRATION, digest) and protection.approves(open_, digest, MIGRATION,
                                                                                            digest)


def test_yes_is_refused_in_a_protected_environment(incident, tmp_path):
    _protected(incident, tmp_path)
    result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--yes"))
    assert result.exit_code == 4, result.output
    assert "is protected: --yes (the migration ID) does not approve a plan there" in result.output
    assert "--approve SHA256" in result.output
    assert not incident.reports.exists() or not list(incident.reports.rglob("journal.jsonl"))  # nothing ran


def test_a_dry_run_changes_nothing_and_a_changed_plan_invalidates_its_digest(incident, tmp_path):
    _protected(incident, tmp_path)
    before = catalog_snapshot(incident)
    dry = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--dry-run", "--run-id", "r1"))
    assert dry.exit_code == 0, dry.output
    assert catalog_snapshot(incident) == before  # catalog, settings, comments, Prisma's rows, counts
    run_dir = next(incident.reports.rglob("r1"))
    digest = json.loads((run_dir / "plan.json").read_text())["digest"]
    assert f"sha256 {digest}" in dry.output
    assert "swap          loses" in dry.output and "estimated" in dry.output  # each strategy's loss and time
    assert "Strategies (recommended: swap; chosen: swap)" in dry.output

    with psycopg.connect(incident.admin_url, autocommit=True) as admin:  # the plan changes: a setting to carry
        admin.execute(f'ALTER DATABASE "{incident.database}" SET work_mem = \'8MB\'')
    changed = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--run-id", "r1",
                                                   "--approve", digest))
    assert changed.exit_code == 4, changed.output
    assert "the plan changed since it was read" in changed.output
    with psycopg.connect(incident.url) as conn:  # refused at the gate: the migration is still applied, live
        assert conn.execute("SELECT count(*) FROM _prisma_migrations WHERE migration_name = %s",
                            (MIGRATION,)).fetchone()[0] == 1
    assert json.loads((run_dir / "plan.json").read_text())["digest"] != digest  # phase 01 rendered it again
    # the plan's digest as it stands now approves it: tests/test_strategies.py (partly applied, then --approve)


def test_a_protected_gate_in_the_notebook_takes_the_digest(monkeypatch):
    """Typed: the digest's first 12 characters, not the migration ID; given as approve: the whole digest."""
    import pytest

    from rollbacklib.errors import RefusedError
    from rollbacklib.phases import execute

    digest = "cd" * 32
    ctx = SimpleNamespace(migration_id=MIGRATION, approve="", database="automation_platform", run_id="r1",
                          env=SimpleNamespace(protected=True, name="production"), plan=lambda: None)
    asked = []
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or digest[:12])
    assert execute._ask(ctx, digest) == "typed at the notebook's prompt"
    assert f"type the plan digest's first 12 characters ({digest[:12]})" in asked[0]
    monkeypatch.setattr("builtins.input", lambda prompt: MIGRATION)
    with pytest.raises(RefusedError, match="not the plan digest's first 12 characters") as refused:
        execute._ask(ctx, digest)
    assert digest[:12] in refused.value.next_action  # type it again: the copy stays closed and ready
    ctx.approve = digest
    assert execute._ask(ctx, digest) == "approve parameter"
