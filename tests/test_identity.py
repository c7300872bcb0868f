"""A backup of another database, server or Prisma history is refused before anything changes."""

from __future__ import annotations

import os

import psycopg
import pytest

from rollbacklib.checks import failed
from rollbacklib.errors import BackupCheckFailed
from rollbacklib.postgres import database as db
from rollbacklib.postgres import identity
from rollbacklib.postgres.backup import load_manifest, take_backup
from rollbacklib.postgres.client import client_tools


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

