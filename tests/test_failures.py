"""A failure after changes began: exit 5, the executed notebook kept, the failed cell and the way back named."""

from __future__ import annotations

import json

import psycopg
from typer.testing import CliRunner

from rollbacklib.cli import app
from rollbacklib.pipeline import run_phases

from conftest import MIGRATION, behind_the_runbook, between_the_renames, kill_when


def test_a_copy_damaged_inside_the_window_is_not_promoted_and_needs_a_person(incident):
    common = dict(migration_id=MIGRATION, environment="drill", config_path=str(incident.config),
                  reports_dir=str(incident.reports), run_id="swap-then-damage", approve=MIGRATION,
                  backup=str(incident.backup))
    between_the_renames(incident, "swap-then-damage")
    with behind_the_runbook(incident, "swap-then-damage") as conn:  # the closed copy opened and damaged
        conn.execute('ALTER TABLE users DROP COLUMN "emailVerified"')

    result = run_phases(**common)

    summary = result.summary
    assert result.exit_code == 5
    assert summary["status"] == "failed"
    assert summary["error"]["phase"] == "02_execute" and summary["error"]["step"] == "swap-promote-copy"
    assert summary["error"]["message"].startswith("PRODUCTION IS DOWN")  # said first: the live name is free
    assert "no session opened on the copy since it was closed" in summary["error"]["message"]
    kept = summary["kept_database"]
    assert f'RENAME TO "{incident.database}"' in summary["error"]["next_action"] and kept in summary["error"]["next_action"]
    assert summary["error"]["escalate"] == "L3"
    executed = (result.run_dir / "02_execute.ipynb").read_text()
    assert "RefusedError" in executed
    assert [p["name"] for p in summary["phases"]] == ["01_prepare", "02_execute"]
    assert not (result.run_dir / "03_validate.ipynb").exists()  # it stopped at the first failure
    with psycopg.connect(incident.admin_url) as admin:
        assert admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (kept,)).fetchone()
        assert not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (incident.database,)).fetchone()


def test_a_copy_damaged_before_the_window_is_refused_with_production_untouched(incident):
    common = dict(migration_id=MIGRATION, environment="drill", config_path=str(incident.config),
                  reports_dir=str(incident.reports), run_id="damaged-early", approve=MIGRATION,
                  backup=str(incident.backup))
    kill_when(incident, "damaged-early", "gate", "ok")  # the run stopped right after its approval
    with behind_the_runbook(incident, "damaged-early") as conn:
        conn.execute('ALTER TABLE users DROP COLUMN "emailVerified"')

    result = run_phases(**common)

    assert result.exit_code == 4, result.summary
    assert result.summary["error"]["step"] == "block-connections"
    assert "changed since it was closed" in result.summary["error"]["message"]
    assert result.summary["changes_made"] is False
    with psycopg.connect(incident.url) as conn:  # the original serves, untouched
        assert conn.execute("SELECT count(*) FROM _prisma_migrations WHERE migration_name = %s",
                            (MIGRATION,)).fetchone()[0] == 1


def test_cli_names_the_failed_cell(incident):
    between_the_renames(incident, "r1")
    with behind_the_runbook(incident, "r1") as conn:
        conn.execute("DELETE FROM workflows WHERE id IN (SELECT id FROM workflows LIMIT 3)")
    result = CliRunner().invoke(app, incident.run_args("--run-id", "r1", "--yes", "--backup", str(incident.backup)))
    # The same run again resumes it: 01 finished; in 02 the promote finds the copy was opened since it was closed.
    assert result.exit_code == 5, result.output
    assert "01_prepare           done earlier" in result.output and "no session opened on the copy since it was closed" in result.output
    run = json.loads(next(incident.reports.rglob("r1/run.json")).read_text())
    assert run["changes_made"] is True and run["attempts"] == 2
    assert "Failed cell:" in result.output and "02_execute.ipynb cell" in result.output
