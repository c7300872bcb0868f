"""SIGKILL of the runner and its kernel in the middle of a change to the live database, then `rollback resume`.

- in-place: while ``restore-in-place``'s pg_restore writes into the live database (its one
  transaction open), and in the instant after it committed but before the runner said so;
- surgical: during the backfill, between two batches (each its own transaction).

Each is judged on the server: what the kill left, then what the resume made of it.
"""

from __future__ import annotations

import json
import time

import psutil
import psycopg
import pytest
from typer.testing import CliRunner

from rollbacklib.cli import app
from rollbacklib.config import load_config
from rollbacklib.drill import stage_incident
from rollbacklib.drill.injection import Command, Trigger, kernels, kill_runner_and_kernel, strike_when
from rollbacklib.drill.scenario import load_scenario
from rollbacklib.journal import read_events
from rollbacklib.postgres import database as db
from rollbacklib.postgres.backup import load_manifest
from rollbacklib.postgres.client import client_tools, database_name
from rollbacklib.prisma import applied_migrations, migration_state
from rollbacklib.resources import scenarios_dir
from rollbacklib.steps import StepName

from conftest import CONFIG, CONFIG_HOME, DRILL_URL_ENV, MIGRATION, Incident, behind_the_runbook

runner = CliRunner()
SCENARIO = scenarios_dir() / "auth-platform"
DROPPED = ("passwordHash", "emailVerified")
AUDIT_BEFORE, AUDIT_AFTER = 20, 10  # audit_events rows at the backup, and written after it (its sequence moves on)


@pytest.fixture
def with_a_sequence(fresh_db, tmp_path, monkeypatch):
    """The seed's incident plus a table with a sequence, which moved on after the backup."""
    monkeypatch.setenv(DRILL_URL_ENV, fresh_db)

    def audit_table(conn):
        conn.execute("CREATE TABLE audit_events (id serial PRIMARY KEY, note text)")
        conn.execute("INSERT INTO audit_events (note) SELECT 'before the backup' FROM generate_series(1, %s)",
                     (AUDIT_BEFORE,))
        conn.commit()

    backup = stage_incident(fresh_db, load_scenario(SCENARIO), MIGRATION, users=300, backup_dir=tmp_path / "backups",
                            tools=client_tools("embedded"), probes=load_config(CONFIG).all_queries(),
                            say=lambda _line: None, after_generate=audit_table)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO audit_events (note) SELECT 'after the backup' FROM generate_series(1, %s)",
                     (AUDIT_AFTER,))
    return Incident(fresh_db, database_name(fresh_db), backup, tmp_path / "reports")


def _data(conn) -> dict:
    """What a committed restore would change: the schema, every table's rows (hashed), the sequences."""
    return {"fingerprint": db.schema_fingerprint(db.schema_catalog(conn)), "digests": db.table_digests(conn),
            "sequences": conn.execute("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1").fetchall(),
            "migration": migration_state(applied_migrations(conn), MIGRATION)}


def _restore_backend(admin, run_id: str):
    """The in-place restore's own session (pid, xid), found by the application name the runbook gives it."""
    return admin.execute("SELECT pid, backend_xid FROM pg_stat_activity WHERE application_name = %s",
                         (f"rollbacklib-in-place-{run_id}",)).fetchone()


def _wait_gone(admin, run_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _restore_backend(admin, run_id) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _restore_backend(admin, run_id) is None, "the killed restore's session never ended"


def _start_in_place(incident: Incident, run_id: str) -> tuple[Command, object]:
    command = Command(incident.run_args("--backup", str(incident.backup), "--yes", "--run-id", run_id,
                                        "--strategy", "in-place"), say=lambda _line: None).start()
    return command, incident.reports.resolve() / MIGRATION / "drill" / run_id


def _resume_and_check_it_finished(incident: Incident, run_dir, before: dict) -> dict:
    result = runner.invoke(app, ["resume", str(run_dir), "--config", str(incident.config)])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(incident.backup)
    with psycopg.connect(incident.url) as conn:  # reopened: an ordinary connection gets in
        assert migration_state(applied_migrations(conn), MIGRATION) == "absent"
        for column in DROPPED:
            assert db.column_info(conn, "users", column) is not None
        assert db.schema_fingerprint(db.schema_catalog(conn)) == manifest["schema_fingerprint"]
        counts = db.row_counts(conn)
        assert {t: counts[t] for t in manifest["row_counts"]} == manifest["row_counts"]  # rows as the manifest says
        audit = dict(conn.execute("SELECT sequencename, last_value FROM pg_sequences").fetchall())
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        assert admin.execute("SELECT datallowconn, datconnlimit FROM pg_database WHERE datname = %s",
                             (incident.database,)).fetchone() == (True, -1)
    # no id handed out twice: the sequence is at or past the value it had before the restore, not the backup's
    assert audit["audit_events_id_seq"] >= dict(before["sequences"])["audit_events_id_seq"] == AUDIT_BEFORE + AUDIT_AFTER
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "succeeded" and run["attempts"] == 2, run.get("error")
    lost = run["rows_lost"]  # counted after the window, against the safety copy: the writes after the backup
    assert (lost["total"], lost["tables"]["audit_events"]["inserted"]) == (9 + AUDIT_AFTER, AUDIT_AFTER), lost
    return run


@pytest.mark.faults
def test_in_place_killed_while_its_restore_writes_changes_nothing_and_resume_finishes(with_a_sequence):
    incident, run_id = with_a_sequence, "killed-mid-restore"
    with psycopg.connect(incident.url) as conn:
        before = _data(conn)
    command, run_dir = _start_in_place(incident, run_id)
    caught = {}

    def strike(command, hit):
        """pg_restore runs; stopped the instant its transaction has written (it holds an xid), then the kill."""
        restore = psutil.Process(hit["pid"])
        with psycopg.connect(incident.admin_url, autocommit=True) as admin:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                restore.suspend()
                backend = _restore_backend(admin, run_id)
                if backend and backend[1] is not None:
                    caught["xid"] = backend[1]
                    break
                restore.resume()
                time.sleep(0.002)
        kill_runner_and_kernel(command, hit)

    strike_when(command, run_dir / "journal.jsonl", Trigger(StepName.RESTORE_IN_PLACE, program="pg_restore"), strike,
                timeout=300)
    assert caught.get("xid"), "the kill did not land while the restore's transaction was open"
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        _wait_gone(admin, run_id)  # the server saw its client die: the transaction rolled back
    with behind_the_runbook(incident) as conn:
        assert _data(conn) == before  # exactly as before the restore: one transaction, never committed
    assert not any(e["evidence"].get("committed") for e in read_events(run_dir))

    _resume_and_check_it_finished(incident, run_dir, before)


@pytest.mark.faults
def test_in_place_killed_after_its_restore_committed_is_finished_by_resume_without_losing_the_sequences(
        with_a_sequence):
    """The runner dies in the instant after the restore committed, before it read the sequences back and journaled
    the commit: the resume must see from the database that the restore is done, and still set every sequence past
    the value it had BEFORE the restore (not the restored backup's)."""
    incident, run_id = with_a_sequence, "killed-after-commit"
    with psycopg.connect(incident.url) as conn:
        before = _data(conn)
    command, run_dir = _start_in_place(incident, run_id)

    def strike(command, hit):
        """The kernel frozen while its pg_restore goes on to its commit; then the runner and the kernel killed."""
        parents = {p.pid for p in psutil.Process(hit["pid"]).parents()}
        frozen = [k for k in kernels(command.proc.pid) if k.pid in parents]
        for kernel in frozen:
            kernel.suspend()
        with psycopg.connect(incident.admin_url, autocommit=True) as admin:
            _wait_gone(admin, run_id)
        kill_runner_and_kernel(command, hit)

    strike_when(command, run_dir / "journal.jsonl", Trigger(StepName.RESTORE_IN_PLACE, program="pg_restore"), strike,
                timeout=300)
    with behind_the_runbook(incident) as conn:
        committed = _data(conn)
    assert committed["migration"] == "absent" and committed["fingerprint"] != before["fingerprint"]
    assert dict(committed["sequences"])["audit_events_id_seq"] == AUDIT_BEFORE  # the backup's, behind
    assert not any(e["evidence"].get("committed") for e in read_events(run_dir))

    _resume_and_check_it_finished(incident, run_dir, before)
    found = [e for e in read_events(run_dir) if e["step"] == StepName.RESTORE_IN_PLACE and e["status"] == "info"
             and e["evidence"].get("committed_earlier")]
    assert found, "the resume did not say that it found the restore already committed"


# --- surgical: killed between two batches of its backfill ----------------------------------------------------------

BATCH_ROWS = 2  # many small batches (one transaction each), so the kill lands between two of them


class _BetweenBatches(Trigger):
    """The journal shows the backfill part way: some batches committed, not all."""

    def __init__(self):
        super().__init__(StepName.SURGICAL_BACKFILL, ("info",))

    def describe(self) -> str:
        return f"when the journal shows {self.step} part way through its batches"

    def hit(self, events: list[dict], _runner_pid: int) -> dict | None:
        return next((e for e in events if e["step"] == StepName.SURGICAL_BACKFILL and e["status"] == "info"
                     and 0 < (e["evidence"].get("done") or 0) < (e["evidence"].get("total") or 0)), None)


@pytest.mark.faults
def test_surgical_killed_between_backfill_batches_is_finished_by_resume_losing_nothing(fresh_db, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv(DRILL_URL_ENV, fresh_db)
    backup = stage_incident(fresh_db, load_scenario(SCENARIO), MIGRATION, users=300, backup_dir=tmp_path / "backups",
                            tools=client_tools("embedded"), probes=load_config(CONFIG).all_queries(),
                            say=lambda _line: None, failing="partly")
    config = tmp_path / "runbook.toml"
    config.write_text(CONFIG.read_text().replace('"scenarios/', f'"{CONFIG_HOME}/scenarios/')
                      + f"\n[environments.drill.surgical]\nbatch_rows = {BATCH_ROWS}\n")
    incident = Incident(fresh_db, database_name(fresh_db), backup, tmp_path / "reports", config=config)
    with psycopg.connect(fresh_db) as conn:
        users_before = {r[0]: r[1:] for r in conn.execute('SELECT id, email, "authorizerId" FROM users')}
    run_id = "killed-backfill"
    command = Command(incident.run_args("--backup", str(backup), "--yes", "--run-id", run_id, "--strategy",
                                        "surgical"), say=lambda _line: None).start()
    run_dir = incident.reports.resolve() / MIGRATION / "drill" / run_id
    strike_when(command, run_dir / "journal.jsonl", _BetweenBatches(), kill_runner_and_kernel, timeout=300)

    with psycopg.connect(fresh_db) as conn:  # surgical serves throughout: what the kill left, read as the app reads
        assert db.column_info(conn, "users", "passwordHash") is not None  # the reverse DDL had committed
        filled = conn.execute('SELECT count(*) FROM users WHERE "passwordHash" IS NOT NULL').fetchone()[0]
        backup_users = conn.execute("SELECT count(*) FROM users WHERE id NOT LIKE 'user_post_%'").fetchone()[0]
    assert 0 < filled < backup_users, "the kill did not land between two batches of the backfill"

    result = runner.invoke(app, ["resume", str(run_dir), "--config", str(config)])

    assert result.exit_code == 0, result.output
    reference = _backup_users(fresh_db, backup, tmp_path)
    with psycopg.connect(fresh_db) as conn:
        users_after = {r[0]: r[1:] for r in conn.execute(
            'SELECT id, email, "authorizerId", "passwordHash", "emailVerified" FROM users')}
        assert migration_state(applied_migrations(conn), MIGRATION) == "rolled-back"
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s",
                            (database_name(fresh_db) + "%side%",)).fetchone()[0] == 0  # the side copy dropped
    assert set(users_after) == set(users_before)  # every user kept, none duplicated (the key is the primary key)
    assert {k: v[:2] for k, v in users_after.items()} == users_before  # nothing else touched
    assert {k: v[2:] for k, v in users_after.items() if k in reference} == reference  # every value back
    later = [v[2:] for k, v in users_after.items() if k not in reference]
    assert len(later) == 5 and all(password is None for password, _verified in later)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "succeeded" and run["attempts"] == 2 and run["rows_lost"]["total"] == 0, run.get("error")


def _backup_users(url: str, backup, tmp_path) -> dict:
    """passwordHash and emailVerified per user as the backup holds them (restored into a scratch database)."""
    import subprocess

    from rollbacklib.postgres.client import libpq_env, with_database

    scratch = database_name(url) + "_reference"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{scratch}"')
    reference = with_database(url, scratch)
    subprocess.run([client_tools("embedded").path("pg_restore"), "--no-owner", "--exit-on-error",
                    f"--dbname={scratch}", str(backup)], check=True, env=libpq_env(reference), capture_output=True)
    with psycopg.connect(reference) as conn:
        return {r[0]: r[1:] for r in conn.execute('SELECT id, "passwordHash", "emailVerified" FROM users')}
