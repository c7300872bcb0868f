"""A backup of another database, server or Prisma history is refused before anything changes."""

from __future__ import annotations

import json
import os

import psycopg
import pytest
from typer.testing import CliRunner

from rollbacklib.checks import failed
from rollbacklib.cli import app
from rollbacklib.config import load_config
from rollbacklib.drill import stage_incident
from rollbacklib.drill.scenario import load_scenario
from rollbacklib.errors import BackupCheckFailed
from rollbacklib.postgres import database as db
from rollbacklib.postgres import identity
from rollbacklib.postgres.backup import load_manifest, take_backup
from rollbacklib.postgres.client import client_tools
from rollbacklib.resources import scenarios_dir

from conftest import (CONFIG, MIGRATION, before_the_migration, journal_events, plain_gz, server_snapshot,
                      with_manifest_change)

runner = CliRunner()


@pytest.fixture(scope="module")
def other_backup(pg_server, tmp_path_factory):
    """The backup of a second database staged like the incident (same project, same server)."""
    name = f"shop2_{os.getpid()}"
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(db.sql.SQL("CREATE DATABASE {}").format(db.sql.Identifier(name)))
    return stage_incident(pg_server.url(name), load_scenario(scenarios_dir() / "auth-platform"), MIGRATION,
                          users=50, backup_dir=tmp_path_factory.mktemp("shop2"), tools=client_tools("embedded"),
                          probes=load_config(CONFIG).all_queries(), say=lambda _line: None)


def _run_json(incident) -> dict:
    return json.loads(next(incident.reports.rglob("run.json")).read_text())


def _refused_in_prepare(incident, result, says: str) -> dict:
    assert result.exit_code == 3, result.output
    assert says in result.output
    run = _run_json(incident)
    assert run["status"] == "aborted" and run["changes_made"] is False
    assert run["error"]["phase"] == "01_prepare" and run["error"]["step"] == "verify-backup"
    assert [p["name"] for p in run["phases"]] == ["01_prepare"]
    return run


# --- through the CLI, against a real server -----------------------------------------------------

@pytest.mark.parametrize("mode", ["--dry-run", "--yes"])
def test_a_backup_of_another_database_is_refused(incident, other_backup, mode):
    other = load_manifest(other_backup)["database"]
    before = server_snapshot(incident)

    result = runner.invoke(app, incident.run_args("--backup", str(other_backup), mode))

    run = _refused_in_prepare(incident, result, "is not a backup of the live database")
    message = run["error"]["message"]
    assert f"of database {other!r}" in message and f"live database {incident.database!r}" in message
    assert f"backup is of the live database: expected {incident.database!r}, found {other!r}" in message
    assert "backup's Prisma history is a prefix of the live one" in message  # its migration ids are its own
    assert f"Pass a backup of {incident.database!r} with --backup PATH" in run["error"]["next_action"]
    assert "check --env drill ($ROLLBACK_DRILL_DATABASE_URL)" in run["error"]["next_action"]
    assert server_snapshot(incident) == before


def test_a_backup_from_another_server_is_refused(incident, tmp_path):
    bad = with_manifest_change(incident.backup, tmp_path, lambda m: m.update(system_identifier="7000000000000000001"))
    before = server_snapshot(incident)

    result = runner.invoke(app, incident.run_args("--backup", str(bad), "--dry-run"))

    run = _refused_in_prepare(incident, result, "backup is from the live server")
    assert "found '7000000000000000001'" in run["error"]["message"]
    assert "the backup comes from another PostgreSQL cluster" in run["error"]["message"]
    assert server_snapshot(incident) == before


def test_a_backup_whose_history_is_not_a_prefix_of_the_live_one_is_refused(incident, tmp_path):
    def other_checksum(manifest):
        manifest["prisma_migrations"][0]["checksum"] = "0" * 64

    bad = with_manifest_change(incident.backup, tmp_path, other_checksum)
    before = server_snapshot(incident)

    result = runner.invoke(app, incident.run_args("--backup", str(bad), "--dry-run"))

    run = _refused_in_prepare(incident, result, "backup's Prisma history is a prefix of the live one")
    assert "row 1 differs in checksum" in run["error"]["message"]
    assert server_snapshot(incident) == before


def test_a_plain_backup_of_another_database_is_refused_once_restored(incident, other_backup, tmp_path):
    plain = before_the_migration(plain_gz(other_backup, tmp_path))
    before = server_snapshot(incident)

    result = runner.invoke(app, incident.run_args("--backup", str(plain), "--yes"))

    assert result.exit_code == 3, result.output
    assert server_snapshot(incident) == before  # the restored copy was dropped, the live database untouched
    run = _run_json(incident)
    assert run["changes_made"] is False
    assert run["error"]["phase"] == "02_execute" and run["error"]["step"] == "validate-copy"
    message = run["error"]["message"]
    assert f"not a backup of the live database {incident.database!r}" in message
    assert "restored copy's Prisma history is a prefix of the live one" in message
    assert run["error"]["next_action"].startswith("ABORT ROLLBACK: nothing was changed. Pass a backup of")
    skipped = [e["message"] for e in journal_events(incident) if e["step"] == "verify-backup" and e["status"] == "skipped"]
    assert len(skipped) == 3  # phase 01 said which checks it could not make, and why


# --- the library, against a real server ---------------------------------------------------------

def test_the_manifest_records_the_live_server_and_the_checks_pass(incident):
    with psycopg.connect(incident.url, autocommit=True) as conn:
        live = identity.read_live_identity(conn)
        server = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()[0]
    manifest = load_manifest(incident.backup)
    assert manifest["system_identifier"] == server == live["system_identifier"]
    assert live["database"] == incident.database

    checks = identity.identity_checks(manifest, "custom", live)

    assert [c.name for c in checks] == [identity.DATABASE_CHECK, identity.SERVER_CHECK, identity.HISTORY_CHECK]
    assert not failed(checks) and not any(c.skipped for c in checks)


def test_a_manifest_without_a_system_identifier_is_accepted_with_that_check_skipped(incident):
    manifest = load_manifest(incident.backup)
    del manifest["system_identifier"]
    with psycopg.connect(incident.url, autocommit=True) as conn:
        checks = identity.identity_checks(manifest, "custom", identity.read_live_identity(conn))

    assert not failed(checks)
    server = next(c for c in checks if c.name == identity.SERVER_CHECK)
    assert server.skipped and "records no system identifier" in server.detail
    identity.refuse_unless_identical(checks, backup=incident.backup, live_database=incident.database)  # no raise


def test_a_role_refused_pg_control_system_still_takes_a_backup(fresh_db, tmp_path):
    role = f"no_control_{os.getpid()}"
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
        conn.execute(f'GRANT SELECT ON items TO "{role}"')
        conn.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")  # this database only
    url = psycopg.conninfo.make_conninfo(fresh_db, user=role)
    try:
        with psycopg.connect(url) as conn:
            conn.execute("SELECT 1")
            assert db.system_identifier(conn) is None
            assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 0  # the transaction survived
        backup = take_backup(url, tmp_path, client_tools("embedded"))
        assert load_manifest(backup)["system_identifier"] is None
    finally:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


# --- the checks alone ----------------------------------------------------------------------------

def _row(n: int, project: str = "a") -> dict:
    return {"id": f"{project}-{n}", "migration_name": f"2025120{n}000000_m{n}", "checksum": f"{project}{n}" * 8}


LIVE = {"database": "shop", "system_identifier": "42", "prisma_migrations": [_row(1), _row(2), _row(3)]}


def _manifest(**changes) -> dict:
    return {"database": "shop", "system_identifier": "42", "prisma_migrations": [_row(1), _row(2)], **changes}


@pytest.mark.parametrize("manifest, failing, says", [
    (_manifest(database="shop2"), identity.DATABASE_CHECK, "taken of database 'shop2'; the live database is 'shop'"),
    (_manifest(database=None), identity.DATABASE_CHECK, "does not name its database"),
    (_manifest(system_identifier="43"), identity.SERVER_CHECK, "another PostgreSQL cluster"),
    (_manifest(prisma_migrations=[_row(1, "b"), _row(2, "b")]), identity.HISTORY_CHECK, "row 1 differs in id"),
    (_manifest(prisma_migrations=[_row(1), {**_row(2), "checksum": "x"}]), identity.HISTORY_CHECK,
     "row 2 differs in checksum"),
    (_manifest(prisma_migrations=[_row(2), _row(1)]), identity.HISTORY_CHECK, "row 1 differs in id, migration_name"),
    (_manifest(prisma_migrations=[_row(1), _row(2), _row(3), _row(4)]), identity.HISTORY_CHECK,
     "migrations the live database never had"),
    (_manifest(prisma_migrations=[]), identity.HISTORY_CHECK, "not of this Prisma project"),
])
def test_each_identity_check_fails_on_its_own(manifest, failing, says):
    checks = identity.identity_checks(manifest, "custom", LIVE)

    assert [c.name for c in failed(checks)] == [failing]
    assert says in failed(checks)[0].detail
    with pytest.raises(BackupCheckFailed) as raised:
        identity.refuse_unless_identical(checks, backup="b.dump", live_database="shop",
                                         backup_database=manifest["database"])
    assert raised.value.exit_code == 3 and "live database 'shop'" in raised.value.message


def test_the_same_history_and_a_shorter_one_are_prefixes():
    assert identity.history_check(LIVE["prisma_migrations"], LIVE["prisma_migrations"]).passed
    assert identity.history_check([_row(1)], LIVE["prisma_migrations"]).passed
    assert identity.history_check([], []).passed


def test_without_a_manifest_every_identity_check_is_skipped_and_says_why():
    checks = identity.identity_checks(None, "plain-gzip", LIVE)

    assert [c.name for c in checks] == [identity.DATABASE_CHECK, identity.SERVER_CHECK, identity.HISTORY_CHECK]
    assert all(c.skipped and c.passed for c in checks)
    assert all("no manifest beside this plain-gzip backup" in c.detail for c in checks)
    assert [c.detail.split(": ")[1] for c in checks[:2]] == ["the database it was taken of is unknown",
                                                             "the server it was taken on is unknown"]
    assert "Prisma history is unknown until it is restored" in checks[2].detail


def test_a_live_server_that_hides_its_identifier_skips_the_server_check():
    checks = identity.identity_checks(_manifest(), "custom", {**LIVE, "system_identifier": None})
    server = next(c for c in checks if c.name == identity.SERVER_CHECK)
    assert server.skipped and "refused" in server.detail and not failed(checks)

