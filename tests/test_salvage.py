"""Salvage: what a restore discards, listed before the gate by key, and carried over after the reopen when asked."""

from __future__ import annotations

import json

import psycopg
from typer.testing import CliRunner

from conftest import journal_events
from rollbacklib import salvage as sv
from rollbacklib.cli import app
from rollbacklib.phases.salvage import SALVAGE_ENV
from rollbacklib.postgres import rowdiff
from rollbacklib.postgres.client import database_name, with_database
from rollbacklib.steps import StepName

SCHEMA = """
CREATE TABLE accounts (id text PRIMARY KEY, email text UNIQUE NOT NULL, "createdAt" timestamptz NOT NULL DEFAULT now(),
                       "updatedAt" timestamptz NOT NULL DEFAULT now());
CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "accountId" text REFERENCES accounts(id),
                    label text);
INSERT INTO accounts (id, email) SELECT 'a' || i, 'a' || i || '@x.test' FROM generate_series(1, 20) i;
INSERT INTO items ("accountId", label) SELECT 'a' || (1 + i % 20), 'item ' || i FROM generate_series(1, 40) i;
"""

# after the backup, on the database the restore replaces (it becomes the kept one)
KEPT_WRITES = """
INSERT INTO accounts (id, email) VALUES ('late1', 'late1@x.test'), ('late2', 'late2@x.test'), ('late3', 'late3@x.test');
INSERT INTO items ("accountId", label) OVERRIDING SYSTEM VALUE VALUES ('late1', 'a late item');
UPDATE accounts SET email = 'renamed-' || id || '@x.test', "updatedAt" = now() WHERE id IN ('a1', 'a2');
DELETE FROM items WHERE id IN (39, 40);
"""

# on the restored database after the reopen, before the carry: the application at work again
LIVE_WRITES = """
INSERT INTO accounts (id, email) VALUES ('late3', 'someone-else@x.test');
UPDATE accounts SET email = 'changed-since-reopen@x.test' WHERE id = 'a2';
UPDATE items SET label = 'edited since reopen' WHERE id = 40;
"""


def _databases(fresh_db, pg_server, tmp_path):
    """The copy (restored from the backup, hashed), and the kept database with writes made after the backup."""
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(SCHEMA)
    kept = database_name(fresh_db) + "_kept"
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{kept}" TEMPLATE "{database_name(fresh_db)}"')
    kept_url = with_database(fresh_db, kept)
    snapshot = tmp_path / "copy_rows"
    with psycopg.connect(fresh_db, autocommit=True) as copy, psycopg.connect(kept_url, autocommit=True) as live:
        rowdiff.snapshot(copy, rowdiff.table_shapes(live), snapshot)
    with psycopg.connect(kept_url, autocommit=True) as conn:
        conn.execute(KEPT_WRITES)
    return fresh_db, kept_url, snapshot


def test_the_preview_lists_every_key_the_restore_would_discard_with_its_timestamps(fresh_db, pg_server, tmp_path):
    copy_url, live_url, snapshot = _databases(fresh_db, pg_server, tmp_path)
    with psycopg.connect(live_url) as live, psycopg.connect(copy_url) as copy:
        found = sv.preview(live, copy, snapshot, tmp_path / "preview")

    assert (found["total"], found["inserted"], found["updated"], found["deleted"]) == (8, 4, 2, 2)
    accounts = found["tables"]["accounts"]
    assert (accounts["inserted"], accounts["updated"], accounts["deleted"]) == (3, 2, 0)
    records = [json.loads(line) for line in (tmp_path / "preview" / accounts["file"]).read_text().splitlines()]
    assert sorted((r["kind"], r["key"][0]) for r in records) == [
        ("inserted", "late1"), ("inserted", "late2"), ("inserted", "late3"), ("updated", "a1"), ("updated", "a2")]
    assert all(r["createdAt"] and r["updatedAt"] for r in records)
    items = [json.loads(line) for line in (tmp_path / "preview" / found["tables"]["items"]["file"]).read_text()
             .splitlines()]
    assert sorted((r["kind"], r["key"][0]) for r in items) == [("deleted", 39), ("deleted", 40), ("inserted", 41)]
    assert json.loads((tmp_path / "preview" / "preview.json").read_text())["projection"] is True
    with psycopg.connect(live_url) as live:  # the copy closed (a resumed run): deletes by key alone
        again = sv.preview(live, None, snapshot, tmp_path / "again")
    assert again["total"] == 8 and [r["key"] for r in again["tables"]["items"]["sample"] if r["kind"] == "deleted"] \
        == [[39], [40]]


def test_the_carry_takes_what_the_old_schema_accepts_and_never_overwrites_a_later_write(fresh_db, pg_server,
                                                                                        tmp_path):
    live_url, kept_url, snapshot = _databases(fresh_db, pg_server, tmp_path)  # the copy serves: it is "live"
    with psycopg.connect(live_url, autocommit=True) as conn:
        conn.execute(LIVE_WRITES)

    with psycopg.connect(kept_url, autocommit=True) as kept, psycopg.connect(live_url, autocommit=True) as live:
        done = sv.carry(kept, live, snapshot, tmp_path / "salvage")

    assert done["rows_lost"]["total"] == 8 and done["carried"] + done["conflicts"] == 8
    accounts, items = done["tables"]["accounts"], done["tables"]["items"]
    assert accounts["carried"] == {"inserted": 2, "updated": 1, "deleted": 0}
    assert accounts["conflicts"] == {"inserted": 1, "updated": 1, "deleted": 0}
    assert items["carried"] == {"inserted": 1, "updated": 0, "deleted": 1}
    assert items["conflicts"] == {"inserted": 0, "updated": 0, "deleted": 1}
    with psycopg.connect(live_url) as conn:
        emails = dict(conn.execute("SELECT id, email FROM accounts WHERE id IN ('a1', 'a2', 'late1', 'late3')"))
        labels = dict(conn.execute("SELECT id, label FROM items WHERE id IN (39, 40, 41)"))
    assert emails == {"a1": "renamed-a1@x.test", "a2": "changed-since-reopen@x.test", "late1": "late1@x.test",
                      "late3": "someone-else@x.test"}  # later writes win; the kept ones are listed as conflicts
    assert labels == {40: "edited since reopen", 41: "a late item"}
    conflicts = [json.loads(line) for line in (tmp_path / "salvage" / "conflicts.jsonl").read_text().splitlines()]
    assert sorted((c["table"], c["kind"], c["key"][0]) for c in conflicts) == [
        ("accounts", "inserted", "late3"), ("accounts", "updated", "a2"), ("items", "deleted", 40)]


def test_a_swap_with_salvage_previews_before_the_gate_and_carries_after_the_reopen(incident, monkeypatch):
    monkeypatch.setenv(SALVAGE_ENV, "0")  # --salvage sets it for the kernels; restored after the test

    result = CliRunner().invoke(app, incident.run_args("--backup", str(incident.backup), "--yes", "--salvage"))

    assert result.exit_code == 0, result.output
    events = journal_events(incident)
    steps = [e["step"] for e in events]
    preview = next(e for e in events if e["step"] == StepName.SALVAGE_PREVIEW and "salvage_preview" in e["evidence"])
    gate = next(i for i, e in enumerate(events) if e["step"] == StepName.GATE and e["status"] == "started")
    assert events.index(preview) < gate and steps.index(StepName.SALVAGE_CARRY) > steps.index(StepName.HEALTH)
    plan = json.loads(next(incident.reports.rglob("plan.json")).read_text())
    approved = next(e for e in events if e["step"] == StepName.GATE and "approval" in e["evidence"])
    assert approved["evidence"]["approval"]["plan_digest"] == plan["digest"]  # the approval covers the carry
    assert StepName.SALVAGE_CARRY in [s["name"] for s in plan["steps"]]
    run = json.loads(next(incident.reports.rglob("run.json")).read_text())
    lost = run["rows_lost"]
    assert preview["evidence"]["salvage_preview"]["total"] == lost["total"] > 0  # no write between the two
    carried = next(e for e in events if e["step"] == StepName.SALVAGE_CARRY and "salvage" in e["evidence"])
    done = carried["evidence"]["salvage"]
    assert done["rows_lost"]["total"] == lost["total"] == done["carried"] + done["conflicts"]
    assert done["carried"] == lost["total"], done  # the seed's new users and workflows all fit the old schema
    assert run["salvage"] == done and run["rows_lost_preview"]["total"] == lost["total"]
    with psycopg.connect(incident.url) as conn:
        users = [r[0] for r in conn.execute("SELECT id FROM users WHERE id LIKE 'user_post_%' ORDER BY id")]
        workflows = conn.execute("SELECT count(*) FROM workflows WHERE id LIKE 'wf_post_%'").fetchone()[0]
        hashes = conn.execute("SELECT count(*) FROM users WHERE \"passwordHash\" IS NOT NULL").fetchone()[0]
    assert users == [f"user_post_000{i}" for i in range(1, 6)] and workflows == 4
    assert hashes > 0  # the restored values are kept: the carry adds the later rows, it does not redo the migration
