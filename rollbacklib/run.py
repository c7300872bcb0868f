"""A run of the runbook: its folder, journal, typed state shared between phases, and its plan.

Each phase notebook starts with ``ctx = open_run(...)`` and calls one library function per
cell with ``ctx``; each of those runs one step through ``rollbacklib.dispatch.dispatch``.
Notebooks run in separate kernels, so everything a later phase needs is kept in the run
folder (``state.json``, ``plan.json`` and the journal), never in memory.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rollbacklib.config import Config, ResolvedEnvironment, load_config
from rollbacklib.errors import AbortedError, ConfigError, RefusedError
from rollbacklib.journal import JOURNAL_NAME, Journal, changes_made, utc_now
from rollbacklib.state import Approval, RunState, StepRecord, load_state, save_state
from rollbacklib.steps import Phase, Plan, Step, StepName, read_plan
from rollbacklib.postgres.client import (ClientTools, client_tools, database_name, with_database,
                                         with_session_settings)
from rollbacklib.prisma import validate_migration_id



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
        """The database URL with the configured lock and statement timeouts: nothing the runbook runs waits forever."""
        t = self.env.thresholds
        return with_session_settings(self.env.database_url(), lock_timeout=_ms(t.lock_timeout_seconds),
                                     statement_timeout=_ms(t.statement_timeout_seconds))

    @property
    def database(self) -> str:
        return database_name(self.url)

    @property
    def admin_url(self) -> str:
        """The same server, on the maintenance database: renames need the target free of us too."""
        return with_database(self.url, self.env.maintenance_database)

    @functools.cached_property
    def tools(self) -> ClientTools:
        return client_tools(self.env.client_binaries)

    def secrets(self) -> list[str]:
        """Every secret the config's env vars hold (the database URL, its password in each form): masked everywhere."""
        from rollbacklib.redaction import config_secrets

        return config_secrets(self.config)

    @property
    def migration(self):
        return self.config.migration(self.migration_id)

    # --- state shared between phases ---
    def state(self) -> RunState:
        return load_state(self.run_dir)

    def update(self, **fields) -> RunState:
        """Set fields of the run's state (validated against ``RunState``) and write it atomically."""
        state = self.state()
        return save_state(self.run_dir, RunState.model_validate({**dict(state), **fields}))

    def mark_step(self, name: str, status: str) -> None:
        state = self.state()
        steps = {**state.steps, name: StepRecord(status=status, at=utc_now())}
        save_state(self.run_dir, RunState.model_validate({**dict(state), "steps": steps}))

    def plan(self) -> Plan | None:
        """The run's plan, refused if it is not the one phase 01 wrote (its digest is kept in the state too)."""
        plan = read_plan(self.run_dir)
        written = self.state().plan_digest
        if plan is not None and written and plan.digest != written:
            raise RefusedError(f"plan.json is not the plan 01_prepare wrote for run {self.run_id}.",
                               next_action="run 01_prepare again to write a new plan, then approve that one.",
                               step="plan", expected=written, found=plan.digest)
        return plan

    def planned(self, name: str) -> Step:
        """Step ``name`` as phase 01 rendered it into ``plan.json``: what runs is what was shown."""
        plan = self.plan()
        if plan is None:
            raise AbortedError("This run has no plan.json.", next_action="run 01_prepare first for this run "
                               "(same reports folder and run_id).", step=name)
        return plan.step(name)

    # --- journal ---
    def record(self, step: str, status: str, message: str = "", **evidence) -> dict:
        return self.journal.record(self.phase, step, status, message, **evidence)

    def changes_began(self) -> bool:
        return changes_made(self.journal.events())

    # --- what is true now ---
    def live(self):
        """The catalog now, seen through this run's records (``rollbacklib.live``): never raises."""
        from rollbacklib import live

        state = self.state()
        copy = state.restored
        return live.view(self.admin_url, live=self.database, run_id=self.run_id, original_oid=state.original_oid,
                         copy_oid=copy.oid if copy else None, marker=copy.marker if copy else None,
                         changes_made=self.changes_began())

    def previous_settings(self) -> dict | None:
        """The live database's connection settings before the run blocked it."""
        state = self.state()
        return state.blocked.previous if state.blocked else state.original_settings


def _ms(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms"


def open_run(*, migration_id: str, environment: str, config_path: str = "", run_id: str = "",
             reports_dir: str = "", phase: str = "", dry_run: bool = False, approve: str = "") -> RunContext:
    """Validate the parameters and open (or create) the run's folder. Changes nothing else.

    Inside a kernel it also masks the run's secrets in what the kernel shows (tracebacks included).
    """
    from rollbacklib.protection import unless_digest
    from rollbacklib.redaction import config_secrets, mask_in_kernel, refuse_credentials

    refuse_credentials({"migration_id": migration_id, "environment": environment, "config_path": config_path,
                        "run_id": run_id, "reports_dir": reports_dir, "approve": unless_digest(approve)})
    validate_migration_id(migration_id)
    config = load_config(config_path or None)
    mask_in_kernel(config_secrets(config))
    env = config.environment(environment)
    env.database_url()  # a missing secret is bad usage, found before anything happens
    run_id = run_id or new_run_id()
    run_dir = run_folder(reports_dir or default_reports_dir(), migration_id, environment, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    _show_tables_whole()
    ctx = RunContext(config, env, migration_id, run_id, run_dir, phase or "adhoc", bool(dry_run), str(approve or ""))
    ctx.record("phase", "started", f"{ctx.phase} of {migration_id} on {environment}",
               dry_run=ctx.dry_run, strategy=env.strategy, config=str(config.path),
               rto_budget_seconds=env.thresholds.rto_budget_seconds,
               rpo_budget_seconds=env.thresholds.rpo_budget_seconds, pid=os.getpid())  # the process running the phase
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


def record_approval(run_dir: Path, migration_id: str, how: str, digest: str) -> Approval:
    """Record that the plan with ``digest`` was approved, and how: the precondition of every destructive step."""
    approval = Approval(how=how, at=utc_now(), plan_digest=digest, migration_id=migration_id)
    state = load_state(run_dir)
    save_state(run_dir, RunState.model_validate({**dict(state), "approval": approval}))
    Journal(Path(run_dir) / JOURNAL_NAME).record(Phase.EXECUTE, StepName.GATE, "info",
                                                 f"plan {digest[:12]} approved: {how}", approval=approval.model_dump())
    return approval
