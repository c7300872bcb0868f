"""The seed plan's post-rollback checklist, with what this run proved ticked and the rest left for people.

Each item is ``proved`` (the evidence says which checks or steps), ``failed``, ``not reached``
(the run stopped before the step that proves it) or ``for people`` (the run cannot know:
login, CPU, the status page ...). Items are matched to the validation checks by the names the
checks carry (``rollbacklib.phases.validate``), so any migration's configured checks fit.
"""

from __future__ import annotations

import json
import re
from typing import Callable

from rollbacklib.report import POSTMORTEM_NAME
from rollbacklib.report import communication as communication_groups
from rollbacklib.report.evidence import Evidence
from rollbacklib.metrics import FAIL, PASS, first_event, metric
from rollbacklib.steps import StepName

PROVED, FAILED, NOT_REACHED, PEOPLE = "proved", "failed", "not reached", "for people"
_COLUMN = re.compile(r"^[\w.]+\.\w+ (exists|is absent|nullable|type)$")

# (item, which validation checks prove it)
DATA_ITEMS: list[tuple[str, Callable[[str], bool]]] = [
    ("Schema equals the backup's (tables, columns, keys, indexes)", lambda n: n.startswith("schema fingerprint")),
    ("Columns and nullability as before the migration", lambda n: bool(_COLUMN.match(n))),
    ("Row counts equal the pre-migration counts", lambda n: n.startswith("rows in ")),
    ("Relations intact (foreign keys present, no orphans)",
     lambda n: n.startswith("foreign key ") or n.startswith("no orphans in ")),
    ("Sample of data verified (first rows of every table)", lambda n: n.startswith("first ") and " rows of " in n),
    ("Migration no longer applied; _prisma_migrations is the backup's",
     lambda n: n.startswith("_prisma_migrations") or n.endswith("no longer applied")),
    ("Database settings, grants and locale as before", lambda n: n.startswith("database settings")),
]
APPLICATION_FOR_PEOPLE = ("API Gateway responding to health checks", "Login endpoint functional (200 OK)",
                          "Token validation functional", "Protected endpoints accessible with a valid JWT",
                          "Prisma Client regenerated", "No errors in application logs")
INFRASTRUCTURE_FOR_PEOPLE = ("Database CPU < 50%", "Database memory < 70%", "Redis working")
COMMUNICATION_FOR_PEOPLE = ('Status page set to "Resolved"', "Team notified via Slack", "Stakeholders notified by email",
                            "Support tickets answered", "Post-mortem scheduled")


def _item(item: str, state: str, evidence: str) -> dict:
    return {"item": item, "state": state, "evidence": evidence}


def _people(items) -> list[dict]:
    return [_item(i, PEOPLE, "for people: the run cannot see it") for i in items]


def _from_checks(item: str, matches: Callable[[str], bool], checks: list[dict] | None) -> dict:
    if checks is None:
        return _item(item, NOT_REACHED, "step validation did not run")
    found = [c for c in checks if matches(c["name"]) and not c.get("skipped")]
    if not found:
        return _item(item, PEOPLE, "no check of this kind is configured for this migration")
    bad = [c for c in found if not c["passed"]]
    if bad:
        return _item(item, FAILED, "failed: " + "; ".join(expected_found(c) for c in bad))
    return _item(item, PROVED, f"{len(found)} check(s) passed: " + "; ".join(c["name"] for c in found[:6])
                 + (" ..." if len(found) > 6 else ""))


def expected_found(check: dict, width: int = 160) -> str:
    """``name: expected X, found Y`` (each value cut to ``width``), as the checklist and the post-mortem say it."""
    def short(value) -> str:
        text = json.dumps(value, default=str) if not isinstance(value, str) else value
        return text if len(text) <= width else text[: width - 1] + "…"

    return f"{check['name']}: expected {short(check.get('expected'))}, found {short(check.get('found'))}"


def _from_step(item: str, events: list[dict], step: str, status: str, evidence: str) -> dict:
    if first_event(events, step, status):
        return _item(item, PROVED, evidence)
    failed = next((e for e in events if e["step"] == step and e["status"] in ("failed", "aborted", "refused")), None)
    if failed:
        return _item(item, FAILED, failed["message"].splitlines()[0])
    return _item(item, NOT_REACHED, f"step {step} did not run")


def checklist(run: Evidence) -> list[tuple[str, list[dict]]]:
    validation = run.summary.get("validation") or {}
    checks = validation.get("checks") if validation.get("passed") is not None else None
    data = [_from_checks(item, matches, checks) for item, matches in DATA_ITEMS]

    application = [_from_step("The database answers through the application's URL", run.events, "service-restored",
                              "info", "step health: SELECT 1 through the application's own URL")]
    application += _people(APPLICATION_FOR_PEOPLE)

    services = metric(run.summary, "services")
    if services and services["status"] in (PASS, FAIL):
        pods = _item("Services back at their replicas", PROVED if services["status"] == PASS else FAILED,
                     services["actual"])
    else:
        pods = _item("Services back at their replicas", PEOPLE, services["actual"] if services else "-")
    infrastructure = [_from_step("No sessions left hanging on the database (before the swap)", run.events,
                                 StepName.TERMINATE, "ok", "step terminate: no other session on the live database"),
                      pods] + _people(INFRASTRUCTURE_FOR_PEOPLE)

    written = (run.run_dir / POSTMORTEM_NAME).exists()
    communication = communication_groups.post_rollback(run.events, COMMUNICATION_FOR_PEOPLE) + [
        _item("Post-mortem draft written", PROVED if written else NOT_REACHED,
              POSTMORTEM_NAME if written else "written at the end of the run")]
    groups = [("Schema & Data", data), ("Application", application), ("Infrastructure", infrastructure),
              ("Communication", communication)]
    groups += communication_groups.groups(run.events)  # notifications, escalations, the pre-rollback acknowledgements
    failing = [_item(f"{c['step']}: {c['name']}", FAILED, expected_found(c))
               for c in run.summary.get("failing_checks", [])]
    return ([("Failing checks", failing)] if failing else []) + groups
