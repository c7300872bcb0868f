"""Prisma's migration bookkeeping and the auth-platform scenario, against a real PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from rollbacklib.resources import scenarios_dir
from rollbacklib.errors import AbortedError, ConfigError, FailedError
from rollbacklib.drill.prisma_migrate import apply_migration, apply_migrations
from rollbacklib.prisma import (
    MIGRATION_ID_EXAMPLE,
    applied_migrations,
    list_migrations,
    migration_checksum,
    migration_state,
    validate_migration_id,
)
from rollbacklib.drill.scenario import (
    generate_data,
    load_scenario,
    prepare_until,
    table_counts,
    write_after_migration,
)

SCENARIO_DIR = scenarios_dir() / "auth-platform"
MIGRATIONS_DIR = SCENARIO_DIR / "prisma" / "migrations"
INITIAL = "20251202014452_initial_schema_with_authorizer_id"
BAD = "20251202020032_update_user_schema_final"
USERS = 2000


@pytest.fixture
def scenario():
    return load_scenario(SCENARIO_DIR)


def users_columns(conn) -> dict[str, tuple[str, str]]:
    rows = conn.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'users'"
    ).fetchall()
    return {name: (data_type, nullable) for name, data_type, nullable in rows}


def schema_objects(conn) -> list[tuple[str, str]]:
    """Every index and constraint of the current schema, with its definition."""
    return conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
        "UNION ALL SELECT conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
        "JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = current_schema() "
        "ORDER BY 1, 2"
    ).fetchall()


# --- _prisma_migrations -----------------------------------------------------------------


def test_migrations_table_is_the_one_prisma_creates(fresh_db):
    with psycopg.connect(fresh_db) as conn:
        apply_migration(conn, MIGRATIONS_DIR, INITIAL)
        columns = conn.execute(
            "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_name = '_prisma_migrations' "
            "ORDER BY ordinal_position"
        ).fetchall()
        primary_key = conn.execute(
            "SELECT k.column_name FROM information_schema.table_constraints t "
            "JOIN information_schema.key_column_usage k USING (constraint_schema, constraint_name) "
            "WHERE t.table_name = '_prisma_migrations' AND t.constraint_type = 'PRIMARY KEY'"
        ).fetchall()
    assert columns == [
        ("id", "character varying", 36, "NO", None),
        ("checksum", "character varying", 64, "NO", None),
        ("finished_at", "timestamp with time zone", None, "YES", None),
        ("migration_name", "character varying", 255, "NO", None),
        ("logs", "text", None, "YES", None),
        ("rolled_back_at", "timestamp with time zone", None, "YES", None),
        ("started_at", "timestamp with time zone", None, "NO", "now()"),
        ("applied_steps_count", "integer", None, "NO", "0"),
    ]
    assert primary_key == [("id",)]


def test_applied_migrations_is_empty_without_the_table(fresh_db):
    with psycopg.connect(fresh_db) as conn:
        assert applied_migrations(conn) == []


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
def test_rows_are_what_migrate_deploy_writes_and_are_committed(fresh_db, autocommit):
    with psycopg.connect(fresh_db, autocommit=autocommit) as conn:
        returned = apply_migrations(conn, MIGRATIONS_DIR)
        # Read from another session while the first is still open: only committed rows show.
        # Its other time zone must not change the rows (timestamps are rendered in UTC).
        with psycopg.connect(fresh_db, options="-c TimeZone=America/Bogota") as other:
            rows = applied_migrations(other)

    assert rows == returned
    assert [r["migration_name"] for r in rows] == [INITIAL, BAD]
    json.dumps(rows)  # serializable as is
    files = {m.name: m for m in list_migrations(MIGRATIONS_DIR)}
    for row in rows:
        script = files[row["migration_name"]].path
        assert row["checksum"] == hashlib.sha256(script.read_bytes()).hexdigest()
        assert row["checksum"] == files[row["migration_name"]].checksum
        assert row["applied_steps_count"] == 1
        assert row["logs"] is None
        assert row["rolled_back_at"] is None
        assert uuid.UUID(row["id"]).version == 4
        started = datetime.fromisoformat(row["started_at"])
        finished = datetime.fromisoformat(row["finished_at"])
        assert row["started_at"].endswith("+00:00") and started <= finished
        assert migration_state(rows, row["migration_name"]) == "applied"


def test_apply_migrations_skips_applied_ones(fresh_db):
    with psycopg.connect(fresh_db) as conn:
        first = apply_migrations(conn, MIGRATIONS_DIR, until=INITIAL)
        second = apply_migrations(conn, MIGRATIONS_DIR)
        third = apply_migrations(conn, MIGRATIONS_DIR)
    assert [r["migration_name"] for r in first] == [INITIAL]
    assert [r["migration_name"] for r in second] == [BAD]
    assert third == []


def test_apply_migration_refuses_an_unknown_name(fresh_db):
    with psycopg.connect(fresh_db) as conn, pytest.raises(ConfigError) as err:
        apply_migration(conn, MIGRATIONS_DIR, "20990101000000_not_there")
    assert INITIAL in err.value.next_action


def test_checksum_is_sha256_of_the_exact_bytes(tmp_path):
    script = tmp_path / "migration.sql"
    script.write_bytes('-- CreateTable\r\nSELECT \'ñ\';\n'.encode())
    assert migration_checksum(script) == hashlib.sha256(script.read_bytes()).hexdigest()
    assert migration_checksum(script) != hashlib.sha256(b"-- CreateTable\nSELECT '\xc3\xb1';\n").hexdigest()


def test_list_migrations_in_name_order():
    migrations = list_migrations(MIGRATIONS_DIR)
    assert [m.name for m in migrations] == [INITIAL, BAD]
    assert all(m.path.name == "migration.sql" and len(m.checksum) == 64 for m in migrations)


def test_lock_file_is_written_as_prisma_does():
    assert (MIGRATIONS_DIR / "migration_lock.toml").read_text() == (
        "# Please do not edit this file manually\n"
        "# It should be added in your version-control system (e.g., Git)\n"
        'provider = "postgresql"\n'
    )


def _no_folder(d: Path) -> Path:
    return d / "missing"


def _no_lock(d: Path) -> Path:
    (d / INITIAL).mkdir()
    (d / INITIAL / "migration.sql").write_text("SELECT 1;\n")
    return d


def _mysql_lock(d: Path) -> Path:
    (d / "migration_lock.toml").write_text('provider = "mysql"\n')
    return d


def _no_script(d: Path) -> Path:
    (d / "migration_lock.toml").write_text('provider = "postgresql"\n')
    (d / INITIAL).mkdir()
    return d


@pytest.mark.parametrize(
    "make_folder, says",
    [(_no_folder, "not found"), (_no_lock, "migration_lock.toml"), (_mysql_lock, "mysql"), (_no_script, "migration.sql")],
    ids=["no-folder", "no-lock-file", "other-provider", "no-script"],
)
def test_list_migrations_rejects_what_is_not_a_prisma_folder(tmp_path, make_folder, says):
    with pytest.raises(ConfigError) as err:
        list_migrations(make_folder(tmp_path))
    assert says in err.value.message


# --- migration state ---------------------------------------------------------------------


def _row(name: str, *, finished: bool = True, rolled_back: bool = False) -> dict:
    stamp = "2025-12-02T02:00:32+00:00"
    return {
        "id": str(uuid.uuid4()),
        "checksum": "0" * 64,
        "finished_at": stamp if finished else None,
        "migration_name": name,
        "logs": None if finished else "Database error code: 23502",
        "rolled_back_at": stamp if rolled_back else None,
        "started_at": stamp,
        "applied_steps_count": 1 if finished else 0,
    }


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([], "absent"),
        ([_row(INITIAL)], "absent"),
        ([_row(INITIAL), _row(BAD)], "applied"),
        ([_row(BAD, finished=False)], "failed"),
        ([_row(BAD, finished=False, rolled_back=True)], "rolled-back"),
        ([_row(BAD, rolled_back=True)], "rolled-back"),
        ([_row(BAD, finished=False, rolled_back=True), _row(BAD)], "applied"),
    ],
    ids=["no-rows", "other-migration-only", "applied", "failed", "failed-then-resolved",
         "applied-then-marked", "resolved-then-redeployed"],
)
def test_migration_state(rows, expected):
    assert migration_state(rows, BAD) == expected


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
def test_failed_migration_is_recorded_like_prisma(fresh_db, scenario, autocommit):
    with psycopg.connect(fresh_db, autocommit=autocommit) as conn:
        prepare_until(conn, scenario, BAD)
        generate_data(conn, scenario, users=50)
        conn.execute(
            "INSERT INTO users (id, email, \"updatedAt\") VALUES ('legacy', 'legacy@example.com', now())"
        )
        conn.commit()  # a no-op under autocommit

        with pytest.raises(FailedError) as err:
            apply_migration(conn, MIGRATIONS_DIR, BAD)
        assert "authorizerId" in str(err.value)
        rows = applied_migrations(conn)
        failed = rows[-1]
        assert migration_state(rows, BAD) == "failed"
        assert failed["finished_at"] is None and failed["applied_steps_count"] == 0
        assert "23502" in failed["logs"] and "authorizerId" in failed["logs"]
        assert {"passwordHash", "emailVerified"} <= users_columns(conn).keys()  # script undone

        with pytest.raises(AbortedError, match="P3009"):
            apply_migrations(conn, MIGRATIONS_DIR)

        # What `prisma migrate resolve --rolled-back` does to a failed row.
        conn.execute("UPDATE _prisma_migrations SET rolled_back_at = now() WHERE id = %s", (failed["id"],))
        conn.commit()
        assert migration_state(applied_migrations(conn), BAD) == "rolled-back"

        conn.execute("UPDATE users SET \"authorizerId\" = 'auth0|legacy' WHERE id = 'legacy'")
        conn.commit()
        apply_migrations(conn, MIGRATIONS_DIR)
        rows = applied_migrations(conn)
    assert migration_state(rows, BAD) == "applied"
    assert [r["migration_name"] for r in rows] == [INITIAL, BAD, BAD]


# --- migration IDs -----------------------------------------------------------------------


@pytest.mark.parametrize("migration_id", [INITIAL, BAD, "20240101000000_a", "20240229235959_Add_2FA"])
def test_validate_migration_id_accepts_prisma_names(migration_id):
    assert validate_migration_id(migration_id) == migration_id


@pytest.mark.parametrize(
    "migration_id",
    [
        "",
        "update_user_schema_final",
        "20251202020032",
        "20251202020032_",
        "2025120202003_update",
        "202512020200321_update",
        "20251202020032-update_user_schema_final",
        "20251202020032_update-user-schema",
        "20251202020032_update user",
        " 20251202020032_update",
        "20251202020032_update\n",
        "20251302020032_update",
        "20251202250032_update",
        "20251202020032_update;DROP",
    ],
)
def test_validate_migration_id_rejects_malformed_ids(migration_id):
    with pytest.raises(ConfigError) as err:
        validate_migration_id(migration_id)
    assert "YYYYMMDDHHMMSS_name" in err.value.message
    assert MIGRATION_ID_EXAMPLE in err.value.message
    assert "prisma/migrations" in err.value.next_action
    assert err.value.exit_code == 2


# --- scenario ----------------------------------------------------------------------------


def test_scenario_loads(scenario):
    assert scenario.name == "auth-platform"
    assert scenario.database == "automation_platform"
    assert scenario.description
    assert scenario.migrations_dir == MIGRATIONS_DIR
    assert [m.name for m in scenario.migrations()] == [INITIAL, BAD]
    assert load_scenario(SCENARIO_DIR / "scenario.toml") == scenario


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda t: t.replace('generate_sql = "data/generate.sql"\n', ""), "generate_sql"),
        (lambda t: t + 'users = "2000"\n', "users"),
        (lambda t: t.replace('database = "automation_platform"', "database = 7"), "database"),
        (lambda t: t.replace('"automation_platform"', '"automation-platform; DROP"'), "database"),
        (lambda t: t.replace('"data/after_migration.sql"', '"data/missing.sql"'), "after_migration_sql"),
        (lambda t: t.replace('"prisma/migrations"', '"prisma/nowhere"'), "migrations_dir"),
        (lambda t: t + "name = [\n", "TOML"),
    ],
    ids=["missing-key", "unknown-key", "not-a-string", "bad-database-name", "missing-file",
         "missing-folder", "bad-toml"],
)
def test_scenario_errors_name_the_file_and_key(tmp_path, edit, key):
    folder = tmp_path / "scenario"
    shutil.copytree(SCENARIO_DIR, folder)
    toml = folder / "scenario.toml"
    toml.write_text(edit(toml.read_text()))
    with pytest.raises(ConfigError) as err:
        load_scenario(folder)
    assert str(toml) in err.value.message
    assert key in err.value.message


def test_scenario_folder_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="scenario.toml"):
        load_scenario(tmp_path)


@pytest.mark.parametrize("users", [0, -5, True, 2.5, "2000"])
def test_generate_data_rejects_a_bad_user_count(scenario, users):
    with pytest.raises(ConfigError, match="users"):
        generate_data(None, scenario, users)


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
def test_drill_data_through_the_bad_migration(fresh_db, scenario, autocommit):
    with psycopg.connect(fresh_db, autocommit=autocommit) as conn:
        prepared = prepare_until(conn, scenario, BAD)
        assert [r["migration_name"] for r in prepared] == [INITIAL]
        assert migration_state(applied_migrations(conn), BAD) == "absent"
        schema_before = schema_objects(conn)

        counts = generate_data(conn, scenario, users=USERS)
        assert counts["users"] == USERS
        assert counts["clients"] == USERS // 20
        assert 1.5 * USERS <= counts["workflows"] <= 2.5 * USERS
        # The bulk load set keys, indexes and foreign keys aside; they must all be back as they were.
        assert schema_objects(conn) == schema_before
        facts = conn.execute(
            """
            SELECT
              (SELECT count(*) FROM users u LEFT JOIN clients c ON c.id = u."clientId"
                WHERE u."clientId" IS NOT NULL AND c.id IS NULL),
              (SELECT count(*) FROM workflows w LEFT JOIN users u ON u.id = w."userId" WHERE u.id IS NULL),
              (SELECT count(*) FROM users WHERE "authorizerId" IS NULL),
              (SELECT avg(("clientId" IS NOT NULL)::int) FROM users),
              (SELECT min("createdAt") FROM users),
              (SELECT max("createdAt") FROM users)
            """
        ).fetchone()
        orphan_users, orphan_workflows, without_authorizer, share_with_client, oldest, newest = facts
        assert (orphan_users, orphan_workflows, without_authorizer) == (0, 0, 0)
        assert 0.85 <= share_with_client <= 0.95
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        assert now - timedelta(days=366) <= oldest < newest <= now
        assert newest - oldest > timedelta(days=300)

        row = apply_migration(conn, scenario.migrations_dir, BAD)
        assert row["finished_at"] and row["applied_steps_count"] == 1
        columns = users_columns(conn)
        assert "passwordHash" not in columns and "emailVerified" not in columns
        assert columns["authorizerId"] == ("text", "NO")
        assert table_counts(conn)["users"] == USERS

        added = write_after_migration(conn, scenario)
        assert added == {"clients": 0, "users": 5, "workflows": 4}
        with psycopg.connect(fresh_db) as other:  # committed, visible to another session
            assert other.execute("SELECT count(*) FROM users").fetchone()[0] == USERS + 5
            assert other.execute(
                "SELECT count(*) FROM users WHERE id LIKE 'user_post_%' AND \"authorizerId\" IS NOT NULL"
            ).fetchone()[0] == 5
