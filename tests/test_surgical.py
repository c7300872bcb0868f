"""Strategy surgical on a real server: the seed's migration reversed in place, keeping every write made since."""

from __future__ import annotations

import psycopg
import pytest

from rollbacklib.errors import RefusedError
from rollbacklib.postgres import database as db
from surgical_helpers import plan_and_approve, prisma_rows, restored_oracle, rows, run_surgical

USERS = 'SELECT id, email, name, "authorizerId", "clientId" FROM users'


def _writes_after_the_migration(url: str) -> dict:
    """Updates and deletes on top of the scenario's inserts: what a full restore would throw away."""
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE users SET name = 'renamed after the migration', \"updatedAt\" = now() "
                     "WHERE id IN ('user_000000003', 'user_000000004')")
        gone = conn.execute("SELECT u.id FROM users u WHERE u.id NOT LIKE 'user_post%' AND NOT EXISTS "
                            "(SELECT 1 FROM workflows w WHERE w.\"userId\" = u.id) ORDER BY id LIMIT 2").fetchall()
        conn.execute("DELETE FROM users WHERE id = ANY(%s)", ([g[0] for g in gone],))
        conn.execute("UPDATE workflows SET status = 'archived' WHERE id IN (SELECT id FROM workflows ORDER BY id LIMIT 3)")
    return {"deleted": [g[0] for g in gone]}


def test_the_seeds_migration_is_reversed_keeping_every_write_since(incident):
    writes = _writes_after_the_migration(incident.url)
    users_before = rows(incident.url, USERS)
    workflows_before = rows(incident.url, "SELECT id, t::text FROM workflows t")
    migrations_before = prisma_rows(incident.url)
    oracle = restored_oracle(incident, f"{incident.database}_oracle")
    backup_values = rows(oracle, 'SELECT id, "passwordHash", "emailVerified" FROM users')

    result = run_surgical(incident)

    assert result["ok"] and result["rows_lost"] == 0, result
    assert [t["same"] for t in result["tables"] if "same" in t] == [True]  # users: every row as before, kept columns
    assert rows(incident.url, USERS) == users_before  # every row written since, as written; nothing else touched
    assert rows(incident.url, "SELECT id, t::text FROM workflows t") == workflows_before
    restored = rows(incident.url, 'SELECT id, "passwordHash", "emailVerified" FROM users')
    pre_migration = [u for u in users_before if u in backup_values]
    assert len(pre_migration) == len(backup_values) - len(writes["deleted"]) > 100
    assert all(restored[u] == backup_values[u] for u in pre_migration)
    assert {restored[u] for u in users_before if u not in backup_values} == {(None, False)}  # the column's default
    assert not set(writes["deleted"]) & set(restored)  # deleted since: stays deleted
    with psycopg.connect(incident.url) as conn, psycopg.connect(oracle) as backup:  # the backup's schema, exactly
        assert db.schema_catalog(conn) == db.schema_catalog(backup)
        assert db.column_info(conn, "users", "authorizerId")["nullable"]
        assert db.column_info(conn, "users", "passwordHash") == {"data_type": "text", "nullable": True}
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'users_authorizerId_key'").fetchone()[0]
    migrations_after = prisma_rows(incident.url)
    gone = set(migrations_before) - set(migrations_after)
    assert len(gone) == 1 and incident.migration_id in migrations_before[gone.pop()][0]
    assert all(migrations_after[i] == migrations_before[i] for i in migrations_after)  # byte-identical
    with psycopg.connect(incident.admin_url) as admin:  # the side database is gone, the live one never copied
        names = [r[0] for r in admin.execute("SELECT datname FROM pg_database").fetchall()]
    assert not [n for n in names if "__side_" in n or "__schema_" in n]


def test_the_plan_shows_every_statement_and_binds_surgical_json(incident):
    frame, plan = plan_and_approve(incident, "shown")
    assert set(frame["kind"]) == {"column-dropped", "not-null-added"}
    ddl = plan.step("surgical-reverse-ddl")
    texts = [a.text for a in ddl.actions if a.kind == "sql"]
    assert texts[0] == "SET LOCAL lock_timeout = '2000ms'"
    assert texts[1] == 'LOCK TABLE "public"."users" IN ACCESS EXCLUSIVE MODE'
    assert any('ADD COLUMN "passwordHash" text' in t for t in texts)
    assert any('ALTER COLUMN "authorizerId" DROP NOT NULL' in t for t in texts)
    side = plan.step("surgical-side-restore")
    commands = [a.text for a in side.actions if a.kind == "command"]
    assert "--section=pre-data" in commands[0] and "-t users" in commands[1] and "workflows" not in commands[1]
    with psycopg.connect(incident.url) as conn:  # phase 01 changed nothing
        assert db.column_info(conn, "users", "passwordHash") is None


def test_the_dry_run_of_the_surgical_steps_changes_nothing(incident):
    from rollbacklib.run import open_run
    from rollbacklib.steps import Phase
    from rollbacklib.surgical import execute as surgical
    from conftest import server_snapshot

    plan_and_approve(incident, "dry")
    before = server_snapshot(incident)
    ctx = open_run(migration_id=incident.migration_id, environment="drill", config_path=str(incident.config),
                   run_id="dry", reports_dir=str(incident.reports), phase=Phase.EXECUTE, dry_run=True)
    assert surgical.execute_all(ctx) == [None] * 5
    assert server_snapshot(incident) == before
    planned = [e["message"] for e in ctx.journal.events() if e["status"] == "planned"]
    assert 'ALTER TABLE "public"."users" ADD COLUMN "passwordHash" text, ADD COLUMN "emailVerified" boolean DEFAULT ' \
           'false, ALTER COLUMN "authorizerId" DROP NOT NULL' in planned


def test_an_irreversible_change_is_refused_naming_it_and_nothing_changes(incident):
    with psycopg.connect(incident.url, autocommit=True) as conn:  # a change no key can undo
        conn.execute('ALTER TABLE workflows DROP CONSTRAINT workflows_pkey')
        conn.execute('ALTER TABLE workflows ADD PRIMARY KEY ("userId", id)')
        before = db.schema_fingerprint(db.schema_catalog(conn)), db.row_counts(conn)
    with pytest.raises(RefusedError) as refused:
        plan_and_approve(incident, "irreversible")
    assert "key-changed public.workflows" in refused.value.message
    assert "swap strategy" in refused.value.next_action
    with psycopg.connect(incident.url) as conn:
        assert (db.schema_fingerprint(db.schema_catalog(conn)), db.row_counts(conn)) == before


def test_the_reverse_ddl_waits_for_its_locks_only_so_long_and_retries(incident):
    from rollbacklib.errors import StepError
    from rollbacklib.surgical.apply import lock_timeout_statement, run_transaction

    statements = [lock_timeout_statement(0.2), 'LOCK TABLE "public"."users" IN ACCESS EXCLUSIVE MODE',
                  'ALTER TABLE "public"."users" ADD COLUMN "passwordHash" text']
    reader = psycopg.connect(incident.url)
    reader.execute("SELECT count(*) FROM users")  # a long transaction holding a lock on the table
    attempts = []
    with pytest.raises(StepError) as gave_up:
        run_transaction(incident.url, statements, lock_timeout_seconds=0.2, attempts=2, pause_seconds=0, step="t",
                        on_attempt=lambda n, why: attempts.append((n, why)))
    assert [n for n, _ in attempts] == [1, 2] and "lock timeout" in attempts[0][1]
    assert "nothing was changed" in gave_up.value.message and "drain" in gave_up.value.next_action
    with psycopg.connect(incident.url) as conn:
        assert db.column_info(conn, "users", "passwordHash") is None

    attempts.clear()
    evidence = run_transaction(incident.url, statements, lock_timeout_seconds=0.2, attempts=3, pause_seconds=0,
                               step="t", on_attempt=lambda n, why: (attempts.append(n), reader.rollback()))
    reader.close()
    assert attempts == [1] and evidence["attempts"] == 2  # the reader ended after the first try: the second took it
    with psycopg.connect(incident.url) as conn:
        assert db.column_info(conn, "users", "passwordHash") == {"data_type": "text", "nullable": True}


def test_services_drained_put_the_platforms_steps_around_the_changes(incident):
    from rollbacklib.steps import Step
    from rollbacklib.surgical.plan import with_services

    _frame, plan = plan_and_approve(incident, "drain")
    stop, start = Step("stop-services", "02_execute", "none", "stop"), Step("start-services", "04", "none", "start")
    names = [s.name for s in with_services(plan.steps, stop, start)]
    assert names.index("stop-services") == names.index("surgical-reverse-ddl") - 1
    assert names.index("start-services") == names.index("surgical-bookkeeping") + 1


def test_the_backfill_goes_in_batches_and_journals_its_progress(incident, tmp_path):
    import dataclasses
    import math

    from conftest import journal_events

    config = tmp_path / "runbook.toml"
    config.write_text(incident.config.read_text() + '\n[environments.drill.surgical]\nbatch_rows = 16\n'
                      'services = "drain"\n')
    incident = dataclasses.replace(incident, config=config)
    with psycopg.connect(incident.url) as conn:
        users = conn.execute("SELECT count(*) FROM users").fetchone()[0]

    result = run_surgical(incident, "batches")

    assert result["ok"], result
    events = journal_events(incident)
    filled = next(e["evidence"] for e in events if e["step"] == "surgical-backfill" and "batches" in e["evidence"])
    backup_rows = filled["backup_rows"]
    assert filled["batches"] == math.ceil(backup_rows / 16) and filled["updated"] == backup_rows
    progress = [e["evidence"]["done"] for e in events if e["step"] == "surgical-backfill" and "done" in e["evidence"]]
    assert progress == sorted(progress) and progress[-1] == backup_rows and len(progress) >= filled["batches"]
    assert users == backup_rows + 5  # the scenario's five sign-ups since: not in the backup, not touched


def test_a_side_restore_of_no_table_restores_nothing(tmp_path):
    from rollbacklib.postgres.client import client_tools
    from rollbacklib.surgical.side import side_commands

    tools, backup = client_tools("embedded"), tmp_path / "backup.dump"
    assert side_commands(backup, "x", [], tools) == []
    [pre, data] = side_commands(backup, "x", [("public", "users")], tools)
    assert "--section=pre-data" in pre and data[-6:-1] == ["--data-only", "-n", "public", "-t", "users"]
