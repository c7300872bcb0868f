"""Bad input, the gate, the lock and the dry run: each with its exit code and a message that says what to do."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from rollbacklib.cli import app
from rollbacklib.pipeline import environment_lock

from conftest import CONFIG, DRILL_URL_ENV, MIGRATION, server_snapshot

runner = CliRunner()


def _run_json(incident) -> dict:
    return json.loads(next(incident.reports.rglob("run.json")).read_text())


@pytest.mark.parametrize("args, code, says", [
    (["--env", "nowhere", "-m", MIGRATION], 2, "use one of: drill, production, staging"),
    (["--env", "drill", "-m", "update_user_schema_final"], 2, "YYYYMMDDHHMMSS_name"),
    (["--env", "drill", "-m", "2025-12-02_update"], 2, "YYYYMMDDHHMMSS_name"),
])
def test_bad_input_is_bad_usage(args, code, says, tmp_path, monkeypatch):
    monkeypatch.setenv(DRILL_URL_ENV, "postgresql://nobody@/nowhere")
    result = runner.invoke(app, ["run", *args, "--config", str(CONFIG), "--reports-dir", str(tmp_path)])
    assert result.exit_code == code, result.output
    assert says in result.output
    assert not list(tmp_path.rglob("*.ipynb"))  # nothing ran


def test_missing_secret_names_the_variable_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(DRILL_URL_ENV, raising=False)
    result = runner.invoke(app, ["run", "--env", "drill", "-m", MIGRATION, "--config", str(CONFIG),
                                 "--reports-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"Environment variable {DRILL_URL_ENV} is not set" in result.output
    assert f"export {DRILL_URL_ENV}=" in result.output


def test_config_errors_name_the_file_and_the_key(tmp_path):
    bad = tmp_path / "runbook.toml"
    bad.write_text('[environments.prod]\ndatabase_url_env = "postgresql://u:p@h/db"\nbackup_dir = "b"\ncolour = 1\n')
    result = runner.invoke(app, ["run", "--env", "prod", "-m", MIGRATION, "--config", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}: environments.prod.database_url_env" in result.output
    assert "NAME of an environment variable" in result.output
    assert f"{bad}: environments.prod.colour" in result.output


def test_unknown_migration_aborts_before_anything(incident):
    before = server_snapshot(incident)
    result = runner.invoke(app, ["run", "--env", "drill", "-m", "20251203000000_never_applied", "--config",
                                 str(incident.config), "--reports-dir", str(incident.reports), "--yes"])
    assert result.exit_code == 3, result.output
    assert "is not in _prisma_migrations" in result.output
    assert server_snapshot(incident) == before


def test_gate_refuses_without_approval_and_leaves_the_server_as_it_was(incident):
    before = server_snapshot(incident)
    result = runner.invoke(app, incident.run_args("--backup", str(incident.backup)))
    assert result.exit_code == 4, result.output
    assert f"approve {MIGRATION}" in result.output or "--yes" in result.output
    assert server_snapshot(incident) == before  # the restored copy made before the gate is gone again
    run = _run_json(incident)
    assert run["status"] == "refused" and run["error"]["step"] == "gate"
    assert run["outcome"].startswith("refused before any change: nothing was changed; undone: DROP DATABASE")
    assert "REFUSED (exit 4): refused before any change" in result.output


def test_a_held_lock_refuses_a_second_run(incident):
    with environment_lock(incident.reports.resolve(), "drill"):
        result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--yes"))
    assert result.exit_code == 4, result.output
    assert "Another rollback is running" in result.output


def test_dry_run_prints_the_plan_and_changes_nothing(incident):
    before = server_snapshot(incident)
    result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--dry-run"))
    assert result.exit_code == 0, result.output
    assert server_snapshot(incident) == before
    assert result.output.rstrip().splitlines()[-1] == "DRY RUN: nothing was changed"
    assert "SUCCEEDED" not in result.output and "planned, not executed" in result.output
    # Formatted once: the statement printed is the one run (no "LIMIT  -1" from a literal's sign padding).
    assert f'ALTER DATABASE "{incident.database}" WITH CONNECTION LIMIT -1' in result.output
    assert "LIMIT  " not in result.output
    run = _run_json(incident)
    assert run["dry_run"] is True and run["changes_made"] is False
    plan = json.loads(next(incident.reports.rglob("plan.json")).read_text())
    assert plan["digest"] == run["plan_digest"] and len(plan["digest"]) == 64
    actions = " ".join(a["text"] for step in plan["steps"] for a in step["actions"])
    assert f'ALTER DATABASE "{incident.database}" WITH ALLOW_CONNECTIONS false' in actions
    assert f'ALTER DATABASE "{incident.database}" RENAME TO "{incident.database}__pre_rollback_' in actions
    assert "pg_restore" in actions and "pg_terminate_backend" in actions
    executed = next(incident.reports.rglob("02_execute.ipynb")).read_text()
    assert "RENAME TO" in executed  # the plan is shown in the executed notebook
    assert [s["name"] for s in plan["steps"] if s["phase"] == "01_prepare"] == [
        "notify-initiated", "migration", "release", "verify-backup", "migration-state", "strategy", "capture",
        "service-snapshot", "dependencies", "checklists", "plan"]
    for step in plan["steps"][11:]:  # ... and in the terminal, every statement after phase 01 verbatim
        assert step["phase"] != "01_prepare"
        for action in step["actions"]:
            if action["kind"] in ("sql", "command"):
                assert action["text"] in result.output, action["text"]
    assert "see the plan above" not in result.output


def test_the_run_asks_after_the_read_only_phase_and_a_wrong_answer_changes_nothing(incident):
    from rollbacklib.pipeline import run_phases

    asked = []
    before = server_snapshot(incident)
    result = run_phases(migration_id=MIGRATION, environment="drill", config_path=str(incident.config),
                        reports_dir=str(incident.reports), backup=str(incident.backup),
                        confirm=lambda plan: asked.append(plan.digest) or "yes")
    assert asked == [json.loads((result.run_dir / "plan.json").read_text())["digest"]]
    assert result.exit_code == 4 and result.summary["error"]["step"] == "gate"
    assert (result.run_dir / "01_prepare.ipynb").exists() and not (result.run_dir / "02_execute.ipynb").exists()
    assert server_snapshot(incident) == before


@pytest.mark.parametrize("run_id", ["../../etc", "a/b", ".hidden"])
def test_a_run_id_that_is_not_a_folder_name_is_bad_usage(run_id, tmp_path, monkeypatch):
    monkeypatch.setenv(DRILL_URL_ENV, "postgresql://nobody@/nowhere")
    result = runner.invoke(app, ["run", "--env", "drill", "-m", MIGRATION, "--config", str(CONFIG),
                                 "--reports-dir", str(tmp_path), "--run-id", run_id])
    assert result.exit_code == 2, result.output
    assert "is not usable as a folder name" in result.output


def test_a_release_that_would_apply_the_migration_again_aborts_before_anything(incident, tmp_path):
    config = tmp_path / "runbook.toml"
    text = incident.config.read_text().replace(
        'start_command = "node dist/main.js"', 'start_command = "npx prisma migrate deploy && node dist/main.js"')
    config.write_text(text.replace('"scenarios/', f'"{incident.config.resolve().parent}/scenarios/'))
    incident.config = config
    before = server_snapshot(incident)

    result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--yes"))

    assert result.exit_code == 3, result.output
    assert "would apply the migration again" in result.output
    assert "take `migrate deploy` out of its start command" in result.output
    assert server_snapshot(incident) == before


def test_a_relative_backup_is_found_from_the_working_directory_not_the_run_folder(incident, monkeypatch):
    monkeypatch.chdir(incident.backup.parent.parent)
    relative = incident.backup.relative_to(incident.backup.parent.parent)
    result = runner.invoke(app, incident.run_args("--backup", str(relative), "--dry-run"))
    assert result.exit_code == 0, result.output
    assert _run_json(incident)["backup"]["path"] == str(incident.backup)


def test_the_default_config_finds_backups_under_the_working_directory_also_in_the_notebooks(
        incident, tmp_path, monkeypatch):
    """The shipped runbook.toml keeps backups in ./backups/<env>: the caller's folder, not the run folder."""
    from rollbacklib.pipeline import run_phases

    work = tmp_path / "oncall"
    (work / "backups" / "drill").mkdir(parents=True)
    for path in (incident.backup, incident.backup.with_name(incident.backup.name + ".manifest.json")):
        shutil.copy2(path, work / "backups" / "drill")
    monkeypatch.chdir(work)
    monkeypatch.delenv("ROLLBACK_CONFIG", raising=False)
    result = run_phases(migration_id=MIGRATION, environment="drill", reports_dir=str(incident.reports),
                        phases=("01_prepare",))
    assert result.summary["phases"][0]["status"] == "succeeded", result.summary["error"]
    assert result.summary["backup"]["path"] == str(work / "backups" / "drill" / incident.backup.name)
