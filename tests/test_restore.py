"""The restore of phase 02 on a real server: pg_restore -j, its progress, ANALYZE, its failure, the .sql.gz path.

Issue 13 item 4. Behaviour, never time: the command in the plan and the journal, the progress
events, the copy's statistics and rows read from the catalog.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import nbformat
import psycopg
import pytest
from typer.testing import CliRunner

from rollbacklib.cli import app
from rollbacklib.errors import AbortedError
from rollbacklib.journal import read_events
from rollbacklib.phases import restored_copy
from rollbacklib.pipeline import run_phases
from rollbacklib.postgres import database as db
from rollbacklib.postgres.client import client_tools, libpq_env, with_database
from rollbacklib.postgres.restore import VerboseCounter, list_command, restore_into, restore_jobs, tables_to_restore
from rollbacklib.run import open_run
from rollbacklib.steps import Phase, StepName, read_plan

from conftest import MIGRATION, before_the_migration, plain_gz, server_snapshot

runner = CliRunner()


def _prepared(incident, run_id: str, backup=None, config=None):
    """Phase 01 done for ``run_id``; the context phase 02's cells use."""
    config = str(config or incident.config)
    result = run_phases(migration_id=MIGRATION, environment="drill", config_path=config,
                        reports_dir=str(incident.reports), run_id=run_id, backup=str(backup or incident.backup),
                        phases=(Phase.PREPARE,))
    assert result.summary["phases"][0]["status"] == "succeeded", result.summary["error"]
    return open_run(migration_id=MIGRATION, environment="drill", config_path=config, run_id=run_id,
                    reports_dir=str(incident.reports), phase=Phase.EXECUTE)


def _restore_events(ctx) -> list[dict]:
    return [e for e in read_events(ctx.run_dir) if e["step"] == StepName.RESTORE]


def _progress(events: list[dict]) -> list[dict]:
    return [e["evidence"]["progress"] for e in events if e["status"] == "info" and "progress" in e["evidence"]]


def _last_analyze(url: str, timeout: float = 10) -> dict:
    """Each table's ``last_analyze`` (the statistics reach pg_stat a moment after the session that made them ends)."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(url, autocommit=True) as conn:
            found = dict(conn.execute("SELECT relname, last_analyze FROM pg_stat_user_tables").fetchall())
        if (found and all(found.values())) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_the_restore_runs_in_parallel_reports_its_progress_and_analyzes_the_copy(incident):
    ctx = _prepared(incident, "parallel")
    restored_copy.create_copy(ctx)
    restored_copy.restore_copy(ctx)
    restored_copy.analyze_copy(ctx)

    step = read_plan(ctx.run_dir).step(StepName.RESTORE)
    (command,) = [a for a in step.actions if a.kind == "command"]
    jobs, _ = restore_jobs(incident.url, None)  # a Unix socket: the server is on this machine
    assert jobs == (os.cpu_count() or 1)
    assert f"--jobs={jobs}" in command.argv and "--exit-on-error" in command.argv
    assert "--single-transaction" not in command.argv
    events = _restore_events(ctx)
    ran = [e for e in events if e["status"] == "ran"]
    assert [e["message"] for e in ran] == [command.text]  # what was planned is what ran
    (analyze,) = read_plan(ctx.run_dir).step(StepName.ANALYZE_COPY).actions
    assert analyze.argv[1:] == ("--analyze-only", f"--jobs={jobs}", f"--dbname={incident.database}__restored_parallel")
    assert [e["message"] for e in read_events(ctx.run_dir) if e["step"] == StepName.ANALYZE_COPY
            and e["status"] == "ran"] == [analyze.text]

    progress = _progress(events)
    total = tables_to_restore(list_command(incident.backup, client_tools("embedded")))
    assert total == len(json.loads(incident.backup.with_name(incident.backup.name + ".manifest.json").read_text())
                        ["row_counts"]) > 1
    assert progress and all(p["unit"] == "tables" and 0 <= p["done"] <= p["total"] == total for p in progress)
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
    assert progress[-1]["done"] == total

    copy = with_database(incident.url, f"{incident.database}__restored_parallel")
    analyzed = _last_analyze(copy)
    assert analyzed and all(analyzed.values()), analyzed  # every table has statistics before the copy goes live


def test_a_parallel_restore_that_fails_drops_the_copy_and_changes_nothing_live(incident):
    ctx = _prepared(incident, "broken")
    before = server_snapshot(incident)
    data = incident.backup.read_bytes()  # verified in phase 01; damaged on disk afterwards
    incident.backup.write_bytes(data[: len(data) * 2 // 3])
    restored_copy.create_copy(ctx)

    with pytest.raises(AbortedError) as aborted:
        restored_copy.restore_copy(ctx)

    assert "the live database was not touched" in aborted.value.message
    assert "pg_restore exited with" in aborted.value.message
    ran = [e for e in _restore_events(ctx) if e["status"] == "ran"]
    assert any("--jobs=" in e["message"] for e in ran)
    assert any(e["message"].startswith("DROP DATABASE") for e in ran)
    assert server_snapshot(incident) == before  # the copy is gone; the live database as it was
    assert not any(e["status"] == "changed" for e in read_events(ctx.run_dir))


def test_a_pre_existing_object_in_the_way_fails_the_restore_and_drops_the_copy(incident):
    ctx = _prepared(incident, "clash")
    before = server_snapshot(incident)
    restored_copy.create_copy(ctx)
    with psycopg.connect(with_database(incident.url, f"{incident.database}__restored_clash"), autocommit=True) as c:
        c.execute("CREATE SEQUENCE public.users")  # no table (so not a cut-short restore), but the name is taken

    with pytest.raises(AbortedError) as aborted:
        restored_copy.restore_copy(ctx)

    assert "already exists" in aborted.value.message
    assert server_snapshot(incident) == before


def test_the_plans_sql_gz_restores_in_one_transaction_with_its_progress_in_bytes(incident, tmp_path):
    plain = before_the_migration(plain_gz(incident.backup, tmp_path))
    ctx = _prepared(incident, "plain", backup=plain)
    restored_copy.create_copy(ctx)
    restored_copy.restore_copy(ctx)
    restored_copy.analyze_copy(ctx)

    step = read_plan(ctx.run_dir).step(StepName.RESTORE)
    (command,) = [a for a in step.actions if a.kind == "command"]
    assert command.text.startswith(f"gunzip -c {plain} | ") and "--single-transaction" in command.argv
    progress = _progress(_restore_events(ctx))
    size = plain.stat().st_size
    assert progress and all(p["unit"] == "bytes" and p["done"] <= p["total"] == size for p in progress)
    assert progress[-1]["done"] == size
    manifest = json.loads(incident.backup.with_name(incident.backup.name + ".manifest.json").read_text())
    with psycopg.connect(with_database(incident.url, f"{incident.database}__restored_plain"), autocommit=True) as c:
        assert db.row_counts(c) == manifest["row_counts"]
    assert all(_last_analyze(with_database(incident.url, f"{incident.database}__restored_plain")).values())


def test_a_directory_archive_is_verified_and_restored_in_parallel(incident, tmp_path):
    tools = client_tools("embedded")
    source = f"{incident.database}_as_dumped"
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{source}"')
    restore_into(incident.backup, incident.url, source, tools)
    folder = tmp_path / "backup_prod_pre_migration.dir"
    subprocess.run([tools.path("pg_dump"), "--format=directory", f"--file={folder}", source], check=True,
                   env=libpq_env(with_database(incident.url, source)))
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{source}"')
    ctx = _prepared(incident, "directory", backup=before_the_migration(folder))
    restored_copy.create_copy(ctx)
    restored_copy.restore_copy(ctx)

    assert ctx.state().backup.format == "directory"
    step = read_plan(ctx.run_dir).step(StepName.RESTORE)
    (command,) = [a for a in step.actions if a.kind == "command"]
    assert command.argv[-1] == str(folder) and any(a.startswith("--jobs=") for a in command.argv)
    progress = _progress(_restore_events(ctx))
    assert progress[-1]["done"] == progress[-1]["total"] == tables_to_restore(list_command(folder, tools))
    manifest = json.loads(incident.backup.with_name(incident.backup.name + ".manifest.json").read_text())
    with psycopg.connect(with_database(incident.url, f"{incident.database}__restored_directory")) as c:
        assert db.row_counts(c) == manifest["row_counts"]


def test_the_bar_shows_in_the_terminal_and_in_the_saved_notebook(incident):
    result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--yes", "--run-id", "bar"))

    assert result.exit_code == 0, result.output
    total = tables_to_restore(list_command(incident.backup, client_tools("embedded")))
    assert f"> restore [{'#' * 24}] {total}/{total} tables" in result.output
    run_dir = next(incident.reports.rglob("bar"))
    notebook = nbformat.read(run_dir / "02_execute.ipynb", as_version=4)
    shown = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
             if "restore [" in str(o.get("data", {}).get("text/plain", ""))]
    assert len(shown) == 1, shown  # one display, updated in place
    assert shown[0]["data"]["text/plain"].endswith(f"{total}/{total} tables")
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "succeeded"


@pytest.mark.parametrize("lines, done", [
    (['pg_restore: processing data for table "public.a"'], 0),
    (['pg_restore: processing data for table "public.a"', 'pg_restore: processing data for table "public.b"'], 1),
    (['pg_restore: processing data for table "public.a"', 'pg_restore: creating INDEX "public.a_i"'], 1),
    (["pg_restore: entering main parallel loop", "pg_restore: launching item 7 TABLE DATA a",
      'pg_restore: processing data for table "public.a"', "pg_restore: finished item 7 TABLE DATA a",
      "pg_restore: finished item 9 INDEX a_i"], 1),
])
def test_tables_done_are_read_from_pg_restores_own_lines(lines, done):
    counter = VerboseCounter()
    for line in lines:
        counter.feed(line)
    assert counter.done == done


def test_restore_jobs_in_the_config_is_the_plans_figure(incident, tmp_path):
    text = incident.config.read_text().replace('"scenarios/', f'"{incident.config.resolve().parent}/scenarios/')
    config = tmp_path / "runbook.toml"
    config.write_text(text.replace("lock_timeout_seconds = 3\n", "lock_timeout_seconds = 3\nrestore_jobs = 3\n"))
    ctx = _prepared(incident, "three", config=config)

    step = read_plan(ctx.run_dir).step(StepName.RESTORE)
    (command,) = [a for a in step.actions if a.kind == "command"]
    assert "--jobs=3" in command.argv and "pg_restore -j 3 (restore_jobs in the config)" in step.summary


@pytest.mark.parametrize("url, configured, jobs", [
    ("postgresql://u@/db?host=/var/run/postgresql", 0, os.cpu_count() or 1),
    ("postgresql://u@localhost:5432/db", None, os.cpu_count() or 1),
    ("postgresql://u@db.internal:5432/db", 0, 4),
    ("postgresql://u@db.internal:5432/db", 12, 12),
])
def test_restore_jobs_are_the_configured_figure_else_the_local_cores_else_four(url, configured, jobs):
    assert restore_jobs(url, configured)[0] == jobs
