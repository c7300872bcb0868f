"""Phase 02's ``staging-check``, before the gate: the seed's step 3.3 (``rollbacklib.staging`` has the config).

Where the environment names a staging environment (``[environments.NAME.staging_check]``), the
previous release (``release``, else ``[environments.NAME.release] previous``) is deployed to each
staging service on staging's own platform (``platform_for(staging).redeploy``), then staging's
health check (with its retries) and smoke tests run. A failure stops the run before the gate:
production was not touched, so the run is **aborted, exit 3**; the message says what to do.
The staging deploys are journaled as ``info`` with ``staging: true``, never as ``changed``: they
are not changes to the database being rolled back. Not configured: journaled, and nothing runs.
"""

from __future__ import annotations

import pandas as pd

from rollbacklib.dispatch import checked_before, dispatch
from rollbacklib.errors import StepError
from rollbacklib.phases.service_probes import describe_health, describe_smoke_test
from rollbacklib.platforms import platform_for
from rollbacklib.probes import check_health, run_smoke_tests
from rollbacklib.run import RunContext
from rollbacklib.steps import Action, Phase, Step, StepName

NOT_CONFIGURED = "no staging check configured"


def release_of(ctx: RunContext) -> str | None:
    check = ctx.env.staging_check
    return check.release or (ctx.env.release.previous if ctx.env.release else None)


def staging_of(ctx: RunContext):
    """The staging environment (resolved) and the services the check deploys to."""
    check = ctx.env.staging_check
    staging = ctx.config.environment(check.environment)
    names = check.services if check.services is not None else [s.name for s in staging.services]
    return staging, [s for s in staging.services if s.name in names]


def staging_step(ctx: RunContext) -> Step:
    if ctx.env.staging_check is None:
        return Step(StepName.STAGING_CHECK, Phase.EXECUTE, f"({NOT_CONFIGURED})",
                    f"the seed's step 3.3 (the previous release on staging first): {NOT_CONFIGURED} for "
                    f"{ctx.env.name}", (), postcondition="nothing to check")
    staging, services = staging_of(ctx)
    release = release_of(ctx)
    platform = platform_for(staging)
    what = release or "the current release again"
    actions = [Action("platform", s.name, f"{staging.name}: redeploy {what} of {s.name} on the {platform.name} "
                      "platform and wait until it runs") for s in services]
    if staging.health:
        actions.append(Action("http", staging.health.url, f"{staging.name}: " + describe_health(staging.health)))
    actions += [Action("http", t.name, f"{staging.name}: " + describe_smoke_test(t)) for t in staging.smoke_tests]
    return Step(StepName.STAGING_CHECK, Phase.EXECUTE, staging.name,
                f"the seed's step 3.3: {what} on {staging.name} first, its health and smoke tests, before the gate "
                "(production is not touched)", tuple(actions),
                postcondition=f"{staging.name} runs {what} and passes its health check and smoke tests")


def check_staging(ctx: RunContext) -> pd.DataFrame | None:
    return dispatch(ctx, StepName.STAGING_CHECK, _check, postcondition=checked_before)


def _check(ctx: RunContext, step: Step) -> pd.DataFrame:
    if ctx.env.staging_check is None:
        ctx.record(step.name, "info", f"{NOT_CONFIGURED} ([environments.{ctx.env.name}.staging_check]): skipped")
        return pd.DataFrame([{"staging check": NOT_CONFIGURED}])
    staging, services = staging_of(ctx)
    release = release_of(ctx)
    platform = platform_for(staging)
    rows = []
    try:
        for service in services:
            evidence = platform.redeploy(service, release)
            ctx.record(step.name, "info", f"{staging.name}: {service.name} redeployed ({release or 'current release'})",
                       staging=True, service=service.name, release=release, evidence=evidence)
            rows.append({"check": f"redeploy {service.name}", "ok": True, "release": release})
        if staging.health:
            tries = check_health(staging.health)
            ctx.record(step.name, "info", f"{staging.name} healthy after {len(tries)} attempt(s)", staging=True,
                       url=staging.health.url, attempts=tries)
            rows.append({"check": "health", "ok": True, "attempts": len(tries)})
        if staging.smoke_tests:
            tests = run_smoke_tests(staging.smoke_tests)
            ctx.record(step.name, "info", f"{staging.name}: {len(tests)} smoke test(s) passed", staging=True,
                       tests=tests)
            rows += [{"check": f"smoke {t['name']}", "ok": True, "status": t["status"]} for t in tests]
    except StepError as err:  # a deploy that never ran (or the platform cannot), staging unhealthy, a smoke test
        err.message = (f"The staging check failed on {staging.name} ({release or 'the current release'}): "
                       f"{err.message} Nothing in production was changed; the run stops before the gate.")
        err.next_action = (f"do not roll production back with this release yet: read {staging.name}'s logs, fix the "
                           f"release or the staging environment, then run 02_execute again (resume). If the "
                           f"rollback cannot wait, the lead may remove [environments.{ctx.env.name}.staging_check] "
                           "and approve without it, knowingly.")
        err.step, err.escalate = step.name, "L1"
        raise
    if not staging.health and not staging.smoke_tests:
        ctx.record(step.name, "info", f"{staging.name} has no [health] and no smoke tests: only the redeploy was "
                   "checked (the platform's read-back)")
    return pd.DataFrame(rows)
