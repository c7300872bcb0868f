"""The notebooks: each runs alone under plain papermill; no secret reaches any output; the gate asks."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import psycopg
import pytest
from types import SimpleNamespace
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typer.testing import CliRunner

from rollbacklib.phases import execute
from rollbacklib.cli import app
from rollbacklib.errors import RefusedError

from conftest import DRILL_URL_ENV, MIGRATION
from rollbacklib.resources import notebooks_dir

PASSWORD = "Sup3r-S3cret-Pa55word"


def test_prepare_runs_alone_under_plain_papermill(incident, tmp_path):
    out = tmp_path / "out.ipynb"
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", str(notebooks_dir() / "01_prepare.ipynb"), str(out),
         "-p", "migration_id", MIGRATION, "-p", "environment", "drill", "-p", "config_path", str(incident.config),
         "-p", "reports_dir", str(incident.reports), "-p", "run_id", "by-hand", "-p", "backup", str(incident.backup)],
        capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = nbformat.read(out, as_version=4)
    assert nb.metadata.papermill.parameters["migration_id"] == MIGRATION
    shown = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "sha256 equals manifest" in shown and "pass" in shown
    run_dir = incident.reports / MIGRATION / "drill" / "by-hand"
    assert (run_dir / "capture" / "schema_before_rollback.sql").exists()
    events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    assert events[-1]["step"] == "phase" and events[-1]["status"] == "ok"


def test_no_secret_reaches_a_notebook_a_report_or_a_log(incident, monkeypatch):
    role = f"runbook_{incident.database}"  # objects restored by it stay owned by it: one role per test
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    params = conninfo_to_dict(incident.url)
    url = make_conninfo(**{**params, "user": role, "password": PASSWORD})
    monkeypatch.setenv(DRILL_URL_ENV, url)
    result = runner_invoke(incident)
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    files = [p for p in incident.reports.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ipynb" for p in files) and any(p.name == "journal.jsonl" for p in files)
    for path in files:
        assert PASSWORD.encode() not in path.read_bytes(), f"the password leaked into {path}"


def runner_invoke(incident):
    return CliRunner().invoke(app, incident.run_args("--backup", str(incident.backup), "--yes"))


class _Ctx:
    migration_id = MIGRATION
    approve = ""
    database = "automation_platform"
    run_id = "r1"
    env = SimpleNamespace(protected=False, name="drill")

    def plan(self):
        return None  # the gate's question does not depend on the plan's steps for swap


@pytest.mark.parametrize("typed, allowed", [(MIGRATION, True), ("yes", False), ("", False)])
def test_the_gate_asks_for_the_migration_id_in_jupyter(monkeypatch, typed, allowed):
    monkeypatch.setattr("builtins.input", lambda prompt: typed)
    if allowed:
        assert execute._ask(_Ctx(), "0" * 64) == "typed at the notebook's prompt"
    else:
        with pytest.raises(RefusedError, match="not the migration ID"):
            execute._ask(_Ctx(), "0" * 64)


def test_notebooks_are_committed_without_outputs_and_with_parameters():
    for path in sorted((notebooks_dir()).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert not any(c.outputs or c.execution_count for c in code), path
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, path
        for name in ("migration_id", "environment", "config_path", "run_id", "dry_run", "approve"):
            assert f"{name} =" in params[0].source, (path, name)
