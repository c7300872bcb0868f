"""The run's summary (``run.json``), computed from its journal and state: never typed."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from rollbacklib.audit import ARTIFACT, chain_head
from rollbacklib.errors import EXIT_ABORTED, EXIT_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from rollbacklib.files import atomic_write_json
from rollbacklib.journal import changes_made, read_events
from rollbacklib.postgres.database import open_database_sql
from rollbacklib.report.metrics import measure
from rollbacklib.state import load_state
from rollbacklib.steps import PHASES, StepName
from rollbacklib.live import Situation, psql_command
from rollbacklib.way_back import previous_settings, run_view

RUN_SUMMARY = "run.json"
_BAD = {"aborted": EXIT_ABORTED, "refused": EXIT_REFUSED, "failed": EXIT_FAILED, "bad-usage": EXIT_USAGE}


def _t(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def _seconds(a: str | None, b: str | None) -> float | None:
    return round((_t(b) - _t(a)).total_seconds(), 3) if a and b else None


def phase_table(events: list[dict]) -> list[dict]:
    """Each phase's latest status and times; a phase started again (a resumed run) starts over."""
    phases: dict[str, dict] = {}
    for e in events:
        if e["phase"] not in PHASES:
            continue
        if e["step"] == "phase" and e["status"] == "skipped":
            continue  # finished in an earlier attempt: its status and times stand
        if e["step"] == ARTIFACT:
            continue  # a file sealed after its phase: not a step of it
        p = phases.setdefault(e["phase"], {"name": e["phase"], "status": "running", "started_at": e["ts"], "finished_at": None})
        if e["step"] == "phase" and e["status"] == "started" and p["status"] != "running":
            p.update(status="running", finished_at=None)  # a resumed phase
        if e["step"] == "phase" and e["status"] == "ok":
            p.update(status="succeeded", finished_at=e["ts"])
        elif e["status"] in _BAD:
            p.update(status=e["status"], finished_at=e["ts"])
    for p in phases.values():
        p["seconds"] = _seconds(p["started_at"], p["finished_at"])
    return list(phases.values())


def first_error(events: list[dict]) -> dict | None:
    return next((e for e in events if e["status"] in _BAD), None)


def attempts(events: list[dict]) -> list[list[dict]]:
    """The journal cut at each ``attempt`` marker the runner writes (one attempt if there is none)."""
    cuts = [i for i, e in enumerate(events) if e["step"] == "attempt"] or [0]
    cuts[0] = 0
    return [events[a:b] for a, b in zip(cuts, cuts[1:] + [len(events)])]


def finished_phases(events: list[dict]) -> set[str]:
    """Phases whose latest run ended "phase ok" in a real run (a dry run finishes nothing)."""
    done, dry = set(), {}
    for e in events:
        if e["step"] != "phase" or e["phase"] not in PHASES:
            continue
        if e["status"] == "started":
            dry[e["phase"]] = bool(e["evidence"].get("dry_run"))
            done.discard(e["phase"])
        elif e["status"] == "ok" and not dry.get(e["phase"], False):
            done.add(e["phase"])
    return done


def summarize(run_dir: Path) -> dict:
    """Status, timings, RTO, RPO, validation, the success metrics: all read from the journal and the state."""
    run_dir = Path(run_dir)
    events = [e for e in read_events(run_dir) if e["step"] != ARTIFACT]  # files sealed, not steps of the run
    state = load_state(run_dir)
    phases = phase_table(events)
    last = attempts(events)[-1]
    changed = changes_made(events)
    dry_run = any(e["step"] == "phase" and e["status"] == "started" and e["evidence"].get("dry_run") for e in last)
    done = {p["name"] for p in phases if p["status"] == "succeeded"}
    earlier = [e for a in attempts(events)[:-1] for e in a if e["status"] in _BAD]

    # The outcome is the final state's: a last attempt that reached the goal succeeded, whatever came before.
    error = None
    if all(name in done for name in PHASES):
        status, exit_code = "succeeded", EXIT_OK
    else:
        error = first_error(last) or first_error(events)
        if error is not None:
            status = "failed" if error["status"] == "failed" or (changed and error["status"] != "refused") else "aborted"
            exit_code = EXIT_FAILED if status == "failed" else _BAD[error["status"]]
        else:
            status, exit_code = ("failed" if changed else "aborted"), (EXIT_FAILED if changed else EXIT_ABORTED)
    # What the catalog shows now decides too: production down at the end is a failure, said first.
    now = run_view(run_dir) if events and not dry_run else None
    down = now.health_line() if now is not None and status != "succeeded" else None
    if down and (changed or now.situation is Situation.SERVER_DOWN):  # this run's doing, or nobody can tell
        status, exit_code = "failed", EXIT_FAILED
    back = now.way_back(previous_settings(run_dir)) if now is not None and status == "failed" else []

    started_at = events[0]["ts"] if events else None
    finished_at = events[-1]["ts"] if events else None
    healthy = state.steps.get(StepName.HEALTH)
    restored_at = healthy.at if healthy and healthy.status == "ok" else None
    blocked_at = state.blocked.at if state.blocked else None
    validation_event = next((e for e in reversed(events) if e["step"] == StepName.VALIDATION and e["status"] == "info"
                             and "checks" in e["evidence"]), None)
    backup_taken = state.backup.taken_at if state.backup else None
    first = next((e["evidence"] for e in events if e["step"] == "phase" and e["status"] == "started"), {})
    summary = {
        "status": status,
        "exit_code": exit_code,
        "dry_run": dry_run,
        "migration_id": _from_path(run_dir, 2),
        "environment": _from_path(run_dir, 1),
        "run_id": run_dir.name,
        "strategy": first.get("strategy"),
        "started_at": started_at,
        "finished_at": finished_at,
        "duration_seconds": _seconds(started_at, finished_at),
        "phases": [{k: p[k] for k in ("name", "status", "seconds", "started_at", "finished_at")} for p in phases],
        "rto_seconds": _seconds(started_at, restored_at),
        "rto_budget_seconds": first.get("rto_budget_seconds"),
        "rpo_seconds": _seconds(backup_taken, blocked_at),
        "changes_made": changed,
        "validation": {
            "passed": validation_event["evidence"]["passed"],
            "checks": validation_event["evidence"]["checks"],
        } if validation_event else {"passed": None, "checks": []},
        "backup": state.backup.model_dump() if state.backup else None,
        "plan_digest": state.plan_digest,
        "approval": state.approval.model_dump() if state.approval else None,
        "kept_database": state.swap.kept if state.swap else None,
        "open_kept_database": open_database_sql(state.swap.kept) if state.swap and state.swap.completed else None,
        "error": {"phase": error["phase"], "step": error["step"],
                  "message": (f"{down}\n" if down and not error["message"].startswith(down) else "") + error["message"],
                  **{k: error["evidence"].get(k) for k in ("error", "next_action", "escalate")}} if error else None,
        "way_back": back,
        "way_back_command": psql_command(back, now.admin_url) if back else None,
        "live": now.to_dict() if now is not None else None,
        "production": down or (now.situation.value if now is not None else "not read (the server was not asked)"),
        "orphans": now.orphans() if now is not None and status != "succeeded" else [],
        "attempts": len(attempts(events)),
        "earlier_errors": [{"phase": e["phase"], "step": e["step"], "status": e["status"], "message": e["message"]}
                           for e in earlier],
        "audit": chain_head(run_dir),
    }
    return summary | measure(summary, events, state)


def _from_path(run_dir: Path, up: int) -> str:
    return run_dir.parents[up - 1].name if len(run_dir.parents) >= up else ""


def write_summary(run_dir: Path, **extra) -> dict:
    summary = summarize(run_dir) | extra
    atomic_write_json(Path(run_dir) / RUN_SUMMARY, summary)
    return summary
