"""The seed plan's success metrics, measured from the journal and the run's state: never typed.

Each metric is a row of the seed's table (metric, target, actual, status) with the number
behind it (``value``, ``unit``) and where it comes from (``evidence``). ``measure`` adds them
to the run's outcome (``rollbacklib.outcome.compute``), which ``run.json``, the report, the
05_close notebook and the post-mortem read.
"""

from __future__ import annotations

from datetime import datetime

from rollbacklib.state import RunState
from rollbacklib.steps import Phase, StepName

BAD = ("aborted", "refused", "failed", "bad-usage")
# The seed plan's estimate for each phase (the upper end where it gives a range), in seconds.
PHASE_ESTIMATES = {Phase.PREPARE: 120, Phase.EXECUTE: 480, Phase.VALIDATE: 300, Phase.RESTORE_SERVICE: 180,
                   Phase.CLOSE: 120}
SLOW_SHARE = 0.5  # a step is slow when it alone takes half its phase's estimate
PASS, FAIL, INFO, NOT_MEASURED, PEOPLE = "pass", "fail", "info", "not measured", "for people"

# The seed's incident drill (Test 3): each milestone and its target, in seconds from the start.
# When the team was told and the status page updated: from the first delivered notification of that kind
# (``NOTIFIED_BY``); with no notification channel configured, those are for people.
DRILL_TARGETS = (
    ("team notified", 120, None),
    ("status page updated", 180, None),
    ("rollback started", 300, (Phase.EXECUTE, StepName.CREATE_COPY, "started")),
    ("rollback completed", 900, (Phase.EXECUTE, StepName.SWAP_PROMOTE, "ok")),
    ("validated", 1200, (Phase.VALIDATE, StepName.VALIDATION, "ok")),
    ("closed", 1500, (Phase.CLOSE, StepName.CLOSE, "ok")),
)


def _t(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def seconds_between(a: str | None, b: str | None) -> float | None:
    return round((_t(b) - _t(a)).total_seconds(), 3) if a and b else None


def duration(seconds: float | None) -> str:
    """``7.6 s``, ``2 min 05 s``: what a person reads."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min" if rest == 0 else f"{minutes} min {rest:02d} s"


def first_event(events: list[dict], step: str, status: str, phase: str | None = None) -> dict | None:
    return next((e for e in events if e["step"] == step and e["status"] == status
                 and (phase is None or e["phase"] == phase)), None)


def last_evidence(events: list[dict], step: str, key: str) -> dict | None:
    """The latest event of ``step`` whose evidence has ``key`` (a step re-run in the same run wins)."""
    return next((e for e in reversed(events) if e["step"] == step and key in e["evidence"]), None)


def step_table(events: list[dict]) -> list[dict]:
    """Each step's last attempt: phase, start, end, seconds, outcome (``running`` if it never ended)."""
    steps: dict[tuple[str, str], dict] = {}
    for e in events:
        if e["step"] in ("phase", "service-restored"):
            continue
        key = (e["phase"], e["step"])
        if e["status"] == "started":
            steps[key] = {"phase": e["phase"], "step": e["step"], "started_at": e["ts"], "finished_at": None,
                          "status": "running", "seconds": None, "message": ""}
        elif key in steps and e["status"] in ("ok", "skipped", *BAD) and steps[key]["finished_at"] is None:
            steps[key].update(finished_at=e["ts"], status=e["status"], message=e["message"],
                              seconds=seconds_between(steps[key]["started_at"], e["ts"]))
        elif key not in steps and e["status"] in BAD:  # refused before it started (the runner's gate)
            steps[key] = {"phase": e["phase"], "step": e["step"], "started_at": e["ts"], "finished_at": e["ts"],
                          "status": e["status"], "seconds": 0.0, "message": e["message"]}
    return sorted(steps.values(), key=lambda s: s["started_at"])


def machinery_seconds(events: list[dict]) -> float | None:
    """The run's time outside its steps: kernel starts, imports, papermill's saves, the seals, the report.

    Each attempt's wall time (its ``attempt`` event to its last event, seals and heads included) minus
    the time spent inside steps (each step's ``started`` event to its outcome, or to the attempt's
    end for a step that never ended). The time between two attempts belongs to no one and is left out.
    """
    cuts = [i for i, e in enumerate(events) if e["step"] == "attempt"]
    if not cuts:
        return None
    total = 0.0
    for a, b in zip(cuts, cuts[1:] + [len(events)]):
        attempt, inside, open_steps = events[a:b], 0.0, {}
        for e in attempt:
            key = (e["phase"], e["step"])
            if e["step"] in ("phase", "service-restored"):
                continue
            if e["status"] == "started":
                open_steps[key] = e["ts"]
            elif e["status"] in ("ok", "skipped", *BAD) and key in open_steps:
                inside += seconds_between(open_steps.pop(key), e["ts"])
        inside += sum(seconds_between(ts, attempt[-1]["ts"]) for ts in open_steps.values())
        total += seconds_between(attempt[0]["ts"], attempt[-1]["ts"]) - inside
    return round(total, 3)


def milestones(events: list[dict]) -> list[dict]:
    """The drill's milestones: target and, where the journal has it, when each was reached."""
    start = events[0]["ts"] if events else None
    rows = []
    for name, target, where in DRILL_TARGETS:
        event = first_event(events, where[1], where[2], where[0]) if where else _notified(events, name)
        seconds = seconds_between(start, event["ts"]) if event else None
        rows.append({"milestone": name, "target_seconds": target, "at": event["ts"] if event else None,
                     "seconds": seconds,
                     "status": (PEOPLE if where is None and event is None else NOT_MEASURED if seconds is None
                                else PASS if seconds < target else FAIL)})
    return rows


# The milestones a delivered notification proves (its kinds); without one they stay for people.
NOTIFIED_BY = {"team notified": ("slack", "slack-webhook", "email"), "status page updated": ("statuspage",)}


def _notified(events: list[dict], milestone: str) -> dict | None:
    """The first journal event of a notification of ``milestone``'s kinds that was delivered."""
    kinds = NOTIFIED_BY.get(milestone, ())
    return next((e for e in events if isinstance(e.get("evidence"), dict)
                 and (e["evidence"].get("notification") or {}).get("delivered")
                 and e["evidence"]["notification"].get("kind") in kinds), None)


def _metric(key: str, metric: str, target: str, value, unit: str, actual: str, status: str, evidence: str) -> dict:
    return {"key": key, "metric": metric, "target": target, "actual": actual, "status": status, "value": value,
            "unit": unit, "evidence": evidence}


def _budget(value: float | None, budget: float | None) -> str:
    if value is None:
        return NOT_MEASURED
    return PASS if budget is None or value < budget else FAIL


def restored_at_from(events: list[dict]) -> str | None:
    """When the database answered again: the journal's ``health`` ok, if the step's latest outcome is ok."""
    last = next((e for e in reversed(events) if e["step"] == StepName.HEALTH
                 and e["status"] in ("ok", "failed", "aborted", "refused")), None)
    return last["ts"] if last is not None and last["status"] == "ok" else None


def measure(summary: dict, events: list[dict], state: RunState) -> dict:
    """Everything the seed's success-metrics table asks for, with its evidence."""
    first = next((e["evidence"] for e in events if e["step"] == "phase" and e["status"] == "started"), {})
    rto, rto_budget = summary.get("rto_seconds"), summary.get("rto_budget_seconds")
    rpo, rpo_budget = summary.get("rpo_seconds"), first.get("rpo_budget_seconds")
    restored_at = restored_at_from(events)  # the instant the RTO is measured to
    blocked_at = state.blocked.at if state.blocked else None
    downtime = seconds_between(blocked_at, restored_at)
    lost_event = last_evidence(events, StepName.COMPARE_ROWS, "rows_lost") or \
        last_evidence(events, StepName.RESOLVE_CHECK, "rows_lost") or \
        last_evidence(events, StepName.SURGICAL_VERIFY, "rows_lost")  # the other strategies measure their own
    rows_lost = lost_event["evidence"]["rows_lost"] if lost_event else None

    metrics = [
        _metric("rto", "RTO (Recovery Time)", f"< {duration(rto_budget)}" if rto_budget else "-", rto, "s",
                duration(rto), _budget(rto, rto_budget),
                "from the run's first journal event to the database answering SELECT 1 through the application's "
                "URL (step health)"),
        _metric("rpo", "RPO (Data Loss), time", f"< {duration(rpo_budget)}" if rpo_budget else "-", rpo, "s",
                duration(rpo), _budget(rpo, rpo_budget),
                "from the backup's time (its manifest) to the moment the live database stopped taking connections "
                "(step block-connections): the writes a full restore gives up"),
        _rows_lost_metric(rows_lost, lost_event, pending=restored_at is not None and lost_event is None),
        _metric("downtime", "Downtime (connections blocked)", f"< {duration(rto_budget)}" if rto_budget else "-",
                downtime, "s", duration(downtime), _budget(downtime, rto_budget),
                "from block-connections to the database answering again through the application's URL (health)"),
        _uptime(rto, downtime),
        _integrity(summary.get("validation") or {}),
        _services(events),
        _errors_after(events),
    ]
    return {"rpo_budget_seconds": rpo_budget, "downtime_seconds": downtime, "rows_lost": rows_lost,
            "milestones": milestones(events), "metrics": metrics, **_salvage_and_sequences(events)}


def _salvage_and_sequences(events: list[dict]) -> dict:
    """The preview before the gate (a projection), the rows carried over after the reopen, the sequences set."""
    preview = last_evidence(events, StepName.SALVAGE_PREVIEW, "salvage_preview")
    carried = last_evidence(events, StepName.SALVAGE_CARRY, "salvage")
    sequences = last_evidence(events, StepName.SEQUENCES, "moves")
    return {"rows_lost_preview": preview["evidence"]["salvage_preview"] if preview else None,
            "salvage": carried["evidence"]["salvage"] if carried else None,
            "sequences": [m for m in sequences["evidence"]["moves"] if m["action"] == "set"] if sequences else None}


PENDING = "pending"


def _rows_lost_metric(rows_lost: dict | None, event: dict | None, pending: bool = False) -> dict:
    if rows_lost is None and pending:
        return _metric("rows_lost", "RPO (Data Loss), rows", "counted", None, "rows", "pending", PENDING,
                       "counted after the outage window by step compare-rows (05_close), which has not run yet: "
                       "`rollback resume` on this run folder counts them")
    if rows_lost is None:
        why = event["message"] if event else "step compare-rows did not run in this run"
        return _metric("rows_lost", "RPO (Data Loss), rows", "counted", None, "rows", "-", NOT_MEASURED, why)
    per_table = ", ".join(f"{t} {d['lost']}" for t, d in rows_lost["tables"].items() if d["lost"])
    actual = f"{rows_lost['total']} rows" + (f" ({per_table})" if per_table else "")
    partial = f"; not comparable: {', '.join(rows_lost['not_compared'])}" if rows_lost["not_compared"] else ""
    return _metric("rows_lost", "RPO (Data Loss), rows", "counted", rows_lost["total"], "rows", actual, INFO,
                   f"{rows_lost['inserted']} inserted, {rows_lost['updated']} updated, {rows_lost['deleted']} deleted "
                   "after the backup, by primary key: the kept pre-rollback database against the restored one "
                   f"(step compare-rows){partial}")


def _uptime(rto: float | None, downtime: float | None) -> dict:
    if rto is None or downtime is None or rto <= 0:
        return _metric("uptime", "Uptime during rollback", "> 0% (maintenance mode OK)", None, "%", "-",
                       NOT_MEASURED, "needs both the RTO and the downtime")
    share = round(100 * max(rto - downtime, 0) / rto, 1)
    return _metric("uptime", "Uptime during rollback", "> 0% (maintenance mode OK)", share, "%", f"{share}%",
                   PASS if share > 0 else FAIL, "share of the rollback (run start to service restored) during which "
                   "the database took connections: the restore runs beside the live database")


def _integrity(validation: dict) -> dict:
    checks = [c for c in validation.get("checks", []) if not c.get("skipped")]
    if not checks:
        return _metric("integrity", "Data integrity", "100%", None, "%", "-", NOT_MEASURED,
                       "step validation did not run")
    passed = sum(1 for c in checks if c["passed"])
    share = round(100 * passed / len(checks), 1)
    return _metric("integrity", "Data integrity", "100%", share, "%", f"{share:g}% ({passed}/{len(checks)} checks)",
                   PASS if passed == len(checks) else FAIL,
                   "checks of step validation that passed (schema, counts, bookkeeping, rows, configured expectations)")


def _services(events: list[dict]) -> dict:
    event = last_evidence(events, StepName.START_SERVICES, "services")
    name = "Services restored"
    if event is None:
        return _metric("services", name, "100%", None, "%", "-", NOT_MEASURED, "step start-services did not run")
    services = event["evidence"]["services"]
    if not services:
        return _metric("services", name, "100%", None, "%", "no services configured", INFO,
                       "the environment lists no services that use the database")
    if event["status"] != "changed":  # no platform: a person starts them
        return _metric("services", name, "100%", None, "%", f"{len(services)} to start by hand", PEOPLE,
                       "no service platform is configured: " + ", ".join(s["name"] for s in services))
    up = [s for s in services if not s.get("error") and not s.get("skipped")]
    share = round(100 * len(up) / len(services), 1)
    return _metric("services", name, "100%", share, "%", f"{share:g}% ({len(up)}/{len(services)})",
                   PASS if len(up) == len(services) else FAIL, "what the platform reported for step start-services")


def _errors_after(events: list[dict]) -> dict:
    swapped = first_event(events, StepName.SWAP_PROMOTE, "ok")
    name = "Errors post-rollback"
    if swapped is None:
        return _metric("errors_after", name, "0", None, "", "-", NOT_MEASURED, "the swap did not happen in this run")
    after = [e for e in events if e["ts"] > swapped["ts"]]
    bad = [f"{e['phase']}/{e['step']} {e['status']}" for e in after if e["status"] in BAD]
    health = first_event(after, "service-restored", "info")
    retries = [a for a in (health["evidence"].get("attempts", []) if health else []) if not a.get("ok")]
    bad += [f"health attempt {a['attempt']}: {a.get('error', 'no answer')}" for a in retries]
    return _metric("errors_after", name, "0", len(bad), "", str(len(bad)), PASS if not bad else FAIL,
                   "journal events after the swap that failed, were refused or aborted, and failed health attempts"
                   + (": " + "; ".join(bad) if bad else "") + ". Application error rates come with service probes.")


def metric(summary: dict, key: str) -> dict | None:
    return next((m for m in summary.get("metrics", []) if m["key"] == key), None)
