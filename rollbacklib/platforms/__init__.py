"""The seam for service platforms (Railway and others): scale the apps that use the database.

Platforms are small classes in a registry, chosen by name in the config. The only one here
is ``none``: the runbook then says which services a person must stop and start by hand.
"""

from __future__ import annotations

from typing import Protocol

from rollbacklib.config import Service
from rollbacklib.errors import ConfigError
from rollbacklib.steps import Action


class ServicePlatform(Protocol):
    name: str

    def scale(self, service: Service, replicas: int) -> dict:
        """Scale ``service`` to ``replicas``; return evidence of what the platform reports."""

    def describe(self, service: Service, replicas: int) -> Action:
        """The call ``scale`` will make, exactly (kind ``platform``), or a person's task (kind ``manual``)."""


class NoServicePlatform:
    """No platform configured: nothing is scaled; the journal says what was left to a person."""

    name = "none"

    def scale(self, service: Service, replicas: int) -> dict:
        return {"service": service.name, "replicas": replicas, "skipped": True,
                "detail": "no service platform configured: scale it by hand"}

    def describe(self, service: Service, replicas: int) -> Action:
        return Action("manual", service.name, f"scale {service.name} to {replicas} replica(s) by hand: "
                      "no service platform is configured")


PLATFORMS: dict[str, type] = {"none": NoServicePlatform}


def platform_for(name: str) -> ServicePlatform:
    try:
        return PLATFORMS[name]()
    except KeyError:
        raise ConfigError(
            f"Unknown service platform {name!r}.",
            next_action=f"set service_platform to one of: {', '.join(sorted(PLATFORMS))}.",
            step="config",
        ) from None
