"""The drill end to end: a real embedded server, real notebooks under papermill, a real swap."""

from __future__ import annotations

import json

import psycopg
import pytest

from rollbacklib.drill import run_drill


@pytest.fixture(scope="module")
def drill(tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    lines: list[str] = []
    result = run_drill(users=300, reports_dir=str(reports), keep=True, say=lines.append)
    yield result, lines
    result.server.stop()


def test_drill_rolls_back_and_validates(drill):
    result, _ = drill
    summary = result.run.summary
    assert result.exit_code == 0, summary["error"]
    assert summary["status"] == "succeeded"
    assert [p["name"] for p in summary["phases"]] == [
        "01_prepare", "02_execute", "03_validate", "04_restore_service", "05_close"]
    assert all(p["status"] == "succeeded" for p in summary["phases"])
    assert summary["validation"]["passed"] is True
    assert 0 < summary["rto_seconds"] < 900
    assert result.rolled_back


def test_drill_restores_the_dropped_columns(drill):
    result, _ = drill
    with psycopg.connect(result.url) as conn:
        rows = conn.execute(
            "SELECT column_name, is_nullable FROM information_schema.columns WHERE table_name = 'users' "
            "AND column_name IN ('passwordHash', 'emailVerified', 'authorizerId') ORDER BY 1").fetchall()
        assert rows == [("authorizerId", "YES"), ("emailVerified", "YES"), ("passwordHash", "YES")]
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 300
        names = [r[0] for r in conn.execute("SELECT migration_name FROM _prisma_migrations").fetchall()]
        assert names == ["20251202014452_initial_schema_with_authorizer_id"]


def test_drill_keeps_the_pre_rollback_database_with_its_rows(drill):
    result, _ = drill
    kept = result.run.summary["kept_database"]
    assert kept and kept.endswith(result.run.summary["run_id"])
    kept_url = result.url.replace("/automation_platform?", f"/{kept}?")
    with psycopg.connect(result.url.replace("/automation_platform?", "/postgres?"), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS true')
    with psycopg.connect(kept_url) as conn:
        users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
        assert users > 300  # the rows written after the migration are still there
        names = [r[0] for r in conn.execute("SELECT migration_name FROM _prisma_migrations").fetchall()]
        assert "20251202020032_update_user_schema_final" in names


def test_drill_report_folder_holds_the_evidence(drill):
    result, _ = drill
    run_dir = result.run.run_dir
    for phase in ("01_prepare", "02_execute", "03_validate", "04_restore_service", "05_close"):
        assert (run_dir / f"{phase}.ipynb").exists()
    run = json.loads((run_dir / "run.json").read_text())
    for key in ("status", "migration_id", "environment", "strategy", "started_at", "finished_at", "phases",
                "rto_seconds", "validation"):
        assert key in run
    assert run["strategy"] == "swap"
    assert (run_dir / "capture" / "schema_before_rollback.sql").read_text().startswith("--")
    events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    assert {"started", "ok", "changed"} <= {e["status"] for e in events}
    terminated = json.loads((run_dir / "terminated_sessions.json").read_text())
    assert [s["application_name"] for s in terminated] == ["api-gateway"]


def test_drill_command_prints_a_one_screen_summary(tmp_path):
    from typer.testing import CliRunner

    from rollbacklib.cli import app

    result = CliRunner().invoke(app, ["drill", "--users", "150", "--reports-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for phase in ("01_prepare", "02_execute", "03_validate", "04_restore_service", "05_close"):
        assert phase in result.output
    assert "within the 15 min target" in result.output
    assert "Rolled back: yes" in result.output
    assert "checks passed" in result.output and str(tmp_path) in result.output
