"""Service platforms: scale, read back, redeploy, maintenance mode and logs of the apps that use the database.

One module per platform, registered by name in ``PLATFORMS``; the environment chooses one
(``service_platform``, or ``kind`` of its ``[environments.NAME.platform]`` table, whose other
keys are that platform's settings: ``rollbacklib.platform_settings``).

* ``none``: nothing is scaled; the run says which services a person must stop and start;
* ``railway``: Railway's public GraphQL API;
* ``kubernetes``: a Deployment's ``scale`` subresource through the API server;
* ``compose``: the ``docker compose`` CLI;
* ``process``: local processes the runbook starts and stops (the drill's);
* ``manual``: a person does it and acknowledges it, typed or from an acknowledgements file.

``describe`` renders exactly what ``scale`` will do (method, URL, operation and variables, or
argv; never a token), so the plan shows the calls that run. Every change is read back until
it holds, with a timeout (``base.PlatformBase.wait_for``).
"""

from __future__ import annotations

from typing import Protocol

from rollbacklib.config import Service
from rollbacklib.errors import ConfigError
from rollbacklib.platforms.compose import ComposePlatform
from rollbacklib.platforms.kubernetes import KubernetesPlatform
from rollbacklib.platforms.manual import ManualPlatform
from rollbacklib.platforms.none import NoServicePlatform
from rollbacklib.platforms.process import ProcessPlatform
from rollbacklib.platforms.railway import RailwayPlatform
from rollbacklib.steps import Action


class ServicePlatform(Protocol):
    name: str

    def scale(self, service: Service, replicas: int) -> dict:
        """Scale ``service`` to ``replicas``, wait until the platform reports it; return the evidence."""

    def describe(self, service: Service, replicas: int) -> Action:
        """The call ``scale`` will make, exactly (kind ``platform``), or a person's task (kind ``manual``)."""

    def replicas(self, service: Service) -> int:
        """How many replicas of ``service`` run (are ready) now."""

    def redeploy(self, service: Service, release: str | None = None) -> dict:
        """Deploy ``release`` (a commit, an image; None: the current one again) and wait until it runs."""

    def maintenance(self, service: Service, on: bool) -> dict:
        """Maintenance mode on or off; ``base.Unsupported`` where the platform has none."""

    def logs(self, service: Service, lines: int = 100) -> list[str]:
        """The last ``lines`` log lines of ``service``."""


PLATFORMS: dict[str, type] = {p.name: p for p in (NoServicePlatform, RailwayPlatform, KubernetesPlatform,
                                                   ComposePlatform, ProcessPlatform, ManualPlatform)}
NEEDS_SETTINGS = ("railway", "kubernetes", "compose", "process")


def platform_for(env, **options) -> ServicePlatform:
    """The platform of an environment (its ``service_platform`` and ``platform`` settings), or by bare name.

    ``options`` go to the platform (``manual`` takes ``acknowledgements``, a file, and ``ask``).
    """
    name = env if isinstance(env, str) else env.service_platform
    settings = None if isinstance(env, str) else getattr(env, "platform", None)
    if name not in PLATFORMS:
        raise ConfigError(
            f"Unknown service platform {name!r}.",
            next_action=f"set service_platform to one of: {', '.join(sorted(PLATFORMS))}.",
            step="config",
        )
    if settings is None and name in NEEDS_SETTINGS:
        where = f"[environments.{env.name}.platform]" if not isinstance(env, str) else "[environments.NAME.platform]"
        raise ConfigError(f"Service platform {name!r} needs its settings.",
                          next_action=f"add {where} with kind = {name!r} and its keys (README: service platforms).",
                          step="config")
    return PLATFORMS[name](settings, **options)
