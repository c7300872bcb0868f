"""Phase 04's probes: the services back in order, then their health and the smoke tests, each a step.

* ``start-services``: the services start in the configured order (``[environments.NAME.start]``;
  default: the order of ``services``). A service waited for (default: the first, the gateway)
  must pass its health check before the next one starts; one that never does fails the step
  (L1) and the rest are not started.
* ``service-health``: the environment's ``[health]`` check with its retries (the seed's 10
  attempts 5 s apart).
* ``smoke-tests``: the configured smoke tests in order (login, token, protected endpoint); a
  failure escalates (L1) and says what to do.

Every request is in the plan as method and URL (never a password or an extracted token); each
step is verified against the services afterwards (replicas read back, the health URL again).
"""

from __future__ import annotations

import json

import pandas as pd

from rollbacklib.checks import Check
from rollbacklib.dispatch import checked_before, dispatch
from rollbacklib.errors import StepError
from rollbacklib.phases import dependency_probes
from rollbacklib.platforms import platform_for
from rollbacklib.probes import HealthCheck, SmokeTest, check_health, run_smoke_tests
from rollbacklib.run import RunContext
from rollbacklib.steps import Action, Phase, Step, StepName

PHASE = Phase.RESTORE_SERVICE
TECHNICAL = "L1"  # the seed's level for a technical problem during the rollback


# --- what each request is, as the plan shows it -------------------------------------------------

def describe_health(check: HealthCheck) -> str:
    expected = f"HTTP {check.expect_status}" + (f" with {json.dumps(check.expect_json)}" if check.expect_json else "")
    return (f"GET {check.url} until it answers {expected}: up to {check.attempts} attempt(s) "
            f"{check.pause_seconds:g} s apart")


def describe_smoke_test(test: SmokeTest) -> str:
    """The request a smoke test makes, with its templates as written: ``{password}`` is the env var's, never its value."""
    text = f"{test.method} {test.url}"
    if test.json_body is not None:
        text += f" JSON {json.dumps(test.json_body)}"
    if test.password_env:
        text += f" ({{password}} from ${test.password_env})"
    if test.bearer:
        text += f" Authorization: Bearer {{{test.bearer}}}"
    text += f"; expects HTTP {test.expect_status}"
    if test.extract:
        text += "; keeps " + ", ".join(sorted(test.extract)) + " for the next tests (never shown)"
    return text


def waited_health(ctx: RunContext, name: str) -> HealthCheck | None:
    """The check a service waited for must pass: its own (``start.health``), else the environment's for the first."""
    start = ctx.env.start
    if name in start.health:
        return start.health[name]
    ordered = [s.name for s in start.ordered(ctx.env.services) if s.name in start.waited(ctx.env.services)]
    return ctx.env.health if ordered and ordered[0] == name else None


# --- the plan -----------------------------------------------------------------------------------

def start_actions(ctx: RunContext) -> list[Action]:
    """Each service's start, in order, each waited-for one followed by its health check."""
    platform = platform_for(ctx.env)
    waited = ctx.env.start.waited(ctx.env.services)
    actions = []
    for service in ctx.env.start.ordered(ctx.env.services):
        actions.append(platform.describe(service, service.replicas))
        if service.name not in waited or platform.name == "none":
            continue
        check = waited_health(ctx, service.name)
        actions.append(Action("http", service.name, "before the next service starts: " + describe_health(check))
                       if check else Action("wait", service.name, "before the next service starts: the platform "
                                            "reports it ready (no health check configured for it)"))
    return actions


def plan_steps(ctx: RunContext) -> list[Step]:
    starts = tuple(start_actions(ctx))
    health, tests = ctx.env.health, ctx.env.smoke_tests
    order = " → ".join(s.name for s in ctx.env.start.ordered(ctx.env.services)) or "no services"
    return [
        Step(StepName.START_SERVICES, PHASE, ctx.env.service_platform, f"scale the services back, in order ({order})",
             starts, destructive=any(a.kind == "platform" for a in starts), requires=(StepName.VALIDATION,),
             postcondition="the platform reports the configured replicas of every service"),
        dependency_probes.after_step(ctx),
        Step(StepName.SERVICE_HEALTH, PHASE, health.url if health else "(no health check configured)",
             "the environment's health check, with its retries",
             (Action("http", health.url, describe_health(health)),) if health else (),
             requires=(StepName.START_SERVICES,), postcondition="the health URL answers as expected"),
        Step(StepName.SMOKE_TESTS, PHASE, ", ".join(t.name for t in tests) or "(no smoke tests configured)",
             "the configured smoke tests, in order; a failure escalates (L1)",
             tuple(Action("http", t.name, describe_smoke_test(t)) for t in tests),
             requires=(StepName.SERVICE_HEALTH,), postcondition="every smoke test answered as expected"),
    ]


# --- start-services, in order ----------------------------------------------------------------------

def start_in_order(ctx: RunContext, step: Step) -> pd.DataFrame:
    """Start each service in order; a service waited for must be healthy before the next one starts."""
    platform = platform_for(ctx.env)
    ordered = ctx.env.start.ordered(ctx.env.services)
    if platform.name == "none":
        ctx.record(step.name, "info", "no service platform configured: start the services by hand, in this order",
                   services=[{"name": s.name, "replicas": s.replicas} for s in ordered])
        return pd.DataFrame([{"service": s.name, "replicas": s.replicas, "by": "hand"} for s in ordered]
                            or [{"services": "none configured for this environment"}])
    waited = ctx.env.start.waited(ctx.env.services)
    done: list[dict] = []
    for index, service in enumerate(ordered):
        done.append(platform.scale(service, service.replicas))
        rest = [s.name for s in ordered[index + 1:]]
        ctx.record(step.name, "changed", f"{service.name} started ({index + 1}/{len(ordered)})", service=service.name,
                   services=done + [{"service": n, "skipped": True, "detail": "not started yet"} for n in rest])
        if service.name in waited:
            _wait_healthy(ctx, step, service.name, rest, platform.name)
    return pd.DataFrame(done)


def _wait_healthy(ctx: RunContext, step: Step, name: str, rest: list[str], platform: str) -> None:
    check = waited_health(ctx, name)
    if check is None:
        ctx.record(step.name, "info", f"{name}: no health check configured for it; the {platform} platform's "
                   "read-back is what was waited for")
        return
    try:
        tries = check_health(check)
    except StepError as err:
        err.message = (f"{name} is up on the {platform} platform but its health check never passed"
                       + (f"; {', '.join(rest)} not started" if rest else "") + f". {err.message}")
        err.next_action = (f"read {name}'s logs (on the platform; capture/logs/ has those from before the rollback), "
                           f"fix what keeps it unhealthy (its configuration; then restart it on the platform), then "
                           f"resume the run: start-services starts the rest in order. Escalate to the on-call "
                           f"engineer (L1) if it does not come up.")
        err.step, err.escalate = step.name, TECHNICAL
        raise
    ctx.record(step.name, "info", f"{name} healthy after {len(tries)} attempt(s): the next service may start",
               service=name, url=check.url, attempts=tries)


def services_up(ctx: RunContext, step: Step) -> Check:
    """The postcondition of start-services, read from the platform now."""
    platform = platform_for(ctx.env)
    if platform.name == "none":
        return Check("no service platform: a person starts the services", True, "by hand", "not readable")
    wanted = {s.name: s.replicas for s in ctx.env.services}
    found = {s.name: platform.replicas(s) for s in ctx.env.services}
    return Check("the platform reports the configured replicas of every service", found == wanted, wanted, found)


def start_services(ctx: RunContext) -> pd.DataFrame:
    return dispatch(ctx, StepName.START_SERVICES, start_in_order, postcondition=services_up)


# --- service-health and smoke-tests ------------------------------------------------------------------

def service_health(ctx: RunContext) -> pd.DataFrame:
    """The environment's health check with its retries (the seed's 10 attempts 5 s apart)."""
    return dispatch(ctx, StepName.SERVICE_HEALTH, _service_health, postcondition=_healthy_now)


def _service_health(ctx: RunContext, step: Step) -> pd.DataFrame:
    check = ctx.env.health
    if check is None:
        ctx.record(step.name, "info", f"no [environments.{ctx.env.name}.health] configured: the services' health "
                   "was not checked")
        return pd.DataFrame([{"health": "not configured"}])
    try:
        tries = check_health(check)
    except StepError as err:
        err.step, err.escalate = step.name, TECHNICAL
        err.next_action = (f"the services are up but {check.url} is not healthy: read the service's logs, fix it, "
                           "then run this step again (or resume). The attempts are in this error's 'found'.")
        raise
    ctx.record(step.name, "info", f"healthy after {len(tries)} attempt(s)", url=check.url, attempts=tries)
    return pd.DataFrame(tries)


def _healthy_now(ctx: RunContext, step: Step) -> Check:
    check = ctx.env.health
    if check is None:
        return Check("no health check configured", True)
    try:
        tries = check_health(check.model_copy(update={"attempts": 1}))
    except StepError as err:
        return Check(f"{check.url} answers as expected now", False, check.expect_status, err.found)
    return Check(f"{check.url} answers as expected now", True, check.expect_status, tries[-1].get("status"))


def smoke_tests(ctx: RunContext) -> pd.DataFrame:
    """The configured smoke tests in order; the first failure raises with L1 and what to do."""
    return dispatch(ctx, StepName.SMOKE_TESTS, _smoke_tests, postcondition=checked_before)


def _smoke_tests(ctx: RunContext, step: Step) -> pd.DataFrame:
    tests = ctx.env.smoke_tests
    if not tests:
        ctx.record(step.name, "info", f"no [[environments.{ctx.env.name}.smoke_tests]] configured: not run")
        return pd.DataFrame([{"smoke tests": "not configured"}])
    try:
        evidence = run_smoke_tests(tests)
    except StepError as err:
        err.step, err.escalate = step.name, TECHNICAL
        raise
    ctx.record(step.name, "info", f"{len(evidence)} smoke test(s) passed", tests=evidence)
    return pd.DataFrame(evidence)
