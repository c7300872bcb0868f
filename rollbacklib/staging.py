"""The seed's step 3.3, staging first: the previous release on staging, its health and login checked, before the gate.

Declared on the environment being rolled back::

    [environments.production.staging_check]
    environment = "staging"          # an environment of runbook.toml: its platform, services, health, smoke tests

    [environments.production.release]
    previous = "3f2c1e0"             # the release to go back to (a commit, an image): what staging gets

``release`` defaults to the rolled-back environment's ``[release] previous``; ``None`` there
redeploys staging's current release again (the platform's redeploy). A failure stops the run
before the gate: production was not touched (exit 3, aborted).
"""

from __future__ import annotations

from rollbacklib.config_base import _Strict


class StagingCheck(_Strict):
    environment: str
    release: str | None = None  # default: the rolled-back environment's [release] previous
    services: list[str] | None = None  # default: every service of the staging environment


def check_staging_names(name: str, check: StagingCheck, environments: dict) -> None:
    """The staging environment exists, is not the one rolled back, and has the services named."""
    if check.environment == name:
        raise ValueError(f"environments.{name}.staging_check names {name!r} itself: name its staging environment")
    if check.environment not in environments:
        raise ValueError(f"environments.{name}.staging_check names environment {check.environment!r}, which is not "
                         f"in this file (known: {', '.join(sorted(environments))})")
    services = [s.name for s in environments[check.environment].services]
    unknown = sorted(set(check.services or []) - set(services))
    if unknown:
        raise ValueError(f"environments.{name}.staging_check.services names {unknown}, not services of "
                         f"{check.environment!r} ({services})")
