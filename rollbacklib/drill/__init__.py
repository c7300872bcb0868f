"""The built-in drill: the configured scenario end to end on an embedded PostgreSQL server.

Start a server in a temporary folder, apply the migrations before the bad one, generate
data, take the backup, apply the bad migration, write rows after it as the app would, leave
an app session open, then run the whole runbook in the drill environment.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psycopg

from rollbacklib.postgres import database as db
from rollbacklib.postgres.backup import take_backup
from rollbacklib.config import load_config
from rollbacklib.errors import ConfigError
from rollbacklib.drill.embedded import EmbeddedServer, start_server
from rollbacklib.postgres.client import ClientTools, client_tools
from rollbacklib.drill.prisma_migrate import apply_migration
from rollbacklib.run import default_reports_dir, new_run_id, run_folder
from rollbacklib.pipeline import RunResult, run_phases
from rollbacklib.drill.scenario import Scenario, generate_data, load_scenario, prepare_until, write_after_migration


@dataclass
class DrillResult:
    run: RunResult
    workdir: Path
    url: str
    server: EmbeddedServer | None
    setup_seconds: dict = field(default_factory=dict)
    rolled_back: bool = False

    @property
    def exit_code(self) -> int:
        if self.run.exit_code != 0:
            return self.run.exit_code
        return 0 if self.rolled_back and self.run.summary["validation"]["passed"] else 5


class _Timer:
    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.seconds: dict[str, float] = {}

    def step(self, label: str):
        started = time.monotonic()
        self.say(f"… {label}")
        return lambda: self.seconds.__setitem__(label, round(time.monotonic() - started, 2))


def stage_incident(url: str, scenario: Scenario, migration_id: str, *, users: int, backup_dir: Path,
                   tools: ClientTools, probes: list = (), say: Callable[[str], None] = print,
                   timer: _Timer | None = None) -> Path:
    """Bring the empty database at ``url`` to the incident: data, backup, bad migration, later writes.

    Returns the backup taken just before ``migration_id`` was applied.
    """
    timer = timer or _Timer(say)
    with psycopg.connect(url) as conn:
        done = timer.step(f"applying the migrations before {migration_id}")
        prepare_until(conn, scenario, migration_id)
        done()
        done = timer.step(f"generating data for {users:,} users")
        counts = generate_data(conn, scenario, users)
        done()
        say(f"  rows: {counts}")
    done = timer.step("taking the pre-migration backup")
    backup = take_backup(url, backup_dir, tools, probes=probes)
    done()
    with psycopg.connect(url) as conn:
        done = timer.step(f"applying the bad migration {migration_id}")
        apply_migration(conn, scenario.migrations_dir, migration_id)
        written = write_after_migration(conn, scenario)
        done()
        say(f"  rows written after the migration (lost by a restore): {written}")
    return backup


def run_drill(*, config_path: str | None = None, users: int | None = None, reports_dir: str | None = None,
              keep: bool = False, say: Callable[[str], None] = print,
              on_event: Callable[[dict], None] | None = None) -> DrillResult:
    config = load_config(config_path)
    if config.drill is None:
        raise ConfigError(f"{config.path} has no [drill] section.",
                          next_action="add [drill] with scenario, migration and environment (see README).")
    drill = config.drill
    scenario = load_scenario(drill.scenario)
    env = config.environment(drill.environment)
    users = users or drill.users
    workdir = Path(tempfile.mkdtemp(prefix="rollback-drill-"))
    timer = _Timer(say)

    done = timer.step("starting an embedded PostgreSQL server")
    server = start_server(workdir / "pgdata", keep_running=keep, delete_on_stop=not keep)
    done()
    app_session = None
    try:
        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute(db.sql.SQL("CREATE DATABASE {}").format(db.sql.Identifier(scenario.database)))
        url = server.url(scenario.database)
        os.environ[env.database_url_env] = url
        run_id = new_run_id()
        run_dir = run_folder(reports_dir or default_reports_dir(), drill.migration, drill.environment, run_id)
        backup = stage_incident(url, scenario, drill.migration, users=users, backup_dir=run_dir / "backup",
                                tools=client_tools(env.client_binaries), probes=config.all_queries(), say=say,
                                timer=timer)
        app_session = psycopg.connect(url, autocommit=True, application_name="api-gateway")  # an app left connected

        def progress(phase: str, status: str, seconds: float | None) -> None:
            say(f"  {phase:<20} {status}" + (f" ({seconds:.1f} s)" if seconds is not None else ""))

        say("running the runbook")
        result = run_phases(migration_id=drill.migration, environment=drill.environment, config_path=str(config.path),
                            reports_dir=reports_dir, run_id=run_id, approve=drill.migration, backup=str(backup),
                            progress=progress, on_event=on_event)
        rolled_back = _rolled_back(url, config.migration(drill.migration))
        return DrillResult(result, workdir, url, server if keep else None, timer.seconds, rolled_back)
    finally:
        if app_session is not None:
            app_session.close()
        if not keep:
            server.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def _rolled_back(url: str, migration) -> bool:
    """Independent of the runbook's own verdict: do the configured columns really exist again?"""
    if migration is None:
        return True
    try:
        with db.connect(url) as conn:
            return all((db.column_info(conn, c.table, c.column) is not None) == c.exists for c in migration.expect.columns)
    except Exception:
        return False
