"""Per-environment settings of a service platform (``[environments.NAME.platform]``), validated.

``kind`` chooses the platform (``rollbacklib.platforms``); each kind has its own keys. Tokens are
given by the NAME of an environment variable (every ``*_env`` key), never by value, so the
journal's redaction (``redaction.config_secrets``) knows them. Per-service settings are tables
keyed by the service's name in ``services``::

    [environments.production.platform]
    kind = "railway"
    token_env = "RAILWAY_TOKEN"
    environment_id = "..."
    services.api-gateway = { service_id = "..." }
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Callable, ClassVar, Literal, Union

from pydantic import Field, field_validator

from rollbacklib.config_base import _env_var_name, _Strict

Resolve = Callable[[Path | None], Path | None]


class _Platform(_Strict):
    """What every platform has: how long a change may take to hold, and how often it is read back."""

    timeout_seconds: float = Field(300, gt=0)
    poll_seconds: float = Field(2, gt=0)
    requires_service_settings: ClassVar[bool] = False

    def check_services(self, names: list[str]) -> None:
        """Every service of the environment has its settings here (where the platform needs them)."""
        services = getattr(self, "services", {})
        missing = [n for n in names if n not in services] if self.requires_service_settings else []
        if missing:
            raise ValueError(f"platform.services has no entry for {', '.join(missing)} "
                             f"(every service of the environment needs one for kind {self.kind!r})")

    def resolve_paths(self, resolve: Resolve) -> None:
        """Relative paths are resolved against the config file's folder."""


class RailwayService(_Strict):
    service_id: str


class RailwaySettings(_Platform):
    kind: Literal["railway"]
    endpoint: str = "https://backboard.railway.com/graphql/v2"
    token_env: str
    environment_id: str
    redeploy_after_scale: bool = True  # a new replica count applies to the next deployment
    services: dict[str, RailwayService]
    requires_service_settings: ClassVar[bool] = True

    _check_env = field_validator("token_env")(_env_var_name)


class KubernetesService(_Strict):
    deployment: str | None = None  # default: the service's name
    container: str | None = None   # the container whose image a redeploy sets; default: the service's name


class KubernetesSettings(_Platform):
    kind: Literal["kubernetes"]
    server: str  # the API server's URL, e.g. https://10.0.0.1:6443
    namespace: str = "default"
    token_env: str
    ca_file: Path | None = None  # None: the system's trust store
    services: dict[str, KubernetesService] = {}

    _check_env = field_validator("token_env")(_env_var_name)

    def resolve_paths(self, resolve: Resolve) -> None:
        self.ca_file = resolve(self.ca_file)


class ComposeService(_Strict):
    service: str | None = None  # the compose file's service name; default: the service's name


class ComposeSettings(_Platform):
    kind: Literal["compose"]
    project: str
    files: list[Path] = Field(min_length=1)
    docker: str = "docker"  # the docker executable (a name on PATH or a path)
    services: dict[str, ComposeService] = {}

    def resolve_paths(self, resolve: Resolve) -> None:
        self.files = [resolve(f) for f in self.files]


class EnvFrom(_Strict):
    """An environment variable given to a started process, its value read from another one by name."""

    name: str
    from_env: str

    _check = field_validator("name", "from_env")(_env_var_name)


class ProcessService(_Strict):
    command: list[str] = Field(min_length=1)  # argv; ``{python}`` is this interpreter
    pid_file: Path
    health_url: str | None = None  # answers 200 when up; or
    port: int | None = None        # accepts TCP on 127.0.0.1 when up
    cwd: Path | None = None
    log_file: Path | None = None   # stdout and stderr; default: beside the pid file
    environment: list[EnvFrom] = []
    stop_timeout_seconds: float = Field(10, gt=0)  # SIGTERM, then SIGKILL after this


class ProcessSettings(_Platform):
    kind: Literal["process"]
    timeout_seconds: float = Field(30, gt=0)
    poll_seconds: float = Field(0.2, gt=0)
    services: dict[str, ProcessService]
    requires_service_settings: ClassVar[bool] = True

    def resolve_paths(self, resolve: Resolve) -> None:
        for s in self.services.values():
            s.pid_file, s.cwd, s.log_file = resolve(s.pid_file), resolve(s.cwd), resolve(s.log_file)


class ManualSettings(_Platform):
    kind: Literal["manual"]
    acknowledgements_file: Path | None = None  # headless: JSON {"<service>:<task>": {"by": ..., "at": ...}}
    instructions: dict[str, str] = {}  # per service: how a person scales it (a console URL, a command)

    def resolve_paths(self, resolve: Resolve) -> None:
        self.acknowledgements_file = resolve(self.acknowledgements_file)


PlatformSettings = Annotated[
    Union[RailwaySettings, KubernetesSettings, ComposeSettings, ProcessSettings, ManualSettings],
    Field(discriminator="kind"),
]
