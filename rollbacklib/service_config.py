"""How the services come back, and what phase 01 keeps of them: the config of an environment's service probes.

Declared per environment::

    [environments.production.start]
    order = ["api-gateway", "reports-client", "static-report-server"]   # default: the order of services
    wait_healthy = ["api-gateway"]       # default: the first in the order; the next starts once it is healthy
    # health.<service> = { url = "...", attempts = 10, pause_seconds = 5 }   # default: the environment's [health]
                                                                            # for the first service waited for

    [environments.production.snapshot]   # phase 01's step service-snapshot
    metrics_url = "https://api.example.com/metrics"   # GET into capture/metrics.prom; unset: not taken
    log_lines = 1000                     # the last N log lines of each service (platform.logs)

Names in ``order``, ``wait_healthy`` and ``health`` must be services of the environment.
"""

from __future__ import annotations

from pydantic import Field

from rollbacklib.config_base import _Strict
from rollbacklib.probes import HealthCheck


class StartOrder(_Strict):
    order: list[str] = []
    wait_healthy: list[str] | None = None
    health: dict[str, HealthCheck] = {}

    def check_services(self, services: list[str]) -> None:
        """Every name given is a service of the environment; the order names each at most once."""
        for key, names in (("order", self.order), ("wait_healthy", self.wait_healthy or []),
                           ("health", list(self.health))):
            unknown = [n for n in names if n not in services]
            if unknown:
                raise ValueError(f"start.{key} names {unknown}, not among the environment's services {services}")
        if len(set(self.order)) != len(self.order):
            raise ValueError(f"start.order names a service twice: {self.order}")

    def ordered(self, services: list) -> list:
        """The services in the order they start: ``order`` first, then the rest in their configured order."""
        by_name = {s.name: s for s in services}
        return [by_name[n] for n in self.order] + [s for s in services if s.name not in self.order]

    def waited(self, services: list) -> set[str]:
        """The services whose health must pass before the next one starts (default: the first one)."""
        if self.wait_healthy is not None:
            return set(self.wait_healthy)
        first = self.ordered(services)[:1]
        return {first[0].name} if first else set()


class ServiceSnapshot(_Strict):
    metrics_url: str | None = None
    log_lines: int = Field(1000, gt=0)
    timeout_seconds: float = Field(10, gt=0)
