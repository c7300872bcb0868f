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

from rollbacklib.postgres import database as db  # noqa: E402
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
