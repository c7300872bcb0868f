"""Phase 01 names what earlier runs left beside the live database, whatever the strategy that made it."""

from __future__ import annotations

import psycopg

from rollbacklib.journal import read_events
from rollbacklib.phases import prepare
from rollbacklib.postgres.client import database_name, with_database
from rollbacklib.run import open_run
from rollbacklib.steps import Phase, Step

MIGRATION = "20251202020032_update_user_schema_final"
URL_ENV = "ROLLBACK_TEST_LEFTOVERS_DATABASE_URL"


def test_copies_side_and_safety_databases_of_earlier_runs_are_named_with_what_to_do(fresh_db, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setenv(URL_ENV, fresh_db)
    config = tmp_path / "runbook.toml"
    config.write_text(f'[environments.t]\ndatabase_url_env = "{URL_ENV}"\nbackup_dir = "backups"\n')
    live = database_name(fresh_db)
    left = {tag: f"{live}{tag}old1" for tag in ("__restored_", "__pre_rollback_", "__safety_", "__side_", "__schema_")}
    unrelated = f"{live}x__side_old1"  # another database's name: not ours to name
    with psycopg.connect(with_database(fresh_db, "postgres"), autocommit=True) as admin:
        for name in [*left.values(), unrelated]:
            admin.execute(f'CREATE DATABASE "{name}"')
    try:
        ctx = open_run(migration_id=MIGRATION, environment="t", config_path=str(config),
                       reports_dir=str(tmp_path / "reports"), phase=Phase.PREPARE)
        prepare.name_leftovers(ctx, Step("leftovers", Phase.PREPARE, live, "name what earlier runs left"))
    finally:  # the session's server is shared: other tests look for leftovers of their own
        with psycopg.connect(with_database(fresh_db, "postgres"), autocommit=True) as admin:
            for name in [*left.values(), unrelated]:
                admin.execute(f'DROP DATABASE "{name}"')

    named = {e["evidence"]["database"]: e["message"] for e in read_events(ctx.run_dir)
             if e["step"] == "leftovers" and "database" in e["evidence"]}
    assert set(named) == set(left.values())
    for tag in ("__restored_", "__side_", "__schema_"):
        assert f'DROP DATABASE IF EXISTS "{left[tag]}"' in named[left[tag]]
    for tag in ("__pre_rollback_", "__safety_"):
        assert "kept on purpose" in named[left[tag]] and "DROP" not in named[left[tag]]
    assert "surgical" in named[left["__side_"]] and "in-place" in named[left["__safety_"]]
