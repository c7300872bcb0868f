"""Fixtures: one real embedded PostgreSQL server per test session, a fresh database per test."""

from __future__ import annotations

import itertools
import os

import psycopg
import pytest

from rollbacklib.drill.embedded import start_server

_counter = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("pg") / "pgdata", delete_on_stop=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def httpserver_listen_address():
    """pytest-httpserver's stand-ins for third-party APIs listen on 127.0.0.1 only, on a free port."""
    return ("127.0.0.1", 0)


@pytest.fixture
def fresh_db(pg_server, request):
    """The URL of a new, empty database on the session's server."""
    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_server.url(name)


# --- an incident, staged for real: data, backup, the bad migration, writes after it ----------

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import gzip  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
from datetime import datetime, timedelta  # noqa: E402

from rollbacklib.postgres import database as db  # noqa: E402
from rollbacklib.journal import read_events  # noqa: E402
from rollbacklib.postgres.backup import manifest_path  # noqa: E402
from rollbacklib.config import load_config  # noqa: E402
from rollbacklib.drill import stage_incident  # noqa: E402
from rollbacklib.postgres.client import client_tools, database_name, with_database  # noqa: E402
from rollbacklib.drill.scenario import load_scenario
from rollbacklib.resources import scenarios_dir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "runbook.toml"
CONFIG_HOME = CONFIG.resolve().parent  # relative paths in the config resolve here
MIGRATION = "20251202020032_update_user_schema_final"
DRILL_URL_ENV = "ROLLBACK_DRILL_DATABASE_URL"


@dataclass
class Incident:
    url: str
    database: str
    backup: Path
    reports: Path
    config: Path = CONFIG
    migration_id: str = MIGRATION
    environment: str = "drill"

    @property
    def admin_url(self) -> str:
        return with_database(self.url, "postgres")

    def run_args(self, *extra: str) -> list[str]:
        return ["run", "--env", self.environment, "-m", self.migration_id, "--config", str(self.config),
                "--reports-dir", str(self.reports), *extra]


@pytest.fixture
def incident(fresh_db, tmp_path, monkeypatch):
    """A database in the state the seed plan rolls back from, and its pre-migration backup."""
    monkeypatch.setenv(DRILL_URL_ENV, fresh_db)
    config = load_config(CONFIG)
    backup = stage_incident(fresh_db, load_scenario(scenarios_dir() / "auth-platform"), MIGRATION, users=200,
                            backup_dir=tmp_path / "backups", tools=client_tools("embedded"),
                            probes=config.all_queries(), say=lambda _line: None)
    return Incident(fresh_db, database_name(fresh_db), backup, tmp_path / "reports")


def journal_events(incident: Incident) -> list[dict]:
    """The events of the incident's (only) run."""
    return read_events(next(incident.reports.rglob("journal.jsonl")))


def server_snapshot(incident: Incident) -> dict:
    """Everything a run could change on the server: databases and their settings, schema, rows."""
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        databases = admin.execute(
            "SELECT datname, datallowconn, datconnlimit FROM pg_database ORDER BY datname").fetchall()
    with psycopg.connect(incident.url, autocommit=True) as conn:
        return {
            "databases": databases,
            "fingerprint": db.schema_fingerprint(db.schema_catalog(conn)),
            "counts": db.row_counts(conn),
            "digests": db.table_digests(conn),
            "migrations": conn.execute("SELECT * FROM _prisma_migrations ORDER BY started_at").fetchall(),
        }


# --- backups made from an incident's backup ----------------------------------------------------

def plain_gz(backup: Path, folder: Path, *, keep_end: bool = True,
             name: str = "backup_prod_pre_migration_20251202.sql.gz") -> Path:
    """The plan's own format: a plain pg_dump script, gzipped (made from a custom archive)."""
    script = subprocess.run([client_tools("embedded").path("pg_restore"), "-f", "-", str(backup)],
                            check=True, capture_output=True).stdout
    if not keep_end:
        script = script[: len(script) // 2]
    path = folder / name
    path.write_bytes(gzip.compress(script))
    return path


def before_the_migration(path: Path) -> Path:
    """A file without a manifest is dated by its modification time: put it before the migration."""
    five_minutes_ago = (datetime.now() - timedelta(minutes=5)).timestamp()
    os.utime(path, (five_minutes_ago, five_minutes_ago))
    return path


def with_manifest_change(backup: Path, folder: Path, change) -> Path:
    """A copy of ``backup`` in ``folder`` whose manifest ``change(manifest)`` edited."""
    path = folder / backup.name
    shutil.copy(backup, path)
    manifest = json.loads(manifest_path(backup).read_text())
    change(manifest)
    manifest_path(path).write_text(json.dumps(manifest))
    return path


from contextlib import contextmanager  # noqa: E402


@contextmanager
def behind_the_runbook(incident: Incident, run_id: str | None = None):
    """A connection to a database the runbook keeps closed (a person acting between phases).

    With ``run_id``: the restored copy of that run, which phase 03 validates before it goes live.
    """
    name = f"{incident.database}__restored_{run_id}" if run_id else incident.database
    statements = [s.as_string(None) for s in db.private_connection_statements(name)]
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        with db.private_connection(admin, incident.url, name, statements) as conn:
            yield conn


def kill_when(incident: Incident, run_id: str, step: str, status: str):
    """Start `rollback run --yes` in a process; SIGKILL it and its kernel as soon as the journal shows (step, status)."""
    from rollbacklib.drill.injection import Command, Trigger, kill_runner_and_kernel, strike_when

    command = Command(incident.run_args("--backup", str(incident.backup), "--yes", "--run-id", run_id),
                      say=lambda _line: None).start()
    journal = incident.reports.resolve() / MIGRATION / "drill" / run_id / "journal.jsonl"
    hit = strike_when(command, journal, Trigger(step, (status,)), kill_runner_and_kernel)
    return command.proc, hit


def between_the_renames(incident: Incident, run_id: str):
    """A run killed inside the outage window, right after the live database was renamed away: the live name is
    free and the validated copy waits, closed, for its promote (what a person may meddle with before a resume)."""
    return kill_when(incident, run_id, "swap-keep-live", "changed")
