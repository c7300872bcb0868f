"""The drill with each strategy succeeds and validates (issue 15): ``rollback drill --strategy in-place|surgical``.

Each test stages the seed's incident on an embedded PostgreSQL, runs the whole runbook with the
strategy asked for, then reads the database afterwards: the backup restored into a scratch
database on the same server is the reference for the values that must be back.
"""

from __future__ import annotations

import json
import subprocess

import psycopg

from rollbacklib.config import load_config
from rollbacklib.drill import run_drill, stop_drill
from rollbacklib.phases.in_place import safety_name
from rollbacklib.postgres import database as db
from rollbacklib.postgres.backup import load_manifest
from rollbacklib.postgres.client import client_tools, database_name, libpq_env, with_database
from rollbacklib.prisma import applied_migrations, migration_state

from conftest import CONFIG, MIGRATION

USERS = 40
DROPPED = ('"passwordHash"', '"emailVerified"')


def _drill(tmp_path, monkeypatch, strategy: str):
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    result = run_drill(config_path=str(CONFIG), users=USERS, reports_dir=str(tmp_path / "reports"), keep=True,
                       say=lines.append, strategy=strategy)
    dump = next((tmp_path / "reports").rglob("*.dump"))
    return result, dump


def _backup_reference(url: str, dump) -> str:
    """The backup restored into ``backup_reference`` on the drill's server: the values that must be back."""
    tools = client_tools(load_config(CONFIG).defaults.client_binaries)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE backup_reference")
    reference = with_database(url, "backup_reference")
    subprocess.run([tools.path("pg_restore"), "--no-owner", "--exit-on-error", "--dbname=backup_reference", str(dump)],
                   check=True, env=libpq_env(reference), capture_output=True)
    return reference


def _users(url: str) -> dict[str, tuple]:
    with psycopg.connect(url) as conn:
        return {r[0]: tuple(r[1:]) for r in conn.execute(
            f"SELECT id, {', '.join(DROPPED)} FROM users ORDER BY id").fetchall()}


def test_drill_in_place_restores_into_the_live_database_and_counts_what_it_discarded(tmp_path, monkeypatch):
    result, dump = _drill(tmp_path, monkeypatch, "in-place")
    try:
        run = result.run.summary
        assert result.exit_code == 0, run["error"]
        assert run["status"] == "succeeded" and run["strategy"] == "in-place"
        assert run["validation"]["passed"] is True
        checks = {c["name"] for c in run["validation"]["checks"]}
        assert f"{MIGRATION} is not in _prisma_migrations" in checks
        assert run["kept_database"] is None  # nothing renamed: the restore went into the live database
        assert run["production"]["line"].startswith("Production serving the restored database since")
        live = database_name(result.url)
        reference = _backup_reference(result.url, dump)
        with psycopg.connect(result.url) as conn:
            assert db.schema_fingerprint(db.schema_catalog(conn)) == load_manifest(dump)["schema_fingerprint"]
            assert migration_state(applied_migrations(conn), MIGRATION) == "absent"
            post = conn.execute("SELECT count(*) FROM users WHERE id LIKE 'user_post_%'").fetchone()[0]
            oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
        assert post == 0  # the writes after the backup are what a full restore discards
        assert _users(result.url) == _users(reference)  # the dropped columns are back, with the backup's values
        # measured, not typed: the safety copy (the database before the restore) against the restored one
        lost = run["rows_lost"]
        assert lost["total"] == 9 and lost["tables"]["users"]["inserted"] == 5 and lost["tables"]["workflows"][
            "inserted"] == 4
        safety = safety_name(live, result.run.run_dir.name)
        with psycopg.connect(result.url) as conn:
            row = conn.execute("SELECT oid, datallowconn FROM pg_database WHERE datname = %s", (safety,)).fetchone()
        assert row is not None and row[0] != oid and row[1] is False  # kept, closed: the way back after a commit
        # counted after the window: the window hashed the restored side only; the safety copy's one session ever
        # is compare-rows' private one, after health
        assert _sessions_ever(result.url, safety) == 1
        events = [json.loads(line) for line in (result.run.run_dir / "journal.jsonl").read_text().splitlines()]
        health = max(i for i, e in enumerate(events) if e["step"] == "health" and e["status"] == "ok")
        on_safety = [i for i, e in enumerate(events) if e["evidence"].get("target") == safety
                     and e["evidence"].get("kind") == "sql" and e["step"] != "safety-copy"]
        assert on_safety and min(on_safety) > health and {events[i]["step"] for i in on_safety} == {"compare-rows"}
        assert next(e for e in events if "rows_lost" in e["evidence"])["step"] == "compare-rows"
        events = result.run.run_dir / "journal.jsonl"
        text = events.read_text()
        assert "--single-transaction" in text and '"step": "restore-in-place"' in text
        steps = {s["name"]: s for s in _plan(result)}
        assert "swap-keep-live" not in steps and "create-copy" not in steps  # in-place's steps, not the swap's
        order = list(steps)  # the status page told before the services stop, and once they are back
        assert order.index("gate") + 1 == order.index("notify-window-open") == order.index("stop-services") - 1
        assert order.index("smoke-tests") + 1 == order.index("notify-window-closed")
        done = {e["step"] for e in map(json.loads, text.splitlines()) if e["status"] == "ok"}
        assert {"notify-window-open", "notify-window-closed"} <= done  # run in 02 and 04, with no channel: by hand
        gate = steps["gate"]["summary"]  # what the prompt shows: the in-place restore, never "Swap the restored copy"
        assert f"INTO {live} in one transaction" in gate and "swap" not in gate.lower()
    finally:
        stop_drill(result.workdir)


def _sessions_ever(url: str, database: str) -> int | None:
    from rollbacklib.live import settled_session_count

    with psycopg.connect(url, autocommit=True) as admin:
        return settled_session_count(admin, database)


def _plan(result) -> list[dict]:
    return json.loads((result.run.run_dir / "plan.json").read_text())["steps"]


def test_drill_surgical_brings_the_dropped_values_back_and_keeps_every_later_write(tmp_path, monkeypatch):
    result, dump = _drill(tmp_path, monkeypatch, "surgical")
    try:
        run = result.run.summary
        assert result.exit_code == 0, run["error"]
        assert run["status"] == "succeeded" and run["strategy"] == "surgical"
        assert run["validation"]["passed"] is True and run["validation"]["checks"]
        assert run["rows_lost"]["total"] == 0
        reference = _backup_reference(result.url, dump)
        with psycopg.connect(result.url) as conn:
            assert migration_state(applied_migrations(conn), MIGRATION) == "absent"
            post = conn.execute("SELECT count(*) FROM users WHERE id LIKE 'user_post_%'").fetchone()[0]
            workflows = conn.execute("SELECT count(*) FROM workflows").fetchone()[0]
        with psycopg.connect(reference) as conn:
            workflows_before = conn.execute("SELECT count(*) FROM workflows").fetchone()[0]
        assert post == 5 and workflows == workflows_before + 4  # every write after the migration kept
        now, before = _users(result.url), _users(reference)
        assert {k: v for k, v in now.items() if k in before} == before  # every pre-migration user's values are back
        later = {k: v for k, v in now.items() if k not in before}  # written after the migration: no value to restore
        assert len(later) == 5 and all(password is None for password, _verified in later.values())
    finally:
        stop_drill(result.workdir)
