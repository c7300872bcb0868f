"""A failure after changes began: exit 5, the executed notebook kept, the failed cell and the way back named."""

from __future__ import annotations

import json

import psycopg
from typer.testing import CliRunner

from rollbacklib.cli import app
from rollbacklib.pipeline import run_phases

from conftest import MIGRATION, behind_the_runbook


def test_validation_failure_after_the_swap_needs_a_person(incident):
    common = dict(migration_id=MIGRATION, environment="drill", config_path=str(incident.config),
                  reports_dir=str(incident.reports), run_id="swap-then-damage", approve=MIGRATION,
                  backup=str(incident.backup))
    first = run_phases(**common, phases=("01_prepare", "02_execute"))
    assert first.summary["changes_made"] is True and first.summary["error"] is None

    with behind_the_runbook(incident, "swap-then-damage") as conn:  # the closed copy opened and damaged after the swap
        conn.execute('ALTER TABLE users DROP COLUMN "emailVerified"')

    result = run_phases(**common, phases=("03_validate",))

    summary = result.summary
    assert result.exit_code == 5
    assert summary["status"] == "failed"
    assert summary["error"]["phase"] == "03_validate" and summary["error"]["step"] == "validation"
    assert summary["error"]["message"].startswith("PRODUCTION IS DOWN")  # said first: the live name is free
    assert "no session opened on the copy since it was closed" in summary["error"]["message"]
    kept = summary["kept_database"]
    assert f'RENAME TO "{incident.database}"' in summary["error"]["next_action"] and kept in summary["error"]["next_action"]
    assert summary["error"]["escalate"] == "L3"
    executed = (result.run_dir / "03_validate.ipynb").read_text()
    assert "ValidationFailed" in executed
    assert [p["name"] for p in summary["phases"]] == ["01_prepare", "02_execute", "03_validate"]
    assert not (result.run_dir / "04_restore_service.ipynb").exists()  # it stopped at the first failure
    with psycopg.connect(incident.admin_url) as admin:
        assert admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (kept,)).fetchone()


def test_cli_names_the_failed_cell(incident):
    run_phases(migration_id=MIGRATION, environment="drill", config_path=str(incident.config),
               reports_dir=str(incident.reports), run_id="r1", approve=MIGRATION, backup=str(incident.backup),
               phases=("01_prepare", "02_execute"))
    with behind_the_runbook(incident, "r1") as conn:
        conn.execute("DELETE FROM workflows WHERE id IN (SELECT id FROM workflows LIMIT 3)")
    result = CliRunner().invoke(app, incident.run_args("--run-id", "r1", "--yes", "--backup", str(incident.backup)))
    # The same run again resumes it: 01 finished, 02 holds, 03 finds the copy was opened since it was closed.
    assert result.exit_code == 5, result.output
    assert "01_prepare           done earlier" in result.output and "no session opened on the copy since it was closed" in result.output
    run = json.loads(next(incident.reports.rglob("r1/run.json")).read_text())
    assert run["changes_made"] is True and run["attempts"] == 2
    assert "Failed cell:" in result.output and "03_validate.ipynb cell" in result.output
