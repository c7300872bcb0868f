"""No platform configured: nothing is scaled; the journal says what was left to a person."""

from __future__ import annotations

from rollbacklib.config import Service
from rollbacklib.platforms.base import PlatformBase, unsupported
from rollbacklib.steps import Action


class NoServicePlatform(PlatformBase):
    name = "none"

    def scale(self, service: Service, replicas: int) -> dict:
        return {"service": service.name, "replicas": replicas, "skipped": True,
                "detail": "no service platform configured: scale it by hand"}

    def describe(self, service: Service, replicas: int) -> Action:
        return Action("manual", service.name, f"scale {service.name} to {replicas} replica(s) by hand: "
                      "no service platform is configured")

    def replicas(self, service: Service) -> int:
        raise unsupported(self.name, "replica count to read", f"look at {service.name} where it runs")

    def redeploy(self, service: Service, release: str | None = None) -> dict:
        raise unsupported(self.name, "deployments", f"redeploy {service.name} by hand")

    def logs(self, service: Service, lines: int = 100) -> list[str]:
        raise unsupported(self.name, "logs", f"read {service.name}'s logs where it runs")
