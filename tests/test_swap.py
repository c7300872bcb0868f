"""The swap puts a new database in place of the live one: what belongs to the database itself goes with it."""

from __future__ import annotations

import json

import papermill as pm
import psycopg
from typer.testing import CliRunner

from rollbacklib.postgres import properties as dbp
from rollbacklib.cli import app
from rollbacklib.journal import read_events
from rollbacklib.resources import notebooks_dir
from rollbacklib.steps import StepName


def test_settings_grants_and_comment_survive_the_swap(incident):
    name = incident.database
    role = f"app_{name}"
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        for statement in (
            f'ALTER DATABASE "{name}" SET work_mem TO \'8MB\'',
            f'ALTER DATABASE "{name}" SET search_path TO "$user", public, "Odd, Schema"',
            f'ALTER DATABASE "{name}" SET app.tenant TO \'acme\'',
            f'ALTER ROLE "{role}" IN DATABASE "{name}" SET statement_timeout TO \'5s\'',
            f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC',
            f'GRANT CONNECT, TEMPORARY ON DATABASE "{name}" TO "{role}"',
            f"COMMENT ON DATABASE \"{name}\" IS 'automation platform, production'",
        ):
            admin.execute(statement)
        before = dbp.comparable(dbp.read_properties(admin, name))

    result = CliRunner().invoke(app, incident.run_args("--backup", str(incident.backup), "--yes"))

    assert result.exit_code == 0, result.output
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        after = dbp.comparable(dbp.read_properties(admin, name))
    assert after == before
    settings = {s["role"]: sorted(s["config"]) for s in after["settings"]}
    assert settings == {None: ['app.tenant=acme', 'search_path="$user", public, "Odd, Schema"', "work_mem=8MB"],
                        role: ["statement_timeout=5s"]}
    grantees = {(g["grantee"], g["privilege"]) for g in after["grants"]}
    assert {(role, "CONNECT"), (role, "TEMPORARY")} <= grantees and not any(g == "PUBLIC" for g, _ in grantees)
    assert after["comment"] == "automation platform, production"
    run = json.loads(next(incident.reports.rglob("run.json")).read_text())
    check = next(c for c in run["validation"]["checks"] if c["name"].startswith("database settings, grants"))
    assert check["passed"] is True
    with psycopg.connect(incident.url) as conn:  # the settings are live for new sessions
        assert conn.execute("SHOW work_mem").fetchone()[0] == "8MB"
        assert conn.execute("SHOW search_path").fetchone()[0] == '"$user", public, "Odd, Schema"'


def test_split_list_setting_unquotes_each_element():
    assert dbp._split_list('"$user", public, "Odd, Schema", "say ""hi"""') == ["$user", "public", "Odd, Schema",
                                                                            'say "hi"']


def _changes(run_dir) -> list[str]:
    return [json.loads(line)["message"] for line in (run_dir / "journal.jsonl").read_text().splitlines()
            if json.loads(line)["status"] == "changed"]


def test_running_execute_again_on_a_swapped_run_changes_nothing(incident):
    from rollbacklib.pipeline import run_phases

    common = dict(migration_id=incident.migration_id, environment="drill", config_path=str(incident.config),
                  reports_dir=str(incident.reports), run_id="twice", approve=incident.migration_id,
                  backup=str(incident.backup))
    first = run_phases(**common, phases=("01_prepare", "02_execute"))
    assert first.summary["error"] is None and first.summary["changes_made"]
    changes = _changes(first.run_dir)
    with psycopg.connect(incident.admin_url) as admin:
        databases = admin.execute("SELECT datname, datallowconn, datconnlimit FROM pg_database ORDER BY 1").fetchall()

    resumed = run_phases(**common, phases=("02_execute",))  # a resume: it reads the catalog first, and names it
    assert resumed.summary["error"] is None
    situation = next(e for e in read_events(resumed.run_dir) if e["step"] == "live")
    assert situation["evidence"]["situation"]["situation"] == "done"  # 02 holds the whole window
    assert _changes(resumed.run_dir) == changes  # every step of the phase run again is done and holds now
    # the notebook run again by hand, every cell: each step is already done and its postcondition holds
    pm.execute_notebook(str(notebooks_dir() / "02_execute.ipynb"), str(first.run_dir / "02_again.ipynb"),
                        parameters={k: v for k, v in common.items() if k != "backup"}, kernel_name="python3",
                        progress_bar=False, cwd=str(first.run_dir))
    again = first
    assert _changes(again.run_dir) == changes  # not one more change
    with psycopg.connect(incident.admin_url) as admin:
        assert admin.execute("SELECT datname, datallowconn, datconnlimit FROM pg_database ORDER BY 1").fetchall() == databases
    skipped = [json.loads(line) for line in (again.run_dir / "journal.jsonl").read_text().splitlines()]
    done_before = {e["step"] for e in skipped if e["status"] == "skipped" and "already done" in e["message"]}
    assert done_before >= {StepName.CREATE_COPY, StepName.RESTORE, StepName.VALIDATE_COPY, StepName.CARRY_PROPERTIES,
                           StepName.CLOSE_COPY, StepName.GATE, StepName.BLOCK, StepName.DRAIN, StepName.TERMINATE,
                           StepName.SWAP_KEEP}
