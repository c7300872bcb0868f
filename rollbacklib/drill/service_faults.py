"""Faults on the service side of the drill: the scenario's apps run (as with ``rollback drill --services``) and
one of them misbehaves for real.

``health-never-passes``: the gateway reads its database URL from a variable of its own. Before the
rollback it names the drill's database, and the gateway serves (login fails: the incident). The
runbook's run is given that variable naming a database that does not exist, as when a service's
secret is rotated while it is down: the gateway that phase 04 starts again listens on its port (the
platform sees it back) but its ``/health`` answers 503 ``database: disconnected``, every time.
``start-services`` waits for the gateway's health with its retries, fails with the seed's escalation
(L1) and starts nothing after it; the database's rollback itself stands (exit 5): run.json, the terminal
and the report say so and give no database way back (``rollbacklib.rollback_stands``).
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

from psycopg.conninfo import make_conninfo

from rollbacklib.steps import StepName

FaultDrill = Any  # rollbacklib.drill.faults.FaultDrill, named without importing the module that runs the faults

GATEWAY = "api-gateway"
GATEWAY_URL_ENV = "ROLLBACK_DRILL_GATEWAY_DATABASE_URL"
HEALTH_ATTEMPTS = 5  # the seed's retries, fewer of them: 5 attempts 1 s apart, so the drill takes seconds


def _gateway_on_its_own_variable(env) -> None:
    """The gateway connects through ``GATEWAY_URL_ENV``; the platform counts it back once it listens on its port."""
    own = env.platform.services[GATEWAY]
    at = own.command.index("--database-url-env")
    own.command[at + 1] = GATEWAY_URL_ENV
    own.port, own.health_url = int(own.health_url.rsplit(":", 1)[1].split("/", 1)[0]), None
    env.health.attempts = HEALTH_ATTEMPTS


def health_never_passes(drill: "FaultDrill") -> int:
    from rollbacklib.config import load_config
    from rollbacklib.drill.services import PASSWORD_ENV, DrillServices

    config = load_config(drill.config_path)
    os.environ.setdefault(PASSWORD_ENV, secrets.token_urlsafe(18))  # the smoke tests' user (never reached here)
    os.environ[GATEWAY_URL_ENV] = drill.url
    drill.say(f"  starting the services (process platform); {GATEWAY} connects through ${GATEWAY_URL_ENV}")
    apps = DrillServices.start(config, drill.staged.environment, config.drill.scenario, drill.staged.folder / "services",
                               lambda line: drill.say("  " + line), adjust=_gateway_on_its_own_variable)
    try:
        gone = make_conninfo(drill.url, dbname=drill.database + "_rotated")
        drill.say(f"  the run's ${GATEWAY_URL_ENV} names {drill.database}_rotated, a database that does not exist: "
                  f"the {GATEWAY} phase 04 starts listens, but its /health answers 503")
        drill.say(f"$ rollback run ... --run-id {drill.run_id} --yes (config {apps.config})")
        command = drill.command(drill.run_args("--yes", config=apps.config), {**os.environ, GATEWAY_URL_ENV: gone})
        code = command.run()
        drill.say(f"  exit {code}")
        env = load_config(apps.config).environment(drill.staged.environment)
        from rollbacklib.platforms import platform_for

        platform = platform_for(env)
        drill.evidence["replicas"] = {s.name: platform.replicas(s) for s in env.services}
        drill.evidence["health_url"] = env.health.url
        return code
    finally:
        apps.stop()
        os.environ.pop(GATEWAY_URL_ENV, None)


def judge_health_never_passes(drill: "FaultDrill", _code: int) -> None:
    from rollbacklib.journal import read_events
    from rollbacklib.summary import RUN_SUMMARY

    replicas = drill.evidence.get("replicas", {})
    others = {name: n for name, n in replicas.items() if name != GATEWAY}
    drill.verdict.check(replicas.get(GATEWAY) == 1, f"{GATEWAY} came back (the platform counted it: {replicas})")
    drill.verdict.check(bool(others) and not any(others.values()),
                        f"no service after {GATEWAY} was started while it was unhealthy ({others})")
    summary_path = drill.run_dir / RUN_SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    error = summary.get("error") or {}
    drill.verdict.check(error.get("step") == StepName.START_SERVICES and error.get("escalate") == "L1",
                        f"run.json names the step and the seed's escalation (step {error.get('step')!r}, "
                        f"escalate {error.get('escalate')!r}; expected {StepName.START_SERVICES!r}, 'L1')")
    drill.verdict.check(summary.get("status") == "failed" and summary.get("exit_code") == 5,
                        f"run.json says failed, exit 5 (found {summary.get('status')}, {summary.get('exit_code')})")
    stands = summary.get("rollback_stands") or {}
    drill.verdict.check(not summary.get("way_back") and stands.get("database") == drill.database,
                        f"run.json gives no database way back and says the rollback of {drill.database} stands "
                        f"(way_back {summary.get('way_back')}, rollback_stands {bool(stands)})")
    drill.verdict.check("The database rollback stands" in drill.last_output and "The way back" not in drill.last_output,
                        "the terminal says the database rollback stands, and prints no way back")
    said = f"{GATEWAY} is up on the process platform but its health check never passed"
    drill.verdict.check(said in drill.last_output and "(L1)" in drill.last_output,
                        "the terminal says the gateway never became healthy, and to escalate to the on-call engineer (L1)")
    report = drill.run_dir / "report.html"
    page = report.read_text() if report.exists() else ""
    drill.verdict.check(said in page and "<strong>Escalation:</strong> L1 (On-Call Engineer)" in page,
                        "report.html says it, with the seed's escalation: L1 (On-Call Engineer)")
    failed = [e for e in read_events(drill.run_dir) if e["step"] == StepName.START_SERVICES and e["status"] == "failed"]
    tries = failed[-1]["evidence"].get("found") if failed else None
    drill.verdict.check(isinstance(tries, list) and len(tries) == HEALTH_ATTEMPTS
                        and all(t.get("status") == 503 for t in tries),
                        f"the journal holds the {HEALTH_ATTEMPTS} health attempts, each HTTP 503 "
                        f"({[t.get('status') for t in tries] if isinstance(tries, list) else tries})")


# --- way-back-with-services ---------------------------------------------------------------------

def way_back_with_services(drill: "FaultDrill") -> int:
    """Killed mid-window with the services down: the database's way back, then ``rollback services-back``, then
    the services serve the original again (the incident, login 500); then ``rollback resume`` rolls back for good."""
    from rollbacklib.config import load_config
    from rollbacklib.drill.injection import Trigger, run_way_back
    from rollbacklib.drill.services import PASSWORD_ENV, DrillServices
    from rollbacklib.platforms import platform_for
    from rollbacklib.summary import write_summary

    config = load_config(drill.config_path)
    os.environ.setdefault(PASSWORD_ENV, secrets.token_urlsafe(18))
    drill.say("  starting the services (process platform), with traffic")
    apps = DrillServices.start(config, drill.staged.environment, config.drill.scenario, drill.staged.folder / "services",
                               lambda line: drill.say("  " + line))
    drill.config_path = apps.config  # the run, the resume and services-back all act on these services
    try:
        command, _ = drill.strike(Trigger(StepName.SWAP_KEEP, ("ok",)))
        command.wait()
        env = load_config(apps.config).environment(drill.staged.environment)
        platform = platform_for(env)
        replicas = lambda: {s.name: platform.replicas(s) for s in env.services}  # noqa: E731
        drill.verdict.check(not any(replicas().values()), f"the services are down after the kill ({replicas()})")
        summary = write_summary(drill.run_dir)
        statements, services = summary.get("way_back") or [], summary.get("services_way_back") or []
        drill.say("  the way back (run.json): " + " ".join(s.rstrip(";") + ";" for s in statements))
        drill.say(f"  then: {summary.get('services_way_back_command')} for "
                  + ", ".join(f"{i['service']} ({i['replicas']} -> {i['target']})" for i in services))
        drill.verdict.check(sorted(i["service"] for i in services) == sorted(s.name for s in env.services)
                            and all(i["replicas"] == 0 and i["target"] == 1 for i in services),
                            "run.json lists every service the run stopped, at 0 now and 1 before")
        early = drill.command(["services-back", str(drill.run_dir), "--config", str(apps.config)]).run()
        drill.verdict.check(early == 4 and not any(replicas().values()),
                            f"services-back before the database's way back is refused and starts nothing (exit {early})")
        proc = run_way_back(statements, drill.admin_url)
        drill.verdict.check(proc.returncode == 0, "the database's way back ran to its end under psql ON_ERROR_STOP"
                            + ("" if proc.returncode == 0 else f": {proc.stderr.strip()}"))
        back = drill.command(["services-back", str(drill.run_dir), "--config", str(apps.config)]).run()
        after_way_back = replicas()
        login = apps.login_status()
        drill.say(f"  services-back: exit {back}; replicas {after_way_back}; login: HTTP {login}")
        drill.verdict.check(back == 0 and all(n == 1 for n in after_way_back.values()),
                            f"services-back brought every service back (exit {back}, {after_way_back})")
        drill.verdict.check(login == 500, f"the services serve the original again: login answers 500, the incident as "
                            f"before the run (HTTP {login})")
        drill.take_reference()
        code = drill.resume()
        drill.evidence["login_after_resume"] = apps.login_status()
        drill.say(f"  login after the resume: HTTP {drill.evidence['login_after_resume']}")
        drill.verdict.check(drill.evidence["login_after_resume"] == 200 and all(n == 1 for n in replicas().values()),
                            f"after the resume the services serve the restored database: login answers 200 "
                            f"({drill.evidence['login_after_resume']}, {replicas()})")
        return code
    finally:
        apps.stop()
