"""The live system is the truth: each case of issue 10's "What went wrong", on a real server.

Every case ends by asserting on the catalog and the rows, never on a flag: the live name
exists and serves the restored data, the kept database holds every row the original had,
the way back run literally (psql -v ON_ERROR_STOP=1) brings the original back.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import subprocess

import psycopg
import pytest
from typer.testing import CliRunner

from rollbacklib.cli import app
from rollbacklib.errors import RefusedError
from rollbacklib.journal import read_events
from rollbacklib.phases import execute, restored_copy, swap, window
from rollbacklib.pipeline import run_phases
from rollbacklib.postgres.client import client_tools
from rollbacklib.run import open_run
from rollbacklib.steps import PLAN_NAME, Phase, StepName, canonical
from rollbacklib.way_back import previous_settings, run_view

from conftest import MIGRATION
from test_faults import _databases, _kill_when

runner = CliRunner()


def _common(incident, run_id: str, **extra) -> dict:
    return dict(migration_id=MIGRATION, environment="drill", config_path=str(incident.config),
                reports_dir=str(incident.reports), run_id=run_id, backup=str(incident.backup), **extra)


def _ctx(incident, run_id: str, phase: str, approve: str = ""):
    return open_run(migration_id=MIGRATION, environment="drill", config_path=str(incident.config), run_id=run_id,
                    reports_dir=str(incident.reports), phase=phase, approve=approve)


def _run_dir(incident, run_id: str):
    return incident.reports.resolve() / MIGRATION / "drill" / run_id


def _serves_restored_data(incident) -> None:
    """The live name answers through the application's URL, on the restored (pre-migration) data."""
    with psycopg.connect(incident.url) as conn:
        applied = conn.execute("SELECT count(*) FROM _prisma_migrations WHERE migration_name = %s",
                               (MIGRATION,)).fetchone()[0]
        columns = {r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns "
                                              "WHERE table_name = 'users'").fetchall()}
    assert applied == 0 and {"passwordHash", "emailVerified"} <= columns


def _row_hashes(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                             "AND tablename <> '_prisma_migrations' ORDER BY 1").fetchall()]
        return {t: conn.execute(f'SELECT md5(coalesce(string_agg(t::text, \'|\' ORDER BY t::text), \'\')) '
                                f'FROM "{t}" t').fetchone()[0] for t in tables}


def _with_database(url: str, name: str) -> str:
    from rollbacklib.postgres.client import with_database

    return with_database(url, name)


def _run_way_back_literally(incident, run_dir) -> list[str]:
    """The way back as the catalog gives it now, run by psql with ON_ERROR_STOP on the maintenance database."""
    now = run_view(run_dir, str(incident.config))
    statements = now.way_back(previous_settings(run_dir))
    assert statements, now.describe()
    script = " ".join(s if s.endswith(";") else s + ";" for s in statements)
    done = subprocess.run([client_tools("embedded").path("psql"), "-X", "-v", "ON_ERROR_STOP=1",
                           "-d", incident.admin_url, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return statements


# --- 1 and 3 (refusals say what they changed): a typo at the notebook's gate ----------------------

def test_a_typo_at_the_gate_keeps_the_copy_and_the_right_answer_then_rolls_back(incident, monkeypatch):
    run_phases(**_common(incident, "typo"), phases=(Phase.PREPARE,))
    ctx = _ctx(incident, "typo", Phase.EXECUTE)
    for step in (restored_copy.create_copy, restored_copy.restore_copy, restored_copy.validate_copy,
                 restored_copy.check_bookkeeping, restored_copy.carry_properties, restored_copy.close_copy):
        step(ctx)
    answers = iter(["20251202020032_update_user_schema_finall", MIGRATION])
    monkeypatch.setattr(builtins, "input", lambda _prompt="": next(answers))

    with pytest.raises(RefusedError) as refused:
        execute.approve_swap(ctx)
    assert "This answer changed nothing" in refused.value.message and "stays closed and ready" in refused.value.message
    copy = f"{incident.database}__restored_typo"
    assert _databases(incident)[copy] == (False, 0)  # the validated copy is still there, closed
    with pytest.raises(RefusedError):  # nothing destructive runs without the approval
        window.block_connections(ctx)
    assert _databases(incident)[incident.database] == (True, -1)

    execute.approve_swap(ctx)  # the gate cell run again, the right answer typed
    for step in (execute.stop_services, window.block_connections, window.drain_connections,
                 window.terminate_sessions, swap.swap_keep_live):
        step(ctx)
    result = run_phases(**_common(incident, "typo"))
    assert result.exit_code == 0, result.summary["error"]
    _serves_restored_data(incident)


def test_a_refused_gate_that_dropped_the_copy_says_so_and_nothing_runs_over_the_missing_copy(incident):
    run_phases(**_common(incident, "dropped"), phases=(Phase.PREPARE,))
    ctx = _ctx(incident, "dropped", Phase.EXECUTE, approve="not-the-id")
    for step in (restored_copy.create_copy, restored_copy.restore_copy, restored_copy.validate_copy,
                 restored_copy.check_bookkeeping, restored_copy.carry_properties, restored_copy.close_copy):
        step(ctx)
    with pytest.raises(RefusedError) as refused:
        execute.approve_swap(ctx)
    assert "was dropped" in refused.value.message and "live database was not touched" in refused.value.message
    assert "nothing was changed" not in refused.value.message.lower()
    assert f"{incident.database}__restored_dropped" not in _databases(incident)
    undone = next(e for e in read_events(ctx.run_dir) if e["status"] == "info" and e["message"].startswith("undone"))
    assert StepName.CLOSE_COPY in undone["evidence"]["undone"]

    # the right answer now: the gate refuses (no copy to approve), and so does every destructive step after it
    ctx = _ctx(incident, "dropped", Phase.EXECUTE, approve=MIGRATION)
    with pytest.raises(RefusedError) as again:
        execute.approve_swap(ctx)
    assert "run 02_execute from the top" in again.value.next_action
    from rollbacklib.run import record_approval
    record_approval(ctx.run_dir, MIGRATION, "forced by the test", ctx.plan().digest)
    for step in (window.block_connections, window.terminate_sessions, swap.swap_keep_live):
        with pytest.raises(RefusedError):
            step(ctx)
    assert _databases(incident)[incident.database] == (True, -1)  # production untouched, serving


# --- 2: 02 run again from the top after a refused gate restores a new copy ------------------------

def test_execute_run_again_after_a_refusal_restores_a_new_copy_and_rolls_back(incident):
    first = run_phases(**_common(incident, "again"), phases=(Phase.PREPARE, Phase.EXECUTE))
    assert first.exit_code == 4
    assert f"{incident.database}__restored_again" not in _databases(incident)

    result = run_phases(**_common(incident, "again", approve=MIGRATION))

    assert result.exit_code == 0, result.summary["error"]
    restore = [e for e in read_events(result.run_dir) if e["step"] == StepName.RESTORE and e["status"] == "ok"]
    assert len(restore) == 2  # restored again, not skipped as "already done"
    _serves_restored_data(incident)
    assert not any("__restored_" in name for name in _databases(incident))


# --- 3: the way back followed literally, then resume ----------------------------------------------

@pytest.mark.parametrize("step", [StepName.SWAP_KEEP, StepName.SWAP_PROMOTE])
def test_the_way_back_then_resume_never_renames_a_serving_database(incident, step):
    _kill_when(incident, "back", step, "changed")
    run_dir = _run_dir(incident, "back")
    _run_way_back_literally(incident, run_dir)
    assert _databases(incident)[incident.database] == (True, -1)
    with psycopg.connect(incident.url, autocommit=True) as app_conn:  # the app writes to the original again
        app_conn.execute("INSERT INTO workflows (id, name, \"userId\", \"createdAt\", \"updatedAt\") "
                         "SELECT 'wf_after_way_back_' || g, 'after', (SELECT id FROM users LIMIT 1), now(), now() "
                         "FROM generate_series(1, 7) g")
    before_resume = _row_hashes(incident.url)

    result = runner.invoke(app, ["resume", str(run_dir), "--config", str(incident.config)])

    assert result.exit_code == 0, result.output
    _serves_restored_data(incident)
    kept = f"{incident.database}__pre_rollback_back"
    assert _databases(incident)[kept] == (False, 0)
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:  # open the kept one to read it
        admin.execute(f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS true')
    try:
        assert _row_hashes(_with_database(incident.url, kept)) == before_resume  # nothing of the original lost
    finally:
        with psycopg.connect(incident.admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS false')
    run = json.loads((run_dir / "run.json").read_text())
    assert run["rows_lost"]["tables"]["workflows"]["inserted"] >= 7
    situation = next(e for e in read_events(run_dir) if e["step"] == "live")
    assert situation["evidence"]["situation"]["situation"] in ("serving-original-again",)


# --- 4: a kill between the promote's rename and its record ----------------------------------------

def test_a_kill_inside_the_promote_is_resumed_and_its_way_back_works(incident):
    _kill_when(incident, "promote", StepName.SWAP_PROMOTE, "changed")
    run_dir = _run_dir(incident, "promote")
    now = run_view(run_dir, str(incident.config))
    assert now.situation.name == "PROMOTED_CLOSED" and now.production_down
    statements = now.way_back(previous_settings(run_dir))
    assert all(f'"{incident.database}__failed' not in s for s in statements)

    result = runner.invoke(app, ["resume", str(run_dir), "--config", str(incident.config)])

    assert result.exit_code == 0, result.output
    _serves_restored_data(incident)


def test_the_way_back_from_between_the_promote_and_the_reopen_brings_the_original_back(incident):
    _kill_when(incident, "promote-back", StepName.SWAP_PROMOTE, "changed")
    run_dir = _run_dir(incident, "promote-back")
    statements = _run_way_back_literally(incident, run_dir)
    assert statements[0].endswith(f'RENAME TO "{incident.database}__restored_promote-back"')
    with psycopg.connect(incident.url) as conn:  # the original, with the bad migration applied, serves again
        assert conn.execute("SELECT count(*) FROM _prisma_migrations WHERE migration_name = %s",
                            (MIGRATION,)).fetchone()[0] == 1
    assert _databases(incident)[f"{incident.database}__restored_promote-back"] == (False, 0)  # kept closed


# --- 5: a kill inside close-copy, a kernel dead mid-restore: one resume each ---------------------

@pytest.mark.parametrize("step, status", [(StepName.CLOSE_COPY, "ran"), (StepName.RESTORE, "ran")])
def test_a_kill_while_the_copy_is_made_needs_one_resume(incident, step, status):
    _kill_when(incident, "making", step, status)
    run_dir = _run_dir(incident, "making")

    result = runner.invoke(app, ["resume", str(run_dir), "--config", str(incident.config)])

    assert result.exit_code == 0, result.output
    _serves_restored_data(incident)
    assert not any("__restored_" in name for name in _databases(incident))


# --- 6: the eviction spares the runbook's own session only ----------------------------------------

def test_a_session_claiming_the_runbooks_name_is_evicted(incident):
    from rollbacklib.postgres import database as db

    name = f"{incident.database}__spoof"
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        spoof = psycopg.connect(_with_database(incident.url, name), application_name=db.PRIVATE_APPLICATION_NAME,
                                autocommit=True)
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        statements = [s.as_string(None) for s in db.private_connection_statements(name)]
        with db.private_connection(admin, incident.url, name, statements) as conn:
            others = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                                  "pg_backend_pid() AND backend_type = 'client backend'", (name,)).fetchone()[0]
        assert others == 0
        assert spoof.closed or spoof.broken or _dead(spoof)


def _dead(conn) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


# --- 7: a plan swapped after its approval, digests recomputed ------------------------------------

def test_a_plan_swapped_after_the_approval_with_its_digests_recomputed_is_refused(incident):
    run_phases(**_common(incident, "swapped"), phases=(Phase.PREPARE,))
    ctx = _ctx(incident, "swapped", Phase.EXECUTE, approve=MIGRATION)
    for step in (restored_copy.create_copy, restored_copy.restore_copy, restored_copy.validate_copy,
                 restored_copy.check_bookkeeping, restored_copy.carry_properties, restored_copy.close_copy,
                 execute.approve_swap):
        step(ctx)
    run_dir = ctx.run_dir
    plan = json.loads((run_dir / PLAN_NAME).read_text())
    for step in plan["steps"]:
        if step["name"] == StepName.SWAP_KEEP:
            step["actions"][0]["text"] = f'DROP DATABASE "{incident.database}" WITH (FORCE)'
    from rollbacklib.steps import Step

    digest = hashlib.sha256(canonical([Step.from_dict(s) for s in plan["steps"]])).hexdigest()
    plan["digest"] = digest
    (run_dir / PLAN_NAME).write_text(json.dumps(plan))
    state = json.loads((run_dir / "state.json").read_text())
    state["plan_digest"] = digest
    state["approval"]["plan_digest"] = digest
    (run_dir / "state.json").write_text(json.dumps(state))

    result = run_phases(**_common(incident, "swapped", approve=MIGRATION))

    assert result.exit_code == 4, result.summary["error"]
    refused = [e for e in read_events(run_dir) if e["status"] == "refused"]
    assert refused and "changed after its approval" in refused[0]["message"]
    assert _databases(incident)[incident.database] == (True, -1)  # never blocked, never dropped


# --- 8: free space counts the WAL -----------------------------------------------------------------

def test_the_free_space_check_counts_the_wal_the_copy_writes(incident):
    run_phases(**_common(incident, "wal", approve=MIGRATION), phases=(Phase.PREPARE,))
    ctx = _ctx(incident, "wal", Phase.EXECUTE)
    restored_copy.create_copy(ctx)
    event = next(e for e in read_events(ctx.run_dir) if e["step"] == StepName.CREATE_COPY and "wal_bytes" in
                 e["evidence"])
    evidence = event["evidence"]
    with psycopg.connect(incident.admin_url) as admin:
        template0, segment = admin.execute("SELECT pg_database_size('template0'), "
                                           "pg_size_bytes(current_setting('wal_segment_size'))").fetchone()
    assert evidence["wal_bytes"] >= template0 + 4 * segment
    assert evidence["needed_bytes"] == evidence["copy_bytes"] + evidence["wal_bytes"]


# --- 5 (health in every failure): the server stops between two phases ------------------------------

def test_a_server_that_stops_is_said_first_and_a_resume_once_it_is_back_finishes(tmp_path, monkeypatch):
    from rollbacklib.config import load_config
    from rollbacklib.drill import stage_incident
    from rollbacklib.drill.embedded import start_server, stop_server
    from rollbacklib.drill.scenario import load_scenario
    from rollbacklib.postgres.client import database_name
    from rollbacklib.resources import scenarios_dir

    from conftest import CONFIG, DRILL_URL_ENV, Incident

    pgdata = tmp_path / "pgdata"
    server = start_server(pgdata)
    try:
        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute('CREATE DATABASE "prod"')
        url = server.url("prod")
        monkeypatch.setenv(DRILL_URL_ENV, url)
        backup = stage_incident(url, load_scenario(scenarios_dir() / "auth-platform"), MIGRATION, users=100,
                                backup_dir=tmp_path / "backups", tools=client_tools("embedded"),
                                probes=load_config(CONFIG).all_queries(), say=lambda _line: None)
        incident = Incident(url, database_name(url), backup, tmp_path / "reports")
        run_phases(**_common(incident, "server", approve=MIGRATION), phases=(Phase.PREPARE, Phase.EXECUTE))
        stop_server(pgdata)

        down = run_phases(**_common(incident, "server", approve=MIGRATION), phases=(Phase.VALIDATE,))

        assert down.exit_code == 5, down.summary
        assert down.summary["error"]["message"].startswith("THE SERVER IS DOWN"), down.summary["error"]
        assert down.summary["production"]["state"] == "down" and down.summary["live"]["situation"] == "server-down"
        _pg_ctl_start(pgdata)
        result = run_phases(**_common(incident, "server", approve=MIGRATION))
        assert result.exit_code == 0, result.summary["error"]
        _serves_restored_data(incident)
    finally:
        stop_server(pgdata)  # the server _pg_ctl_start started again: server.stop() knows only its own process
        server.stop()


def _pg_ctl_start(pgdata) -> None:
    """Start a stopped embedded server again with the options it last ran with (as the data folder's owner)."""
    import os
    import shlex

    options = shlex.split((pgdata / "postmaster.opts").read_text())[3:]  # after: postgres "-D" "<pgdata>"
    owner = pgdata.stat().st_uid
    as_owner = {"user": owner} if os.geteuid() == 0 and owner != 0 else {}
    with open(pgdata.parent / "restart.log", "w") as log:
        subprocess.run([client_tools("embedded").path("pg_ctl"), "-D", str(pgdata), "-w", "-o", shlex.join(options),
                        "start"], stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=pgdata, check=True,
                       **as_owner)


def test_the_copy_is_never_dropped_while_the_live_name_does_not_hold_the_original(incident):
    from conftest import between_the_renames

    between_the_renames(incident, "keep-copy")
    ctx = _ctx(incident, "keep-copy", Phase.EXECUTE, approve=MIGRATION)
    assert restored_copy.drop_copy(ctx, StepName.ANALYZE_COPY, "a failure of a step before the gate") is None
    copy = f"{incident.database}__restored_keep-copy"
    assert _databases(incident)[copy] == (False, 0)  # still there, closed: production's way forward
    kept = next(e for e in read_events(ctx.run_dir) if e["evidence"].get("keep") and e["evidence"].get("database") == copy)
    assert "the live name does not hold the original" in kept["message"]

    result = runner.invoke(app, ["resume", str(_run_dir(incident, "keep-copy")), "--config", str(incident.config)])

    assert result.exit_code == 0, result.output
    _serves_restored_data(incident)


# --- a copy closed before its validation is made again, never restored into ---------------------

def test_a_copy_closed_before_its_validation_is_made_again_by_the_resume(incident):
    """A failure's clean-up closes a copy left behind (dispatch.close_left_copy); a resume then finds it there but
    closed and never validated: create-copy is done again (its leftover dropped by oid), not skipped into a restore
    that cannot connect (found by the model-based test)."""
    from rollbacklib.postgres import database as db

    _kill_when(incident, "closed", StepName.RESTORE, "ran")
    copy = next(name for name in _databases(incident) if "__restored_" in name)
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        for statement in db.block_statements(copy):
            admin.execute(statement)
    assert _databases(incident)[copy] == (False, 0)

    result = runner.invoke(app, ["resume", str(_run_dir(incident, "closed")), "--config", str(incident.config)])

    assert result.exit_code == 0, result.output
    _serves_restored_data(incident)
    assert not any("__restored_" in name for name in _databases(incident))
    dropped = [e for e in read_events(_run_dir(incident, "closed")) if e["step"] == StepName.CREATE_COPY
               and e["status"] == "ran" and e["message"].startswith("DROP DATABASE")]
    assert dropped and "unfinished copy" in dropped[0]["evidence"]["why"]
