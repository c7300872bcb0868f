"""Real faults: a killed runner, a lock held, a superuser pool, two runs on one database, the way back followed literally."""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import ExitStack
from datetime import datetime

import psycopg
import pytest
from typer.testing import CliRunner

from rollbacklib.cli import app
from rollbacklib.drill.injection import (Command, FaultUnavailable, Pool, Trigger, exclusive_lock, kill_kernel,
                                         kill_runner_and_kernel, strike_when, tiny_volume)
from rollbacklib.config import load_config
from rollbacklib.journal import read_events
from rollbacklib.pipeline import run_phases
from rollbacklib.postgres.locks import database_lock
from rollbacklib.steps import Phase, StepName

from conftest import DRILL_URL_ENV, MIGRATION, behind_the_runbook, between_the_renames, kill_when

runner = CliRunner()


def _databases(incident) -> dict[str, tuple[bool, int]]:
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        rows = admin.execute("SELECT datname, datallowconn, datconnlimit FROM pg_database WHERE datname LIKE %s",
                             (incident.database + "%",)).fetchall()
    return {name: (allow, limit) for name, allow, limit in rows}


_kill_when = kill_when


@pytest.mark.parametrize("step, status", [(StepName.BLOCK, "changed"), (StepName.SWAP_KEEP, "changed")])
def test_a_run_killed_in_phase_02_is_finished_by_resume(incident, step, status):
    proc, hit = _kill_when(incident, "killed", step, status)
    run_dir = incident.reports.resolve() / MIGRATION / "drill" / "killed"
    before_resume = _databases(incident)
    assert before_resume.get(incident.database) != (True, -1)  # production is down: blocked, or renamed away

    result = runner.invoke(app, ["resume", str(run_dir), "--config", str(incident.config)])

    assert result.exit_code == 0, result.output
    found = _databases(incident)
    kept = f"{incident.database}__pre_rollback_killed"
    assert found[incident.database] == (True, -1)  # serving again
    assert found[kept] == (False, 0)  # kept, closed
    assert not any("__restored_" in name for name in found)  # no copy left behind
    with psycopg.connect(incident.url) as conn:  # the live database is the restored one
        assert conn.execute("SELECT count(*) FROM _prisma_migrations WHERE migration_name = %s",
                            (MIGRATION,)).fetchone()[0] == 0
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "succeeded" and run["attempts"] == 2 and run["validation"]["passed"]
    skipped = [e for e in read_events(run_dir) if e["status"] == "skipped" and "already done" in e["message"]]
    assert skipped, "resume re-checked postconditions and skipped what was done"


def test_the_way_back_printed_after_a_failure_works_when_followed_literally(incident):
    common = dict(migration_id=MIGRATION, environment="drill", config_path=str(incident.config),
                  reports_dir=str(incident.reports), run_id="way-back", approve=MIGRATION, backup=str(incident.backup))
    between_the_renames(incident, "way-back")
    with behind_the_runbook(incident, "way-back") as conn:  # the closed copy opened and damaged in the window
        conn.execute('ALTER TABLE users DROP COLUMN "emailVerified"')
    result = run_phases(**common)
    assert result.exit_code == 5 and result.summary["error"]["step"] == StepName.SWAP_PROMOTE
    statements = result.summary["way_back"]
    assert any("ALLOW_CONNECTIONS true" in s for s in statements), statements  # the unblock is part of it
    assert statements[0] in result.summary["error"]["next_action"]

    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        for statement in statements:
            admin.execute(statement)

    with psycopg.connect(incident.url) as conn:  # the application's URL answers, on the pre-rollback database
        assert conn.execute("SELECT 1").fetchone()[0] == 1
        state = conn.execute("SELECT finished_at IS NOT NULL FROM _prisma_migrations WHERE migration_name = %s",
                             (MIGRATION,)).fetchone()
        assert state == (True,)


def test_a_second_run_on_the_same_database_is_refused_whatever_its_environment_name(incident, tmp_path):
    text = incident.config.read_text().replace('"scenarios/', f'"{incident.config.resolve().parent}/scenarios/')
    config = tmp_path / "runbook.toml"
    config.write_text(text + f'\n[environments.drill_too]\ndatabase_url_env = "{DRILL_URL_ENV}"\n'
                             'backup_dir = "backups/drill"\n[environments.drill_too.thresholds]\nmin_backup_bytes = 1024\n')
    env = load_config(config).environment("drill")
    with database_lock(env, "first-run"):
        result = runner.invoke(app, ["run", "--env", "drill_too", "-m", MIGRATION, "--config", str(config),
                                     "--reports-dir", str(tmp_path / "other-reports"), "--backup",
                                     str(incident.backup), "--yes"])
    assert result.exit_code == 4, result.output
    assert "Another rollback holds database" in result.output and "run=first-run" in result.output
    assert f"pid={os.getpid()}" in result.output


def test_a_held_lock_times_out_and_names_the_session_it_waited_on(incident):
    with exclusive_lock(incident.url, "users") as pid:  # held by a session idle in its transaction
        result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--yes"))
    assert result.exit_code == 3, result.output
    assert "timeout" in result.output and f"It waited on: pid {pid}" in result.output
    assert _databases(incident)[incident.database] == (True, -1)


def test_no_session_reaches_the_restored_database_before_it_is_validated(incident):
    """A pool that connects as a superuser (CONNECTION LIMIT does not stop it) keeps trying during the whole run."""
    with Pool(incident.url, name="superuser-pool") as pool:
        result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--yes", "--run-id", "pool"))
    seen = pool.seen
    assert result.exit_code == 0, result.output
    run_dir = incident.reports.resolve() / MIGRATION / "drill" / "pool"
    with psycopg.connect(incident.admin_url) as admin:
        restored_oid = admin.execute("SELECT oid FROM pg_database WHERE datname = %s", (incident.database,)).fetchone()[0]
    reopened = min(datetime.fromisoformat(e["ts"]) for e in read_events(run_dir)
                   if e["step"] == StepName.REOPEN and e["status"] == "changed")
    validated = max(datetime.fromisoformat(e["ts"]) for e in read_events(run_dir)
                    if e["step"] == StepName.VALIDATE_COPY and e["status"] == "ok")
    early = [at for oid, at in seen if oid == restored_oid and at < reopened]
    assert not early, f"the pool reached the restored database before it was reopened: {early[:3]}"
    assert validated < reopened
    assert any(oid == restored_oid for oid, _ in seen), "the pool never got in after the reopen (test did not test)"


def test_a_migration_that_failed_without_changing_the_schema_is_not_restored(fresh_db, tmp_path, monkeypatch):
    """Prisma's P3009 state: finished_at empty, the error in logs, the schema untouched. A restore would only lose
    writes: swap, asked for, is refused; resolve-only applies instead (tests/test_strategies.py)."""
    from rollbacklib.drill.prisma_migrate import apply_migration
    from rollbacklib.drill.scenario import generate_data, load_scenario, prepare_until
    from rollbacklib.errors import FailedError
    from rollbacklib.postgres.backup import take_backup
    from rollbacklib.postgres.client import client_tools
    from rollbacklib.resources import scenarios_dir
    import shutil as sh

    scenario_dir = tmp_path / "scenario"
    sh.copytree(scenarios_dir() / "auth-platform", scenario_dir)
    (scenario_dir / "prisma" / "migrations" / MIGRATION / "migration.sql").write_text(
        'ALTER TABLE "users" DROP COLUMN "passwordHash";\nSELECT 1 / 0;\n')
    scenario = load_scenario(scenario_dir)
    monkeypatch.setenv(DRILL_URL_ENV, fresh_db)
    with psycopg.connect(fresh_db) as conn:
        prepare_until(conn, scenario, MIGRATION)
        generate_data(conn, scenario, 50)
    backup = take_backup(fresh_db, tmp_path / "backups", client_tools("embedded"))
    with psycopg.connect(fresh_db) as conn:
        with pytest.raises(FailedError):
            apply_migration(conn, scenario.migrations_dir, MIGRATION)
        conn.execute("UPDATE users SET email = 'changed-after-the-backup@example.com' WHERE id = "
                     "(SELECT id FROM users LIMIT 1)")
        conn.commit()
    config = tmp_path / "runbook.toml"
    from conftest import CONFIG
    config.write_text(CONFIG.read_text().replace('"scenarios/', f'"{CONFIG.resolve().parent}/scenarios/'))

    result = runner.invoke(app, ["run", "--env", "drill", "-m", MIGRATION, "--config", str(config), "--reports-dir",
                                 str(tmp_path / "reports"), "--backup", str(backup), "--yes", "--strategy", "swap"])

    assert result.exit_code == 3, result.output
    assert "failed without changing the schema" in result.output and "--strategy resolve-only" in result.output
    run = json.loads(next((tmp_path / "reports").rglob("run.json")).read_text())
    assert (run["error"]["phase"], run["error"]["step"]) == ("01_prepare", "strategy")  # its own step
    assert "✓ verify-backup" in result.output and "✓ migration-state" in result.output and "✗ strategy" in result.output
    with psycopg.connect(fresh_db) as conn:  # the write made after the backup is still there
        assert conn.execute("SELECT count(*) FROM users WHERE email = 'changed-after-the-backup@example.com'"
                            ).fetchone()[0] == 1


def test_a_copy_the_server_disk_can_not_hold_is_refused_with_the_figures(incident, tmp_path):
    text = incident.config.read_text().replace('"scenarios/', f'"{incident.config.resolve().parent}/scenarios/')
    config = tmp_path / "runbook.toml"
    config.write_text(text.replace("lock_timeout_seconds = 3\n", "lock_timeout_seconds = 3\nrestore_space_factor = 1e12\n"))
    before = _databases(incident)
    args = incident.run_args("--backup", str(incident.backup), "--yes")
    args[args.index("--config") + 1] = str(config)

    result = runner.invoke(app, args)

    assert result.exit_code == 3, result.output
    assert "Not enough free disk for the copy" in result.output and "restore_space_factor" in result.output
    assert _databases(incident) == before  # no copy was created


@pytest.fixture
def small_volume(tmp_path):
    """A real filesystem of a chosen size (tmpfs), for a disk that fills up."""
    with ExitStack() as stack:
        def make(size: int):
            try:
                return stack.enter_context(tiny_volume(tmp_path / f"volume-{size}", size))
            except FaultUnavailable as unavailable:
                pytest.skip(unavailable.message)

        yield make


@pytest.mark.parametrize("where", ["pg_dump", "manifest"])
def test_a_backup_that_fills_the_disk_leaves_nothing_behind(incident, tmp_path, small_volume, where):
    dump = incident.backup.stat().st_size
    page = 4096
    room = 2 * page if where == "pg_dump" else (dump // page + 2) * page  # the dump fits, its manifest does not
    assert where == "pg_dump" or (incident.backup.parent / (incident.backup.name + ".manifest.json")).stat().st_size > 2 * page
    volume = small_volume(room)
    text = incident.config.read_text().replace('"scenarios/', f'"{incident.config.resolve().parent}/scenarios/')
    config = tmp_path / "runbook.toml"
    config.write_text(text.replace('backup_dir = "backups/drill"', f'backup_dir = "{volume}"'))

    result = runner.invoke(app, ["backup", "--env", "drill", "--config", str(config)])

    assert result.exit_code == 3, result.output
    assert "No space left on the device" in result.output and "partial files were removed" in result.output
    assert list(volume.iterdir()) == []


def test_a_kernel_killed_mid_phase_is_a_journaled_failure_and_a_new_run_names_what_it_left(incident):
    command = Command(incident.run_args("--backup", str(incident.backup), "--yes", "--run-id", "kernel-dies"),
                      say=lambda _line: None).start()
    journal = incident.reports.resolve() / MIGRATION / "drill" / "kernel-dies" / "journal.jsonl"
    strike_when(command, journal, Trigger(StepName.CLOSE_COPY, ("ok",)), kill_kernel)
    returncode = command.wait(120)
    output = command.output
    assert returncode in (3, 5), output  # never 1 with a traceback
    assert "Traceback" not in output
    run = json.loads((journal.parent / "run.json").read_text())
    assert run["status"] in ("aborted", "failed", "refused") and run["error"]["step"] in ("notebook", StepName.GATE)
    assert "rollback resume" in run["error"]["next_action"] or run["error"]["step"] == StepName.GATE

    # a new run (not a resume) names the copy the killed one left, and how to drop it
    result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--dry-run", "--run-id", "next"))
    assert f"left by an earlier run: {incident.database}__restored_kernel-dies" in result.output
    assert "DROP DATABASE IF EXISTS" in result.output


def test_a_run_resumed_after_an_aborted_attempt_succeeds(incident, tmp_path):
    missing = tmp_path / "no-such-backup.dump"
    first = runner.invoke(app, incident.run_args("--backup", str(missing), "--yes", "--run-id", "again"))
    assert first.exit_code == 3, first.output

    second = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--yes", "--run-id", "again"))

    assert second.exit_code == 0, second.output
    run = json.loads(next(incident.reports.rglob("again/run.json")).read_text())
    assert run["status"] == "succeeded" and run["attempts"] == 2 and run["validation"]["passed"]
    assert [e["step"] for e in run["earlier_errors"]] == [StepName.VERIFY_BACKUP]


def test_a_live_database_left_blocked_by_an_earlier_run_is_named_not_run_over(incident):
    proc, _ = _kill_when(incident, "crashed", StepName.BLOCK, "changed")
    before = _databases(incident)

    result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--yes", "--run-id", "fresh"))

    assert result.exit_code == 3, result.output
    assert "an earlier rollback stopped midway" in result.output
    assert "rollback resume" in result.output and "crashed" in result.output
    assert _databases(incident) == before
