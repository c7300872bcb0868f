"""A run of the runbook: its folder, journal, shared state between phases, and its gates.

Each phase notebook starts with ``ctx = open_run(...)`` and calls one library function per
cell with ``ctx``. Notebooks run in separate kernels, so everything a later phase needs is
kept in the run folder (``state.json`` and the journal), never in memory.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rollbacklib.config import Config, ResolvedEnvironment, load_config
from rollbacklib.errors import AbortedError, ConfigError, RefusedError, RollbackError
from rollbacklib.journal import JOURNAL_NAME, Journal, changes_made
from rollbacklib.postgres.client import ClientTools, client_tools, database_name
from rollbacklib.prisma import validate_migration_id

STATE_NAME = "state.json"


def default_reports_dir() -> Path:
    """$ROLLBACK_REPORTS, or ``reports/`` under the working directory."""
    return Path(os.environ.get("ROLLBACK_REPORTS") or "reports")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def run_folder(reports_dir: str | os.PathLike, migration_id: str, environment: str, run_id: str) -> Path:
    if not RUN_ID.match(run_id):
        raise ConfigError(f"Run ID {run_id!r} is not usable as a folder name.",
                          next_action="use letters, digits, '.', '_' or '-' (at most 64), or leave it empty for a new run.",
                          step="config")
    return Path(reports_dir).resolve() / migration_id / environment / run_id


@dataclass
class RunContext:
    config: Config
    env: ResolvedEnvironment
    migration_id: str
    run_id: str
    run_dir: Path
    phase: str
    dry_run: bool = False
    approve: str = ""
    journal: Journal = field(init=False)

    def __post_init__(self):
        self.journal = Journal(self.run_dir / JOURNAL_NAME, secrets=self.secrets())

    # --- connection ---
    @property
    def url(self) -> str:
        return self.env.database_url()

    @property
    def database(self) -> str:
        return database_name(self.url)

    @property
    def admin_url(self) -> str:
        """The same server, on the maintenance database: renames need the target free of us too."""
        from rollbacklib.postgres.client import with_database

        return with_database(self.url, self.env.maintenance_database)

    @functools.cached_property
    def tools(self) -> ClientTools:
        return client_tools(self.env.client_binaries)

    def secrets(self) -> list[str]:
        """The URL and its password, as written and percent-decoded: what the journal redacts."""
        from rollbacklib.postgres.urls import secrets_in

        value = os.environ.get(self.env.database_url_env, "")
        return secrets_in(value) if value else []

    @property
    def migration(self):
        return self.config.migration(self.migration_id)

    # --- state shared between phases ---
    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_NAME

    def state(self) -> dict:
        return json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def remember(self, **values) -> dict:
        state = self.state()
        state.update(values)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, default=str))
        os.replace(tmp, self.state_path)
        return state

    def require(self, key: str, produced_by: str):
        state = self.state()
        if key not in state:
            raise AbortedError(
                f"This run has no {key!r} yet; it is produced by {produced_by}.",
                next_action=f"run {produced_by} first for run {self.run_id} (same --reports-dir and run_id).",
                step=self.phase,
            )
        return state[key]

    # --- journal ---
    def record(self, step: str, status: str, message: str = "", **evidence) -> dict:
        return self.journal.record(self.phase, step, status, message, **evidence)

    def changes_began(self) -> bool:
        return changes_made(self.journal.events())


def open_run(*, migration_id: str, environment: str, config_path: str = "", run_id: str = "",
             reports_dir: str = "", phase: str = "", dry_run: bool = False, approve: str = "") -> RunContext:
    """Validate the parameters and open (or create) the run's folder. Changes nothing else."""
    validate_migration_id(migration_id)
    config = load_config(config_path or None)
    env = config.environment(environment)
    env.database_url()  # a missing secret is bad usage, found before anything happens
    run_id = run_id or new_run_id()
    run_dir = run_folder(reports_dir or default_reports_dir(), migration_id, environment, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    _show_tables_whole()
    ctx = RunContext(config, env, migration_id, run_id, run_dir, phase or "adhoc", bool(dry_run), str(approve or ""))
    ctx.record("phase", "started", f"{ctx.phase} of {migration_id} on {environment}",
               dry_run=ctx.dry_run, strategy=env.strategy, config=str(config.path),
               rto_budget_seconds=env.thresholds.rto_budget_seconds)
    return ctx


def _show_tables_whole() -> None:
    """The notebooks are the evidence: a plan or a check cut at 50 characters proves nothing."""
    import pandas as pd

    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.max_rows", 500)


def describe(ctx: RunContext) -> str:
    """A markdown header for a phase notebook: which run, against what (no secrets)."""
    return (f"**Run** `{ctx.run_id}` · phase `{ctx.phase}` · migration `{ctx.migration_id}` · environment "
            f"`{ctx.env.name}` · database `{ctx.env.parsed_database_url().display()}` (from `${ctx.env.database_url_env}`) · strategy "
            f"`{ctx.env.strategy}` · {'**DRY RUN**: nothing will change' if ctx.dry_run else 'live run'}\n\n"
            f"Report folder: `{ctx.run_dir}`")


def finish_phase(ctx: RunContext) -> None:
    ctx.record("phase", "ok", f"{ctx.phase} finished")


def step(name: str):
    """Journal a library step: started, then ok or how it failed (with the error's next action)."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(ctx: RunContext, *args, **kwargs):
            ctx.record(name, "started")
            try:
                result = fn(ctx, *args, **kwargs)
            except RollbackError as err:
                if err.step is None:
                    err.step = name
                evidence = {k: v for k, v in err.to_dict().items() if k not in ("message", "step")}
                ctx.record(name, err.outcome, err.message, **evidence)
                raise
            except Exception as err:
                outcome = "failed" if ctx.changes_began() else "aborted"
                ctx.record(name, outcome, f"{type(err).__name__}: {err}", error=type(err).__name__,
                           exit_code=5 if outcome == "failed" else 3,
                           next_action="read the traceback in the executed notebook; escalate to L1.")
                raise
            ctx.record(name, "ok")
            return result

        return wrapper

    return decorate


def confirm(ctx: RunContext, action: str) -> None:
    """The gate before a destructive step: the migration ID must be given (approve) or typed."""
    if ctx.approve == ctx.migration_id:
        ctx.record("gate", "info", f"approved by parameter: {action}")
        return
    if ctx.approve:
        raise RefusedError(
            f"The approval given ({ctx.approve!r}) is not the migration ID.",
            next_action=f"pass approve={ctx.migration_id} (or --yes on the CLI) to allow: {action}",
            step="gate",
        )
    try:
        typed = input(f"{action}\nType the migration ID ({ctx.migration_id}) to go on, anything else to stop: ")
    except Exception:  # papermill and other headless kernels have no stdin
        typed = None
    if typed is None:
        raise RefusedError(
            f"Refused: {action} needs confirmation and this run has no one to ask.",
            next_action=f"re-run with -p approve {ctx.migration_id} (papermill) or --yes (rollback run) once the "
            "dry run (-p dry_run True / --dry-run) shows what will happen.",
            step="gate",
        )
    if typed.strip() != ctx.migration_id:
        raise RefusedError(f"Refused: typed {typed.strip()!r}, not the migration ID.",
                           next_action="nothing was changed; run the cell again to retry.", step="gate")
    ctx.record("gate", "info", f"approved interactively: {action}")

