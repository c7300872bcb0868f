"""The step model: what the dry run shows is what runs; the gate is a precondition; outcomes follow the system's state."""

from __future__ import annotations

import json
import re
import shutil

import nbformat
import psycopg
import pytest
from nbclient import NotebookClient
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook
from typer.testing import CliRunner

from rollbacklib.cli import app
from rollbacklib.journal import read_events
from rollbacklib.pipeline import run_phases
from rollbacklib.resources import notebooks_dir
from rollbacklib.steps import Phase, StepName, read_plan

from conftest import MIGRATION, between_the_renames, server_snapshot

runner = CliRunner()


def _statements(events: list[dict], statuses: tuple[str, ...], run_id: str) -> list[str]:
    """SQL and command lines from the journal, with the run ID (part of the copy's name) made neutral."""
    return [re.sub(re.escape(run_id), "<run>", e["message"]) for e in events
            if e["status"] in statuses and e["evidence"].get("kind") in ("sql", "command")]


def test_the_dry_run_shows_every_statement_the_real_run_executes(incident):
    dry = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--dry-run", "--run-id", "planonly"))
    assert dry.exit_code == 0, dry.output
    real = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--yes", "--run-id", "executed"))
    assert real.exit_code == 0, real.output

    dry_dir, real_dir = (next(incident.reports.rglob(name)) for name in ("planonly", "executed"))
    planned = _statements(read_events(dry_dir), ("planned",), "planonly")
    executed = _statements(read_events(real_dir), ("ran", "changed"), "executed")
    phase01 = {a.text.replace("executed", "<run>") for s in read_plan(real_dir).for_phase(Phase.PREPARE) for a in s.actions}
    assert executed, "the real run journaled no statement"
    missing = [s for s in executed if s not in planned and s not in phase01]
    assert not missing, f"executed but never shown by the dry run: {missing}"
    for statement in set(planned):  # and the terminal showed each one verbatim
        assert statement.replace("<run>", "planonly") in dry.output
    run = json.loads((real_dir / "run.json").read_text())
    assert run["rpo_seconds"] is not None and run["rto_seconds"] is not None
    assert run["approval"]["plan_digest"] == read_plan(real_dir).digest == run["plan_digest"]


def _execute_all_cells(notebook: str, parameters: dict, cwd) -> nbformat.NotebookNode:
    """Run every cell of a phase notebook in a real kernel, going on after errors, as a person clicking on would."""
    nb = parameterize_notebook(load_notebook_node(str(notebooks_dir() / notebook)), parameters)
    NotebookClient(nb, kernel_name="python3", allow_errors=True, timeout=300, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def test_a_refused_gate_stops_every_later_cell_of_02_execute(incident, tmp_path):
    common = dict(migration_id=MIGRATION, environment="drill", config_path=str(incident.config),
                  reports_dir=str(incident.reports), run_id="refused")
    first = run_phases(**common, backup=str(incident.backup), phases=(Phase.PREPARE,))
    assert first.summary["error"] is None
    before = server_snapshot(incident)

    nb = _execute_all_cells("02_execute.ipynb", {**common, "dry_run": False, "approve": ""}, tmp_path)

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert any(o.ename == "RefusedError" for o in errors)
    assert server_snapshot(incident) == before  # catalog, settings, schema, rows: as they were
    events = read_events(first.run_dir)
    execute_events = [e for e in events if e["phase"] == Phase.EXECUTE]
    assert not any(e["step"] == "phase" and e["status"] == "ok" for e in execute_events)
    assert not any(e["status"] == "changed" for e in events)
    plan = read_plan(first.run_dir)
    destructive = [s.name for s in plan.for_phase(Phase.EXECUTE) if s.destructive]
    assert set(destructive) >= {StepName.BLOCK, StepName.TERMINATE, StepName.SWAP_KEEP}
    for name in destructive:
        outcomes = [e["status"] for e in execute_events if e["step"] == name and e["status"] not in ("started",)]
        assert outcomes == ["refused"], (name, outcomes)
    gate = [e for e in execute_events if e["step"] == StepName.GATE and e["status"] == "refused"]
    assert gate and "no one to ask" in gate[0]["message"]


def test_a_plan_changed_after_its_approval_is_refused(incident):
    common = dict(migration_id=MIGRATION, environment="drill", config_path=str(incident.config),
                  reports_dir=str(incident.reports), run_id="tampered", backup=str(incident.backup))
    first = run_phases(**common, phases=(Phase.PREPARE,))
    plan_file = first.run_dir / "plan.json"
    plan = json.loads(plan_file.read_text())
    before = server_snapshot(incident)
    block = next(s for s in plan["steps"] if s["name"] == StepName.BLOCK)
    block["actions"][0]["text"] = f'ALTER DATABASE "{incident.database}" WITH ALLOW_CONNECTIONS false -- edited'
    plan_file.write_text(json.dumps(plan))

    result = run_phases(**common, approve=MIGRATION, phases=(Phase.EXECUTE,))

    assert result.exit_code == 4, result.summary
    assert "was changed after it was written" in result.summary["error"]["message"]
    assert server_snapshot(incident) == before


def _config_with(incident, tmp_path, old: str, new: str):
    text = incident.config.read_text().replace('"scenarios/', f'"{incident.config.resolve().parent}/scenarios/')
    assert old in text
    path = tmp_path / "runbook.toml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize("fault", ["capture", "plan", "create-copy", "validate-copy"])
def test_a_failure_in_a_step_before_any_change_aborts_with_exit_3(incident, tmp_path, fault):
    run_dir = incident.reports.resolve() / MIGRATION / "drill" / "fault"
    args = incident.run_args("--backup", str(incident.backup), "--yes", "--run-id", "fault")
    if fault == "capture":  # pg_dump --schema-only really fails: its output file can not be written
        (run_dir / "capture" / "schema_before_rollback.sql").mkdir(parents=True)
    elif fault == "plan":  # plan.json can not be written
        (run_dir / "plan.json").mkdir(parents=True)
    elif fault == "create-copy":  # a database of that name exists that this run did not make
        with psycopg.connect(incident.admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{incident.database}__restored_fault"')
    elif fault == "validate-copy":  # the restored copy does not have what the migration's checks expect
        config = _config_with(incident, tmp_path, 'column = "passwordHash", exists = true',
                              'column = "passwordHashh", exists = true')
        args[args.index("--config") + 1] = str(config)
    before = server_snapshot(incident)

    result = runner.invoke(app, args)

    assert result.exit_code == 3, result.output
    assert server_snapshot(incident) == before
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "aborted" and run["changes_made"] is False
    assert run["error"]["step"] == {"capture": StepName.CAPTURE, "plan": StepName.PLAN,
                                    "create-copy": StepName.CREATE_COPY,
                                    "validate-copy": StepName.VALIDATE_COPY}[fault]
    if fault == "capture":
        assert "pg_dump exited with" in run["error"]["message"]
    shutil.rmtree(run_dir, ignore_errors=True)


def test_a_failure_after_a_change_fails_with_exit_5(incident):
    common = dict(migration_id=MIGRATION, environment="drill", config_path=str(incident.config),
                  reports_dir=str(incident.reports), run_id="after-change", approve=MIGRATION,
                  backup=str(incident.backup))
    between_the_renames(incident, "after-change")
    # the restored copy is renamed away under the runbook: the promote does not recognise it under its name
    copy = f"{incident.database}__restored_after-change"
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{copy}" RENAME TO "{copy}_gone"')
    try:
        result = run_phases(**common)
    finally:
        with psycopg.connect(incident.admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{copy}_gone" RENAME TO "{copy}"')
    assert result.exit_code == 5, result.summary
    assert result.summary["status"] == "failed" and result.summary["error"]["step"] == StepName.SWAP_PROMOTE
    assert result.summary["error"]["message"].startswith("PRODUCTION IS DOWN")
    event = next(e for e in read_events(result.run_dir) if e["step"] == StepName.SWAP_PROMOTE
                 and e["status"] in ("failed", "refused"))
    assert event["message"].startswith("PRODUCTION IS DOWN") and event["evidence"]["escalate"] == "L3"
