"""What every service platform shares: the wait until a change holds, and the errors it raises.

A platform changes a service (``scale``, ``redeploy``, ``maintenance``) and reads it back
(``replicas``, ``logs``). Every change is verified: ``wait_for`` reads the state back every
``poll_seconds`` until it holds or ``timeout_seconds`` pass; a service that never gets there
fails the step with the seed's escalation for a technical problem during the rollback (L1).
A platform that has no such thing (maintenance mode on most) says so: ``Unsupported``.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from rollbacklib.config import Service
from rollbacklib.errors import ConfigError, StepError

TECHNICAL = "L1"  # the seed's level for a technical problem during the rollback


class Unsupported(StepError):
    """The platform has no such operation; the runbook never pretends it did it."""


def token_from(env_name: str, platform: str) -> str:
    """The token in the environment variable the config names; a missing one is a ``ConfigError`` naming it."""
    value = os.environ.get(env_name)
    if not value:
        raise ConfigError(
            f"Environment variable {env_name} is not set (the {platform} platform reads its token from it).",
            next_action=f"export {env_name}=... in the shell that runs the runbook; the value is read at run "
                        "time and never written to a notebook, a report or a log.",
            step="config")
    return value


def unsupported(platform: str, what: str, instead: str) -> Unsupported:
    return Unsupported(f"The {platform} platform has no {what}: nothing was changed.",
                       next_action=instead, step="platform")


class PlatformBase:
    """The verification loop and the evidence every platform's ``scale`` returns."""

    name = "?"

    def __init__(self, settings=None):
        self.settings = settings
        self.timeout = getattr(settings, "timeout_seconds", 300)
        self.poll = getattr(settings, "poll_seconds", 2)

    def wait_for(self, service: Service, what: str, read: Callable[[], object], holds: Callable[[object], bool],
                 *, timeout: float | None = None) -> tuple[object, float, int]:
        """Read the state back until it holds; return (the last state, seconds waited, reads made)."""
        timeout = self.timeout if timeout is None else timeout
        started = time.monotonic()
        reads = 0
        while True:
            state = read()
            reads += 1
            waited = time.monotonic() - started
            if holds(state):
                return state, round(waited, 3), reads
            if waited >= timeout:
                raise StepError(
                    f"{service.name} did not reach {what} on the {self.name} platform within {timeout:g} s.",
                    next_action=f"look at {service.name} on the platform (its logs, its events) and bring it to "
                                f"{what} by hand, or raise the platform's timeout_seconds; the run stops here.",
                    expected=what, found=state, step="platform", escalate=TECHNICAL)
            time.sleep(min(self.poll, max(timeout - waited, 0.01)))

    def evidence(self, service: Service, target: int, before: object, after: object, waited: float,
                 reads: int, **extra) -> dict:
        return {"service": service.name, "platform": self.name, "target": target, "replicas_before": before,
                "replicas": after, "waited_seconds": waited, "reads": reads, **extra}

    def maintenance(self, service: Service, on: bool) -> dict:
        raise unsupported(self.name, "maintenance mode",
                          f"turn maintenance {'on' if on else 'off'} for {service.name} by hand (a maintenance "
                          "page at the proxy or the load balancer), or scale it to 0 instead")


def http_call(client, method: str, url: str, *, platform: str, **kwargs):
    """One HTTP request to a platform's API; a transport error or a non-2xx answer is a ``StepError`` (L1)."""
    import httpx

    try:
        response = client.request(method, url, **kwargs)
    except httpx.HTTPError as err:
        raise StepError(f"The {platform} API did not answer {method} {url}: {type(err).__name__}: {err}",
                        next_action=f"check that {url} is reachable from this machine and retry the step.",
                        step="platform", escalate=TECHNICAL) from None
    if response.status_code >= 300:
        raise StepError(f"The {platform} API refused {method} {url}: HTTP {response.status_code}.",
                        next_action="check the token's permissions and the ids in the platform settings.",
                        found=response.text[:500], step="platform", escalate=TECHNICAL)
    return response


def run_argv(argv: list[str], *, platform: str, timeout: float = 120) -> str:
    """Run a platform's CLI verbatim; a missing program, a timeout or a non-zero exit is a ``StepError`` (L1)."""
    import shlex
    import subprocess

    shown = shlex.join(argv)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise StepError(f"{argv[0]} is not installed or not on PATH (the {platform} platform runs it).",
                        next_action=f"install it, or set the platform's executable in its settings; then: {shown}",
                        step="platform", escalate=TECHNICAL) from None
    except subprocess.TimeoutExpired:
        raise StepError(f"{shown} did not finish within {timeout:g} s.", next_action="see why, and run it by hand.",
                        step="platform", escalate=TECHNICAL) from None
    if done.returncode != 0:
        raise StepError(f"{shown} failed (exit {done.returncode}).", next_action="read its error below and fix it.",
                        found=(done.stderr or done.stdout)[-2000:], step="platform", escalate=TECHNICAL)
    return done.stdout
