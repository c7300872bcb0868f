"""The drill end to end: a real embedded server, real notebooks under papermill, a real swap."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import psutil
import psycopg
import pytest
from typer.testing import CliRunner

from rollbacklib.cli import app
from rollbacklib.drill import DRILL_FILE, run_drill, stage_drill, stop_drill

from rollbacklib.steps import PHASES

from conftest import DRILL_URL_ENV, MIGRATION

runner = CliRunner()


@pytest.fixture(scope="module")
def drill(tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    lines: list[str] = []
    result = run_drill(users=300, reports_dir=str(reports), keep=True, say=lines.append)
    yield result, lines
    stop_drill(result.workdir)


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
    completed = next(m for m in summary["milestones"] if m["milestone"] == "rollback completed")
    assert completed["status"] == "pass" and 0 < completed["seconds"] < summary["rto_seconds"]  # measured in 03
    assert summary["production"]["line"].startswith("Production serving the restored database since")


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
    result = runner.invoke(app, ["drill", "--users", "150", "--reports-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for phase in ("01_prepare", "02_execute", "03_validate", "04_restore_service", "05_close"):
        assert phase in result.output
    assert "within the 15 min target" in result.output
    assert "Rolled back: yes" in result.output
    assert "checks passed" in result.output and str(tmp_path) in result.output


# --- a staged incident to practise on ---------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _server_answers(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=5).close()
        return True
    except psycopg.OperationalError:
        return False


def _app_sessions(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT application_name FROM pg_stat_activity WHERE datname = "
                                           "current_database() AND pid <> pg_backend_pid()").fetchall()]


def _practice(output: str) -> dict:
    """The printed instructions: the export line, the commands of ways A, B and C, the stop command."""
    lines = output.splitlines()
    found = {"export": next(line.strip() for line in lines if line.strip().startswith("export ")),
             "stop": shlex.split(next(line for line in lines if line.startswith("4. ")).split(": ", 1)[1])}
    for way in "ABC":
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{way}. "))
        block = []
        for line in lines[at + 1:]:
            if not line.strip():
                break
            if line.startswith("  ") and not line.startswith("   "):
                block.append(line.strip())
        found[way] = block
    return found


def _password_hash_is_back(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT 1 FROM information_schema.columns WHERE table_name = 'users' "
                            "AND column_name = 'passwordHash'").fetchone() is not None


@pytest.fixture
def practice(tmp_path, monkeypatch):
    """`rollback drill --stage-only` run from an empty folder: its output, parsed; the drill stopped afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DRILL_URL_ENV, raising=False)
    staged = runner.invoke(app, ["drill", "--stage-only", "--users", "150"])
    folder = Path(_practice(staged.output)["stop"][-1]) if staged.exit_code == 0 else None
    try:
        assert staged.exit_code == 0, staged.output
        yield {**_practice(staged.output), "output": staged.output, "folder": folder}
    finally:
        if folder and folder.exists():
            stop_drill(folder)


def test_stage_only_then_the_printed_commands_roll_back_and_stop(practice, tmp_path, monkeypatch):
    printed, folder = practice, practice["folder"]
    assert "nothing of the runbook has run" in printed["output"] and not (tmp_path / "reports").exists()
    assert (folder / DRILL_FILE).exists()
    name, url = shlex.split(printed["export"])[1].split("=", 1)
    assert name == DRILL_URL_ENV and ":" not in url.split("@")[0].removeprefix("postgresql://")
    # The three ways, easiest first, every executable by its absolute path.
    (lab,) = [shlex.split(line) for line in printed["A"]]
    dry_run, run = [shlex.split(line) for line in printed["B"]]
    assert Path(lab[0]).is_absolute() and lab[1] == "lab" and Path(run[0]).is_absolute() and run[1] == "run"
    assert dry_run[-1] == "--dry-run" and run == dry_run[:-1] and run[run.index("-m") + 1] == MIGRATION
    backup = Path(run[run.index("--backup") + 1])
    assert backup.is_file() and backup.is_relative_to(folder)
    assert lab[lab.index("--backup") + 1] == str(backup)

    # The incident, as the printed URL shows it: the bad migration applied, the app connected.
    app_pid = json.loads((folder / DRILL_FILE).read_text())["app_pid"]
    assert _alive(app_pid)
    with psycopg.connect(url) as conn:
        applied = [r[0] for r in conn.execute(
            "SELECT migration_name FROM _prisma_migrations WHERE finished_at IS NOT NULL ORDER BY 1").fetchall()]
        assert applied[-1] == MIGRATION
    assert not _password_hash_is_back(url)
    assert _app_sessions(url) == ["api-gateway"]

    # The printed command, as an on-call engineer would paste it (the gate passed with --yes).
    monkeypatch.setenv(name, url)
    rolled = runner.invoke(app, [*run[1:], "--yes"])
    assert rolled.exit_code == 0, rolled.output
    assert next(tmp_path.glob(f"reports/{MIGRATION}/drill/*/run.json"))
    assert _password_hash_is_back(url)
    assert "api-gateway lost its session" in (folder / "app-session.log").read_text()

    stopped = runner.invoke(app, ["drill", "--stop", str(folder)])
    assert stopped.exit_code == 0, stopped.output
    assert not folder.exists() and not _server_answers(url) and not _alive(app_pid)


def test_the_printed_papermill_commands_pasted_into_a_clean_shell_roll_the_incident_back(practice, tmp_path):
    commands = practice["C"]
    papermill = [argv for argv in map(shlex.split, commands) if Path(argv[0]).name == "papermill"]
    assert all(Path(argv[0]).is_absolute() for argv in map(shlex.split, commands[1:]))
    assert len(papermill) == 5 and commands[0].startswith("mkdir -p ")
    run_dir = Path(shlex.split(commands[0])[-1])
    assert [Path(argv[2]) for argv in papermill] == [run_dir / f"{phase}.ipynb" for phase in PHASES]
    assert [argv[argv.index("approve") + 1] if "approve" in argv else None for argv in papermill] == \
        [None, MIGRATION, None, None, None]
    url = shlex.split(practice["export"])[1].split("=", 1)[1]

    # Pasted, in order, into a shell with nothing set: no venv activated, no PATH of ours, no variable.
    shell = subprocess.run(["env", "-i", "bash", "--norc"], input="\n".join(
        ["set -e", practice["export"], *commands]) + "\n", capture_output=True, text=True, cwd=tmp_path,
        timeout=900)
    assert shell.returncode == 0, shell.stdout[-3000:] + shell.stderr[-3000:]
    assert "command not found" not in shell.stderr and "Audit trail intact" in shell.stdout

    assert _password_hash_is_back(url)  # rolled back, by the catalog
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM _prisma_migrations WHERE migration_name = %s",
                            (MIGRATION,)).fetchone()[0] == 0
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "succeeded" and [p["status"] for p in run["phases"]] == ["succeeded"] * 5
    assert (run_dir / "report.html").exists() and (run_dir / "postmortem.md").exists()
    assert "This phase did not run" not in (run_dir / "report.html").read_text()


def test_stop_ends_a_connected_app_session_and_the_server():
    staged = stage_drill(users=50, say=lambda _line: None)
    try:
        assert _alive(staged.app_pid) and _app_sessions(staged.url) == ["api-gateway"]
        stopped = stop_drill(staged.folder)
    finally:
        if staged.folder.exists():
            stop_drill(staged.folder)
    assert stopped.app_session_was_running and stopped.server_was_running
    assert not _alive(staged.app_pid) and not _server_answers(staged.url) and not staged.folder.exists()


def test_stop_refuses_a_folder_that_is_not_a_drill(tmp_path):
    (tmp_path / "keep-me.txt").write_text("mine")
    result = runner.invoke(app, ["drill", "--stop", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "is not a drill folder" in result.output and "--stage-only" in result.output
    assert (tmp_path / "keep-me.txt").exists()
