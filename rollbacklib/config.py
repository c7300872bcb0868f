"""The runbook's configuration (``runbook.toml``), validated.

Secrets are referenced by the *name* of an environment variable, never by value. Relative
paths are resolved against the folder of the config file. Errors name the file and the key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from rollbacklib.config_base import ENV_VAR_NAME, _env_var_name, _Strict  # noqa: F401  (re-exported)
from rollbacklib.errors import ConfigError
from rollbacklib.notify.settings import Escalation, NotifySettings
from rollbacklib.platform_settings import PlatformSettings
from rollbacklib.dependencies import Dependency
from rollbacklib.probes import HealthCheck, SmokeTest
from rollbacklib.service_config import ServiceSnapshot, StartOrder
from rollbacklib.staging import StagingCheck, check_staging_names
from rollbacklib.postgres.urls import DatabaseUrl, parse_database_url
from rollbacklib.resources import default_config
from rollbacklib.trigger_settings import EnvironmentTriggers, TriggerSettings

DEFAULT_CONFIG_NAME = "runbook.toml"
WORKDIR_ENV = "ROLLBACK_WORKDIR"


# "auto": the strategy phase 01 recommends; the others name one (rollbacklib/strategies/).
StrategyName = Literal["auto", "swap", "resolve-only", "surgical", "in-place"]


class Thresholds(_Strict):
    rto_budget_seconds: float = 900
    rpo_budget_seconds: float = 60
    min_backup_bytes: int = 100 * 1024 * 1024
    max_backup_age_seconds: float = 3600
    drain_wait_seconds: float = 30
    terminate_timeout_seconds: float = 30
    poll_interval_seconds: float = 0.5
    lock_timeout_seconds: float = 10
    statement_timeout_seconds: float = 600
    restore_statement_timeout_seconds: float = 4 * 3600
    cell_timeout_seconds: float = 6 * 3600
    restore_space_factor: float = 1.2
    restore_jobs: int = Field(0, ge=0)  # pg_restore -j; 0: the server's cores when it is on this machine, else 4


class ThresholdOverrides(_Strict):
    rto_budget_seconds: float | None = None
    rpo_budget_seconds: float | None = None
    min_backup_bytes: int | None = None
    max_backup_age_seconds: float | None = None
    drain_wait_seconds: float | None = None
    terminate_timeout_seconds: float | None = None
    poll_interval_seconds: float | None = None
    lock_timeout_seconds: float | None = None
    statement_timeout_seconds: float | None = None
    restore_statement_timeout_seconds: float | None = None
    cell_timeout_seconds: float | None = None
    restore_space_factor: float | None = None
    restore_jobs: int | None = Field(None, ge=0)


class SurgicalSettings(_Strict):
    """Strategy surgical (README "Strategy: surgical"): ``[defaults.surgical]`` or ``[environments.NAME.surgical]``."""

    services: Literal["up", "drain"] = "up"  # up: serve through it; drain: stop the services around the changes
    batch_rows: int = Field(5000, gt=0)  # rows per backfill UPDATE (one transaction each)
    lock_timeout_seconds: float = Field(2, gt=0)  # how long the reverse DDL waits for its locks per attempt
    attempts: int = Field(5, gt=0)  # tries of the reverse DDL before it gives up (nothing changed)
    retry_pause_seconds: float = Field(1, ge=0)  # pause after the n-th lock timeout: n times this


class Service(_Strict):
    name: str
    replicas: int = Field(1, ge=0)


class Release(_Strict):
    """What the release that will be redeployed after the rollback contains."""

    migrations_dir: Path | None = None
    start_command: str | None = None
    previous: str | None = None  # the release to go back to (a commit, an image): what the staging check deploys


class Environment(_Strict):
    name: str = ""
    database_url_env: str
    backup_dir: Path
    maintenance_database: str | None = None
    client_binaries: str | None = None
    restore_keep_owners: bool | None = None
    strategy: StrategyName | None = None
    protected: bool = False  # rollback run acts only with --approve DIGEST or the digest typed at the gate
    in_place_safety_copy: Literal["auto", "required", "never"] | None = None  # strategy in-place
    salvage: bool | None = None  # swap: carry the rows written after the backup into the restored database
    service_platform: str | None = None
    services: list[Service] = []
    platform: PlatformSettings | None = None
    health: HealthCheck | None = None
    smoke_tests: list[SmokeTest] = []
    start: StartOrder = StartOrder()  # the order services come back in, and whose health is waited for
    snapshot: ServiceSnapshot = ServiceSnapshot()  # phase 01: last log lines and a metrics snapshot
    release: Release | None = None
    dependencies: list[Dependency] = []  # rollbacklib/dependencies.py: probed in 01 and 04
    staging_check: StagingCheck | None = None  # rollbacklib/staging.py: the seed's 3.3, in 02 before the gate
    notify: NotifySettings | None = None
    thresholds: ThresholdOverrides = ThresholdOverrides()
    triggers: EnvironmentTriggers | None = None  # rollbacklib/trigger_settings.py
    surgical: SurgicalSettings | None = None  # the surgical strategy's settings (README "Strategy: surgical")

    _check_env = field_validator("database_url_env")(_env_var_name)

    @model_validator(mode="after")
    def _platform_matches(self) -> "Environment":
        if self.platform is None:
            return self
        if self.service_platform not in (None, self.platform.kind):
            raise ValueError(f"service_platform = {self.service_platform!r} but platform.kind = "
                             f"{self.platform.kind!r}: give one, or the same in both")
        self.platform.check_services([s.name for s in self.services])
        return self

    @model_validator(mode="after")
    def _start_matches(self) -> "Environment":
        self.start.check_services([s.name for s in self.services])
        return self

    def database_url(self) -> str:
        """The libpq conninfo for the URL in the environment variable this environment names."""
        return self.parsed_database_url().conninfo

    def parsed_database_url(self) -> DatabaseUrl:
        """The URL in the environment variable, read as Prisma reads it (``postgres/urls.py``).

        Besides the conninfo: the schema, the URL arguments dropped or translated (for the
        journal), and the secrets to keep out of every file.
        """
        value = os.environ.get(self.database_url_env)
        if not value:
            raise ConfigError(
                f"Environment variable {self.database_url_env} is not set "
                f"(environment {self.name!r} reads its database URL from it).",
                next_action=(
                    f"export {self.database_url_env}='postgresql://USER:PASSWORD@HOST:PORT/DBNAME' "
                    "in the shell that runs the runbook; the value is read at run time and "
                    "never written to a notebook, a report or a log."
                ),
                step="config",
            )
        return parse_database_url(value, source=f"${self.database_url_env}")


class ColumnExpectation(_Strict):
    table: str
    column: str
    exists: bool = True
    nullable: bool | None = None
    data_type: str | None = None


class QueryExpectation(_Strict):
    """A query whose single value after the rollback must equal its value in the backup."""

    name: str
    sql: str


class RelationExpectation(_Strict):
    table: str
    column: str
    references: str  # "table.column"

    @field_validator("references")
    @classmethod
    def _table_dot_column(cls, value: str) -> str:
        if value.count(".") != 1:
            raise ValueError("must be written as table.column")
        return value


class SampleExpectation(_Strict):
    table: str
    order_by: str
    limit: int = Field(100, gt=0)


class Expectations(_Strict):
    columns: list[ColumnExpectation] = []
    tables_match_backup: list[str] = []
    queries: list[QueryExpectation] = []
    relations: list[RelationExpectation] = []
    sample: SampleExpectation | None = None


class Migration(_Strict):
    description: str = ""
    previous: str | None = None
    expect: Expectations = Expectations()


class Defaults(_Strict):
    maintenance_database: str = "postgres"
    client_binaries: str = "embedded"
    restore_keep_owners: bool = True
    strategy: StrategyName = "auto"
    in_place_safety_copy: Literal["auto", "required", "never"] = "auto"
    salvage: bool = False
    service_platform: str = "none"
    thresholds: Thresholds = Thresholds()
    surgical: SurgicalSettings = SurgicalSettings()


class Drill(_Strict):
    scenario: Path
    migration: str
    environment: str = "drill"
    users: int = Field(2000, gt=0)


class Audit(_Strict):
    """The audit trail's settings: ``signing_key_env`` names the env var holding an Ed25519 private key (PEM)."""

    signing_key_env: str | None = None

    @field_validator("signing_key_env")
    @classmethod
    def _check_env(cls, value: str | None) -> str | None:
        return None if value is None else _env_var_name(value)


class Checklists(_Strict):
    """Phase 01's checklists: where headless acknowledgements are read, and whether an open item stops the run."""

    acknowledgements_file: Path | None = None  # JSON {"checklist:team:lead-engineer-available": {"by", "at"}}
    require_acknowledgements: bool = False


class Config(_Strict):
    path: Path = Path(DEFAULT_CONFIG_NAME)
    defaults: Defaults = Defaults()
    audit: Audit = Audit()
    escalation: Escalation = Escalation()
    checklists: Checklists = Checklists()
    environments: dict[str, Environment]
    migrations: dict[str, Migration] = {}
    drill: Drill | None = None
    triggers: TriggerSettings = TriggerSettings()  # when to roll back: rollbacklib/trigger_settings.py

    @model_validator(mode="after")
    def _staging_known(self) -> "Config":
        for name, env in self.environments.items():
            if env.staging_check is not None:
                check_staging_names(name, env.staging_check, self.environments)
        return self

    def environment(self, name: str) -> "ResolvedEnvironment":
        if name not in self.environments:
            known = ", ".join(sorted(self.environments)) or "none"
            raise ConfigError(
                f"Unknown environment {name!r} in {self.path}.",
                next_action=f"use one of: {known}; or add [environments.{name}] to {self.path}.",
                step="config",
            )
        return ResolvedEnvironment(self, self.environments[name])

    def migration(self, migration_id: str) -> Migration | None:
        return self.migrations.get(migration_id)

    def all_queries(self) -> list[QueryExpectation]:
        seen: dict[str, QueryExpectation] = {}
        for migration in self.migrations.values():
            for query in migration.expect.queries:
                seen.setdefault(query.sql, query)
        return list(seen.values())


class ResolvedEnvironment:
    """An environment with the defaults filled in."""

    def __init__(self, config: Config, env: Environment):
        self.config = config
        self.raw = env
        self.name = env.name
        self.database_url_env = env.database_url_env
        self.backup_dir = env.backup_dir
        self.maintenance_database = env.maintenance_database or config.defaults.maintenance_database
        self.client_binaries = env.client_binaries or config.defaults.client_binaries
        self.restore_keep_owners = (config.defaults.restore_keep_owners if env.restore_keep_owners is None
                                    else env.restore_keep_owners)
        self.strategy = env.strategy or config.defaults.strategy
        self.protected = env.protected
        self.in_place_safety_copy = env.in_place_safety_copy or config.defaults.in_place_safety_copy
        self.salvage = config.defaults.salvage if env.salvage is None else env.salvage
        self.service_platform = (env.platform.kind if env.platform
                                 else env.service_platform or config.defaults.service_platform)
        self.platform = env.platform
        self.health, self.smoke_tests = env.health, env.smoke_tests
        self.start, self.snapshot = env.start, env.snapshot
        self.services = env.services
        self.release = env.release
        self.dependencies, self.staging_check = env.dependencies, env.staging_check
        self.surgical = env.surgical or config.defaults.surgical
        merged = config.defaults.thresholds.model_dump()
        merged.update({k: v for k, v in env.thresholds.model_dump().items() if v is not None})
        self.thresholds = Thresholds(**merged)

    def database_url(self) -> str:
        return self.raw.database_url()

    def parsed_database_url(self) -> DatabaseUrl:
        return self.raw.parsed_database_url()


def _format_validation_error(path: Path, err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"])
        lines.append(f"{path}: {key}: {problem['msg']}")
    return "\n".join(lines)


def _resolve_paths(config: Config, base: Path, data_base: Path) -> None:
    def resolve(p: Path | None, against: Path = base) -> Path | None:
        if p is None:
            return None
        p = Path(os.path.expanduser(p))
        return p if p.is_absolute() else (against / p).resolve()

    for name, env in config.environments.items():
        env.name = name
        env.backup_dir = resolve(env.backup_dir, data_base)
        if env.client_binaries not in (None, "embedded", "path"):
            env.client_binaries = str(resolve(Path(env.client_binaries)))
        if env.release and env.release.migrations_dir:
            env.release.migrations_dir = resolve(env.release.migrations_dir)
        if env.platform:
            env.platform.resolve_paths(resolve)
    if config.defaults.client_binaries not in ("embedded", "path"):
        config.defaults.client_binaries = str(resolve(Path(config.defaults.client_binaries)))
    if config.drill:
        config.drill.scenario = resolve(config.drill.scenario)
    config.checklists.acknowledgements_file = resolve(config.checklists.acknowledgements_file)


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read and validate a runbook config; ``path`` defaults to $ROLLBACK_CONFIG or ./runbook.toml."""
    if not path and not os.environ.get("ROLLBACK_CONFIG") and not Path(DEFAULT_CONFIG_NAME).exists():
        path = default_config()  # the one shipped in the package
    path = Path(path or os.environ.get("ROLLBACK_CONFIG") or DEFAULT_CONFIG_NAME).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"Config file {path} not found.",
            next_action="pass --config PATH (or set ROLLBACK_CONFIG) to the runbook.toml to use; "
            f"the package ships a default one at {default_config()}.",
            step="config",
        )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}", next_action=f"fix the syntax in {path}.",
                          step="config") from None
    try:
        config = Config.model_validate({**data, "path": path.resolve()})
    except ValidationError as err:
        raise ConfigError(
            "Invalid config:\n" + _format_validation_error(path, err),
            next_action=f"fix the key(s) named above in {path}; README.md has the config reference.",
            step="config",
        ) from None
    # The packaged default keeps its scenarios beside it, but its backups go under the working
    # directory, never into the installed package: the caller's, also in the notebook kernels,
    # which run in the run folder (run_phases hands them $ROLLBACK_WORKDIR).
    real = path.resolve()
    packaged = real == default_config().resolve()
    _resolve_paths(config, real.parent, working_directory() if packaged else real.parent)
    return config


def working_directory() -> Path:
    """$ROLLBACK_WORKDIR, or the working directory: where the default config's backups are."""
    return Path(os.environ.get(WORKDIR_ENV) or Path.cwd()).resolve()
