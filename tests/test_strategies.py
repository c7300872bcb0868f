"""Strategies judged against the live situation: failed and partly applied migrations, resolve-only as Prisma does it."""

from __future__ import annotations

import json

import psycopg
import pytest
from typer.testing import CliRunner

from rollbacklib.cli import app
from rollbacklib.config import load_config
from rollbacklib.drill import run_drill, stage_incident, stop_drill
from rollbacklib.drill.failing import add_failing_data, apply_failing
from rollbacklib.drill.scenario import generate_data, load_scenario, prepare_until
from rollbacklib.postgres import database as db
from rollbacklib.postgres.backup import load_manifest
from rollbacklib.postgres.client import client_tools, database_name
from rollbacklib.prisma import applied_migrations, migration_state
from rollbacklib.resources import scenarios_dir
from rollbacklib.strategies import resolve_only
from rollbacklib.strategies.migration_sql import effect_status, intended_effects, split_statements
from rollbacklib.strategies.situation import schema_diff

from conftest import CONFIG, DRILL_URL_ENV, MIGRATION, server_snapshot, Incident
from prisma_cli import PrismaCli, ensure_installed

runner = CliRunner()
SCENARIO = scenarios_dir() / "auth-platform"
SEED_SQL = SCENARIO / "prisma" / "migrations" / MIGRATION / "migration.sql"


def _col(table: str, column: str, nullable: bool, type_: str = "text") -> dict:
    return {"schema": "public", "table": table, "column": column, "type": type_, "nullable": nullable,
            "default": None}


def test_the_migration_sql_is_read_into_its_effects():
    assert [(e.kind, e.table, e.name) for e in intended_effects(SEED_SQL.read_text())] == [
        ("drop-column", "users", "emailVerified"), ("drop-column", "users", "passwordHash"),
        ("set-not-null", "users", "authorizerId")]
    other = intended_effects('-- a comment; with a semicolon\nCREATE INDEX CONCURRENTLY "ix" ON "app"."users"("email");\n'
                             'DROP TABLE "old";\n/* block; */ ALTER TABLE t ALTER COLUMN "C" TYPE integer USING "C"::integer, '
                             "ADD CONSTRAINT k UNIQUE (a, b);\nINSERT INTO t VALUES ('a;b');")
    assert [(e.kind, e.table, e.name) for e in other] == [
        ("create-index", "users", "ix"), ("drop-table", "old", None), ("alter-type", "t", "C"), ("other", "t", None),
        ("other", None, None)]
    assert other[-1].statement == "INSERT INTO t VALUES ('a;b')"
    assert split_statements("DO $$ BEGIN PERFORM 1; END $$; SELECT ';'") == ["DO $$ BEGIN PERFORM 1; END $$",
                                                                             "SELECT ';'"]


def test_each_effect_is_judged_from_the_live_and_the_backup_catalogs():
    backup = {"columns": [_col("users", "passwordHash", True), _col("users", "emailVerified", True, "boolean"),
                          _col("users", "authorizerId", True)], "constraints": [], "indexes": []}
    live = {"columns": [_col("users", "emailVerified", True, "boolean"), _col("users", "authorizerId", True)],
            "constraints": [], "indexes": [{"schema": "public", "table": "users", "name": "ix", "definition": "d"}]}
    effects = intended_effects(SEED_SQL.read_text() + 'CREATE INDEX CONCURRENTLY "ix" ON "users"("email");')
    assert [effect_status(e, live, backup, {"ix"}) for e in effects] == [
        "not applied", "applied", "not applied", "applied, INVALID"]
    assert schema_diff(live, backup) == [
        {"object": "column", "name": "users.passwordHash", "change": "missing live (in the backup)",
         "backup": {"type": "text", "nullable": True, "default": None}, "live": None},
        {"object": "index", "name": "users.ix", "change": "added live (not in the backup)", "backup": None,
         "live": {"definition": "d"}}]


def _failed_whole(url: str, users: int = 50) -> None:
    scenario = load_scenario(SCENARIO)
    with psycopg.connect(url) as conn:
        prepare_until(conn, scenario, MIGRATION)
        generate_data(conn, scenario, users)
        add_failing_data(conn, scenario)
        apply_failing(conn, url, scenario, MIGRATION, partly=False)


def _prisma(tmp_path) -> PrismaCli:
    installed = ensure_installed()
    if isinstance(installed, str):
        pytest.skip(f"the real Prisma CLI is not available here: {installed}")
    return PrismaCli(installed, tmp_path / "prisma-project", SCENARIO / "prisma")


def test_resolve_only_does_what_prisma_migrate_resolve_rolled_back_does(fresh_db, pg_server, tmp_path):
    """The same failed database twice: one resolved by the step's statements, one by the real CLI. Same rows."""
    _failed_whole(fresh_db)
    twin = database_name(fresh_db) + "_prisma"
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{twin}" TEMPLATE "{database_name(fresh_db)}"')
    twin_url = pg_server.url(twin)
    prisma = _prisma(tmp_path)

    with psycopg.connect(fresh_db, autocommit=True) as conn:
        ids = [r["id"] for r in applied_migrations(conn) if r["finished_at"] is None and r["rolled_back_at"] is None]
        for statement in resolve_only.statements(ids):  # what plan_steps renders into resolve-rolled-back
            conn.execute(statement)
    done = prisma.run(twin_url, "migrate", "resolve", "--rolled-back", MIGRATION)
    assert done.returncode == 0 and "marked as rolled back" in done.stdout + done.stderr, done

    def rows(url):
        with psycopg.connect(url) as conn:
            return applied_migrations(conn)

    ours, theirs = rows(fresh_db), rows(twin_url)
    assert len(ours) == len(theirs) == 2
    for mine, prismas in zip(ours, theirs):
        assert {k: v for k, v in mine.items() if k != "rolled_back_at"} == \
            {k: v for k, v in prismas.items() if k != "rolled_back_at"}
        assert (mine["rolled_back_at"] is None) == (prismas["rolled_back_at"] is None)
    assert migration_state(ours, MIGRATION) == "rolled-back"
    status = prisma.run(fresh_db, "migrate", "status")  # Prisma reads ours as resolved (its resolve of the twin found it failed)
    assert status.returncode == 0 and "have failed" not in status.stdout + status.stderr, status


def test_drill_migration_fails_ends_rolled_back_losing_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = []
    result = run_drill(config_path=str(CONFIG), users=50, reports_dir=str(tmp_path / "reports"), keep=True,
                       say=lines.append, failing="whole")
    try:
        run = result.run.summary
        assert result.exit_code == 0, run["error"]
        assert run["strategy"] == "resolve-only" and run["strategies"]["recommended"] == "resolve-only"
        assert run["rows_lost"]["total"] == 0 and run["validation"]["passed"] is True
        assert run["kept_database"] is None  # nothing was restored, nothing replaced
        backup = load_manifest(next((tmp_path / "reports").rglob("*.dump")))
        with psycopg.connect(result.url) as conn:
            rows = applied_migrations(conn)
            assert migration_state(rows, MIGRATION) == "rolled-back"
            assert db.schema_fingerprint(db.schema_catalog(conn)) == backup["schema_fingerprint"]  # schema unchanged
            null_users = [r[0] for r in conn.execute(
                'SELECT id FROM users WHERE "authorizerId" IS NULL ORDER BY id').fetchall()]
            assert conn.execute("SELECT count(*) FROM users WHERE id LIKE 'user_post_%'").fetchone()[0] == 5
        assert len(null_users) == 3
        (blocker,) = run["strategies"]["situation"]["blockers"]
        assert blocker["rows"] == 3 and blocker["first_keys"] == null_users  # the reason the migration failed
        assert "contains null values" in run["strategies"]["situation"]["logs"]  # Prisma's logged error
        events = [json.loads(line) for line in (result.run.run_dir / "journal.jsonl").read_text().splitlines()]
        named = [e["message"] for e in events if e["step"] == "validate-resolved" and e["status"] == "info"
             and e["message"].startswith("before the next deploy")]
        assert named and all(user in named[0] for user in null_users)
        changed = [e for e in events if e["status"] == "changed"]
        assert [e["step"] for e in changed] == ["resolve-rolled-back"] and changed[0]["message"].startswith("UPDATE")
    finally:
        stop_drill(result.workdir)


def test_a_partly_applied_migration_is_reversed_surgically_losing_nothing(fresh_db, tmp_path, monkeypatch):
    """Two DROP COLUMNs committed, the NOT NULL failed: the dry run shows the difference, each strategy's loss and
    recommends surgical; approved by the plan's digest, it brings the columns back and keeps every later write."""
    monkeypatch.setenv(DRILL_URL_ENV, fresh_db)
    backup = stage_incident(fresh_db, load_scenario(SCENARIO), MIGRATION, users=50, backup_dir=tmp_path / "backups",
                            tools=client_tools("embedded"), probes=load_config(CONFIG).all_queries(),
                            say=lambda _line: None, failing="partly")
    incident = Incident(fresh_db, database_name(fresh_db), backup, tmp_path / "reports")
    before = server_snapshot(incident)
    with psycopg.connect(fresh_db) as conn:
        written_since = conn.execute("SELECT count(*) FROM users").fetchone()[0]
    args = ("--backup", str(backup), "--run-id", "partly", "--strategy", "auto")
    result = runner.invoke(app, incident.run_args(*args, "--dry-run"))
    assert result.exit_code == 0, result.output
    assert server_snapshot(incident) == before  # the dry run changed nothing (the scratch schema read is dropped)
    plan = json.loads(next(incident.reports.rglob("plan.json")).read_text())
    assert plan["strategy"]["chosen"] == "surgical" == plan["strategy"]["recommended"]
    assert "failed part way (2 of 3 changes of its migration.sql applied" in plan["strategy"]["reason"]
    choice = json.loads(next(incident.reports.rglob("state.json")).read_text())["strategy"]
    state = choice["situation"]
    assert [e["status"] for e in state["effects"]] == ["applied", "applied", "not applied"]
    assert sorted((d["name"], d["change"]) for d in state["schema_diff"]) == [
        ("users.emailVerified", "missing live (in the backup)"), ("users.passwordHash", "missing live (in the backup)")]
    swap = next(a for a in choice["assessments"] if a["name"] == "swap")
    assert swap["rows_lost"] == 9 and swap["updates_lost"] == 0  # 5 users and 4 workflows written after the backup
    surgical = next(a for a in choice["assessments"] if a["name"] == "surgical")
    assert surgical["applies"] and surgical["rows_lost"] == 0
    assert "live vs backup: column users.passwordHash: missing live" in result.output
    assert "surgical-reverse-ddl" in [s["name"] for s in plan["steps"]]

    # approved by the digest of the plan as it stands now: the columns come back, nothing written since is lost
    done = runner.invoke(app, incident.run_args(*args, "--approve", plan["digest"]))
    assert done.exit_code == 0, done.output
    run = json.loads(next(incident.reports.rglob("run.json")).read_text())
    assert run["approval"]["plan_digest"] == plan["digest"] and run["strategy"] == "surgical"
    assert run["rows_lost"]["total"] == 0
    with psycopg.connect(fresh_db) as conn:
        assert db.column_info(conn, "users", "passwordHash") is not None
        assert db.column_info(conn, "users", "emailVerified") is not None
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == written_since  # every user kept
        assert conn.execute("SELECT count(*) FROM users WHERE id LIKE 'user_post_%'").fetchone()[0] == 5
        assert conn.execute('SELECT count(*) FROM users WHERE "passwordHash" IS NOT NULL').fetchone()[0] > 0
        assert migration_state(applied_migrations(conn), MIGRATION) == "rolled-back"


def test_what_a_restore_would_discard_is_projected_from_the_live_database_and_the_manifest(incident):
    """Inserted by createdAt, updated by updatedAt after the backup's time, deleted by the manifest's row count."""
    from datetime import datetime

    from rollbacklib.strategies.situation import projected_swap_loss

    manifest = load_manifest(incident.backup)
    with psycopg.connect(incident.url, autocommit=True) as conn:
        conn.execute("""UPDATE users SET name = 'changed', "updatedAt" = now() AT TIME ZONE 'UTC'
                        WHERE id IN ('user_000000001', 'user_000000002')""")
        conn.execute("DELETE FROM workflows WHERE id = (SELECT min(id) FROM workflows WHERE id NOT LIKE 'wf_post%')")
        conn.execute("CREATE TABLE audit_log (id int PRIMARY KEY)")
        conn.execute("INSERT INTO audit_log VALUES (1), (2)")
        loss = projected_swap_loss(conn, manifest, datetime.fromisoformat(manifest["taken_at"]))
    users, workflows, audit = loss["tables"]["users"], loss["tables"]["workflows"], loss["tables"]["audit_log"]
    assert (users["inserted"], users["updated"], users["deleted"]) == (5, 2, 0)  # after_migration.sql's 5 sign-ups
    assert (workflows["inserted"], workflows["updated"], workflows["deleted"]) == (4, 0, 1)
    assert (audit["inserted"], audit["basis"]) == (2, "table not in the backup: every row")
    assert (loss["inserted"], loss["updated"], loss["deleted"], loss["total"]) == (11, 2, 1, 14)
    assert loss["tables"]["clients"]["lost"] == 0 and "_prisma_migrations" not in loss["tables"]
