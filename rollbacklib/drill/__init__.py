"""The built-in drill: the configured scenario end to end on an embedded PostgreSQL server.

Start a server in a folder of its own, apply the migrations before the bad one, generate
data, take the backup, apply the bad migration, write rows after it as the app would, leave
an app session connected, then run the whole runbook in the drill environment
(``run_drill``), or stop there for a person to practise on (``stage_drill``). The folder
records what was staged in ``drill.json``; ``stop_drill(folder)`` ends it.
"""

from __future__ import annotations

import json
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
from rollbacklib.config import Config, load_config
from rollbacklib.errors import ConfigError
from rollbacklib.drill.app_session import APP_NAME, start_app_session, stop_app_session
from rollbacklib.drill.embedded import EmbeddedServer, start_server, stop_server
from rollbacklib.postgres.client import ClientTools, client_tools
from rollbacklib.drill.prisma_migrate import apply_migration
from rollbacklib.run import default_reports_dir, new_run_id, run_folder
from rollbacklib.pipeline import RunResult, run_phases
from rollbacklib.drill.scenario import Scenario, generate_data, load_scenario, prepare_until, write_after_migration
from rollbacklib.drill.services import DrillServices, give_test_user_password

DRILL_FILE = "drill.json"
_KIND = "rollbacklib drill"


@dataclass
class DrillResult:
    run: RunResult
    workdir: Path
    url: str
    server: EmbeddedServer | None
    setup_seconds: dict = field(default_factory=dict)
    rolled_back: bool = False
    services: dict | None = None  # with --services: login before and after, traffic by window

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
                   timer: _Timer | None = None, after_generate: Callable | None = None,
                   failing: str | None = None) -> Path:
    """Bring the empty database at ``url`` to the incident: data, backup, bad migration, later writes.

    ``failing``: ``"whole"`` stages the migration failing as one statement (Prisma's P3009, the
    schema unchanged), ``"partly"`` failing part way, its statements run one by one as Prisma's
    driver adapter runs them (``rollbacklib.drill.failing``). Returns the backup taken just before
    ``migration_id`` was applied.
    """
    timer = timer or _Timer(say)
    with psycopg.connect(url) as conn:
        done = timer.step(f"applying the migrations before {migration_id}")
        prepare_until(conn, scenario, migration_id)
        done()
        done = timer.step(f"generating data for {users:,} users")
        counts = generate_data(conn, scenario, users)
        if after_generate is not None:  # before the backup: what the restored database must hold too
            after_generate(conn)
        if failing:
            from rollbacklib.drill.failing import add_failing_data

            say(f"  rows the migration's new constraint rejects: {add_failing_data(conn, scenario)}")
        done()
        say(f"  rows: {counts}")
    done = timer.step("taking the pre-migration backup")
    backup = take_backup(url, backup_dir, tools, probes=probes)
    done()
    with psycopg.connect(url) as conn:
        done = timer.step(f"applying the bad migration {migration_id}" + (f" (it fails: {failing})" if failing else ""))
        if failing:
            from rollbacklib.drill.failing import apply_failing

            say("  " + apply_failing(conn, url, scenario, migration_id, partly=failing == "partly"))
        else:
            apply_migration(conn, scenario.migrations_dir, migration_id)
        written = write_after_migration(conn, scenario)
        done()
        say(f"  rows written after the migration (lost by a restore): {written}")
    return backup


@dataclass
class StagedDrill:
    """An incident staged on an embedded server in ``folder``, recorded in ``folder/drill.json``."""

    folder: Path
    migration: str
    environment: str
    database_url_env: str
    config: Path
    url: str = ""
    backup: Path | None = None
    app_pid: int | None = None
    setup_seconds: dict = field(default_factory=dict)
    server: EmbeddedServer | None = field(default=None, repr=False)

    @property
    def pgdata(self) -> Path:
        return self.folder / "pgdata"

    def save(self) -> None:
        record = {"kind": _KIND, "migration": self.migration, "environment": self.environment,
                  "database_url_env": self.database_url_env, "config": str(self.config), "url": self.url,
                  "backup": str(self.backup) if self.backup else None, "app_pid": self.app_pid,
                  "pgdata": str(self.pgdata)}
        (self.folder / DRILL_FILE).write_text(json.dumps(record, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "StagedDrill":
        folder = Path(folder).expanduser().resolve()
        try:
            record = json.loads((folder / DRILL_FILE).read_text())
            if record.get("kind") != _KIND or Path(record["pgdata"]) != folder / "pgdata":
                raise ValueError
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(f"{folder} is not a drill folder (no readable {DRILL_FILE} written by rollback drill).",
                              next_action="pass the folder that `rollback drill --stage-only` (or --keep) printed; "
                              f"it holds {DRILL_FILE} and pgdata/.", step="drill") from None
        return cls(folder, record["migration"], record["environment"], record["database_url_env"],
                   Path(record["config"]), record["url"], Path(record["backup"]) if record["backup"] else None,
                   record["app_pid"])

    def instructions(self, reports_dir: str | os.PathLike | None = None) -> str:
        """What a person needs to rehearse the rollback on this incident: JupyterLab, the CLI, or papermill."""
        from rollbacklib.drill.practice import instructions

        return instructions(self, reports_dir)


def _drill_config(config_path: str | None) -> Config:
    config = load_config(config_path)
    if config.drill is None:
        raise ConfigError(f"{config.path} has no [drill] section.",
                          next_action="add [drill] with scenario, migration and environment (see README).")
    return config


def stage_drill(*, config_path: str | None = None, users: int | None = None, backup_dir: Path | None = None,
                keep: bool = True, say: Callable[[str], None] = print, timer: _Timer | None = None,
                after_generate: Callable | None = None, failing: str | None = None) -> StagedDrill:
    """Start an embedded server in a new folder and stage the configured incident on it, app session included.

    Nothing of the runbook runs. The app session is a detached process that outlives this one.
    With ``keep`` the server runs until ``stop_drill(folder)``; without it, it stops when this
    process ends. On any failure everything started is stopped and the folder removed.
    """
    config = _drill_config(config_path)
    drill = config.drill
    scenario = load_scenario(drill.scenario)
    env = config.environment(drill.environment)
    timer = timer or _Timer(say)
    staged = StagedDrill(Path(tempfile.mkdtemp(prefix="rollback-drill-")), drill.migration, drill.environment,
                         env.database_url_env, config.path, setup_seconds=timer.seconds)
    try:
        done = timer.step("starting an embedded PostgreSQL server")
        staged.server = start_server(staged.pgdata, keep_running=keep, delete_on_stop=not keep)
        done()
        staged.url = staged.server.url(scenario.database)
        staged.save()  # from here on, stop_drill(folder) can end it
        with psycopg.connect(staged.server.url(), autocommit=True) as admin:
            admin.execute(db.sql.SQL("CREATE DATABASE {}").format(db.sql.Identifier(scenario.database)))
        staged.backup = stage_incident(staged.url, scenario, drill.migration, users=users or drill.users,
                                       backup_dir=backup_dir or staged.folder / "backups",
                                       tools=client_tools(env.client_binaries), probes=config.all_queries(), say=say,
                                       timer=timer, after_generate=after_generate, failing=failing)
        done = timer.step(f"connecting an app session ({APP_NAME})")
        staged.app_pid = start_app_session(staged.url, staged.folder)
        done()
        staged.save()
    except BaseException:
        _end(staged)
        raise
    return staged


@dataclass
class StoppedDrill:
    folder: Path
    app_session_was_running: bool
    server_was_running: bool


def stop_drill(folder: str | os.PathLike) -> StoppedDrill:
    """Stop the app session and the server of a drill folder, then remove the folder."""
    return _end(StagedDrill.load(folder))


def _end(staged: StagedDrill) -> StoppedDrill:
    app = stop_app_session(staged.app_pid, staged.folder)
    if staged.server is not None:  # this process's handle: it stops the server once, and deletes pgdata if asked
        server = staged.pgdata.exists()
        staged.server.stop()
    else:
        server = staged.pgdata.exists() and stop_server(staged.pgdata)
    shutil.rmtree(staged.folder, ignore_errors=True)
    return StoppedDrill(staged.folder, app, server)


def run_drill(*, config_path: str | None = None, users: int | None = None, reports_dir: str | None = None,
              keep: bool = False, say: Callable[[str], None] = print,
              on_event: Callable[[dict], None] | None = None, services: bool = False, strategy: str = "",
              failing: str | None = None) -> DrillResult:
    """Stage the incident, then run the whole runbook on it with the gate approved, as an operator would.

    With ``services`` the scenario's apps run for real under the process platform, with traffic
    (``drill/services.py``): the runbook stops and starts them, and the drill measures around it.
    """
    config = _drill_config(config_path)
    drill = config.drill
    run_id = new_run_id()
    run_dir = run_folder(reports_dir or default_reports_dir(), drill.migration, drill.environment, run_id)
    timer = _Timer(say)
    staged = stage_drill(config_path=str(config.path), users=users, backup_dir=run_dir / "backup", keep=keep,
                         say=say, timer=timer, after_generate=give_test_user_password if services else None,
                         failing=failing)
    apps = None
    try:
        os.environ[staged.database_url_env] = staged.url
        run_config = str(config.path)
        if services:
            say("starting the services (process platform) and their traffic")
            apps = DrillServices.start(config, drill.environment, drill.scenario, staged.folder / "services", say)
            run_config = str(apps.config)

        def progress(phase: str, status: str, seconds: float | None) -> None:
            say(f"  {phase:<20} {status}" + (f" ({seconds:.1f} s)" if seconds is not None else ""))

        say("running the runbook")
        started = time.time()
        result = run_phases(migration_id=drill.migration, environment=drill.environment, config_path=run_config,
                            reports_dir=reports_dir, run_id=run_id, approve=drill.migration, backup=str(staged.backup),
                            progress=progress, on_event=on_event,
                            strategy=strategy or ("auto" if failing else ""))  # a failed migration: the recommended one
        measured = apps.finish(started, time.time(), say) if apps else None
        rolled_back = _rolled_back(staged.url, config.migration(drill.migration))
        return DrillResult(result, staged.folder, staged.url, staged.server if keep else None, timer.seconds,
                           rolled_back, measured)
    finally:
        if apps is not None:
            apps.stop()  # every service to 0 and the traffic ended, whatever happened
        stop_app_session(staged.app_pid, staged.folder)  # gone already if the runbook terminated its session
        if not keep:
            _end(staged)


def _rolled_back(url: str, migration) -> bool:
    """Independent of the runbook's own verdict: do the configured columns really exist again?"""
    if migration is None:
        return True
    try:
        with db.connect(url) as conn:
            return all((db.column_info(conn, c.table, c.column) is not None) == c.exists for c in migration.expect.columns)
    except Exception:
        return False
