"""A run's outcome, metrics and production's state: computed once, from the journal, the state and the catalog.

``compute(run_dir)`` is the one place that says how a run ended (one word per outcome, each
with its exit code), what it measured (``rollbacklib.metrics``) and what state production is in
now (read from the live catalog when the server answers, else from the run's final state).
``run.json`` is this result written down (``summary.write_summary``); the report, the
post-mortem and ``rollback verify-audit`` read it from here and never compute it again.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from rollbacklib.errors import EXIT_ABORTED, EXIT_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from rollbacklib.journal import changes_made, read_events
from rollbacklib.postgres.database import open_database_sql
from rollbacklib.metrics import first_event, machinery_seconds, measure, restored_at_from, seconds_between
from rollbacklib.state import RunState, load_state
from rollbacklib.steps import PHASES, StepName
from rollbacklib.live import psql_command
from rollbacklib.rollback_stands import database_rollback_stands
from rollbacklib.notify.delivery import outcomes as notification_outcomes
from rollbacklib.services_way_back import still_down
from rollbacklib.way_back import previous_settings, run_view

ARTIFACT = "artifact"  # a file sealed into the journal (rollbacklib.audit): no step of the run
HEAD = "head"  # a chain head recorded (and signed) at a phase end (rollbacklib.signing): no step either
NOTIFIED = "notified"  # the completion notification, sent after the run's end head (rollbacklib.completion)
NOT_STEPS = (ARTIFACT, HEAD, NOTIFIED)

#: One word per outcome, everywhere (run.json, the badge, the terminal, the phase table), each with its exit code.
SUCCEEDED, FAILED, ABORTED, REFUSED = "succeeded", "failed", "aborted", "refused"
EXIT_CODES = {SUCCEEDED: EXIT_OK, FAILED: EXIT_FAILED, ABORTED: EXIT_ABORTED, REFUSED: EXIT_REFUSED}
MEANING = {SUCCEEDED: "the rollback happened and validation passed",
           FAILED: "failed after changes began: a person must act",
           ABORTED: "stopped before any change: nothing was changed",
           REFUSED: "refused before any change: nothing was changed"}
_BAD = {"aborted": EXIT_ABORTED, "refused": EXIT_REFUSED, "failed": EXIT_FAILED, "bad-usage": EXIT_USAGE}

# Production's state, as the first line of the report and of the post-mortem's Impact says it.
DOWN, BLOCKED, SERVING_RESTORED, SERVING_ORIGINAL, UNKNOWN = (
    "down", "blocked", "serving the restored database", "serving the original database", "unknown")


def _seconds(a: str | None, b: str | None) -> float | None:
    return round((datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds(), 3) if a and b else None


def phase_table(events: list[dict]) -> list[dict]:
    """Each phase's latest status and times; a phase started again (a resumed run) starts over."""
    phases: dict[str, dict] = {}
    for e in events:
        if e["phase"] not in PHASES:
            continue
        if e["step"] == "phase" and e["status"] == "skipped":
            continue  # finished in an earlier attempt: its status and times stand
        if e["step"] in NOT_STEPS:
            continue  # a file sealed, a head signed after its phase: not a step of it
        p = phases.setdefault(e["phase"], {"name": e["phase"], "status": "running", "started_at": e["ts"],
                                           "finished_at": None})
        if e["step"] == "phase" and e["status"] == "started" and p["status"] != "running":
            p.update(status="running", finished_at=None)  # a resumed phase
        if e["step"] == "phase" and e["status"] == "ok":
            p.update(status=SUCCEEDED, finished_at=e["ts"])
        elif e["status"] in _BAD:
            p.update(status=_word(e, events), finished_at=e["ts"])
    for p in phases.values():
        p["seconds"] = _seconds(p["started_at"], p["finished_at"])
    return list(phases.values())


def _word(error: dict, events: list[dict]) -> str:
    """The outcome word a bad event amounts to: the same word for the run and for its phase."""
    if error["status"] == "failed" or (changes_made(events) and error["status"] != "refused"):
        return FAILED
    return REFUSED if error["status"] == "refused" else ABORTED


def phase_word(events: list[dict], phase: str) -> str:
    """How a phase ended, in the run's words (succeeded, failed, aborted, refused; running if it has not)."""
    return next((p["status"] for p in phase_table(events) if p["name"] == phase), "not run")


def first_error(events: list[dict]) -> dict | None:
    return next((e for e in events if e["status"] in _BAD), None)


def attempts(events: list[dict]) -> list[list[dict]]:
    """The journal cut at each ``attempt`` marker the runner writes (one attempt if there is none)."""
    cuts = [i for i, e in enumerate(events) if e["step"] == "attempt"] or [0]
    cuts[0] = 0
    return [events[a:b] for a, b in zip(cuts, cuts[1:] + [len(events)])]


# The steps whose checks are the run's validation: swap's (phase 03) and resolve-only's.
VALIDATION_STEPS = (StepName.VALIDATION, StepName.RESOLVE_CHECK, StepName.VALIDATE_IN_PLACE, StepName.SURGICAL_VERIFY)


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


def run_outcome(events: list[dict]) -> tuple[str, int, dict | None]:
    """The run's word, its exit code and the error behind it.

    The final state's: a resumed run that reached the goal succeeded, whatever came before.
    """
    phases = phase_table(events)
    done = {p["name"] for p in phases if p["status"] == SUCCEEDED}
    if all(name in done for name in PHASES):
        return SUCCEEDED, EXIT_OK, None
    last = attempts(events)[-1]
    error = first_error(last) or first_error(events)
    if error is None:
        word = FAILED if changes_made(events) else ABORTED
        return word, EXIT_CODES[word], None
    word = _word(error, events)
    code = EXIT_USAGE if error["status"] == "bad-usage" and word == ABORTED else EXIT_CODES[word]
    return word, code, error


def compute(run_dir: Path, *, events: list[dict] | None = None, state: RunState | None = None,
            live: bool = True) -> dict:
    """Status, timings, RTO, RPO, validation, the success metrics and production's state.

    ``events`` and ``state`` default to the run folder's; ``live=False`` reads production's state
    from the final state only (verify-audit recomputing ``run.json`` must not ask the server of today).
    """
    run_dir = Path(run_dir)
    everything = read_events(run_dir) if events is None else events  # the seals and heads too
    events = [e for e in everything if e["step"] not in NOT_STEPS]
    state = load_state(run_dir) if state is None else state
    phases = phase_table(events)
    last = attempts(events)[-1]
    changed = changes_made(events)
    dry_run = any(e["step"] == "phase" and e["status"] == "started" and e["evidence"].get("dry_run") for e in last)
    earlier = [e for a in attempts(events)[:-1] for e in a if e["status"] in _BAD]
    status, exit_code, error = run_outcome(events)
    # Production down when the run stopped (the dispatcher read the catalog and journaled it with the error) is a
    # failure, said first, when this run changed something or nobody can tell (the server gone).
    seen = (error or {}).get("evidence", {}).get("live") or {}
    if status != SUCCEEDED and seen.get("production_down") and (changed or seen.get("situation") == "server-down"):
        status, exit_code = FAILED, EXIT_FAILED
    now = run_view(run_dir) if live and events and not dry_run else None

    started_at = events[0]["ts"] if events else None
    finished_at = events[-1]["ts"] if events else None
    restored_at = restored_at_from(events)
    blocked_at = state.blocked.at if state.blocked else None
    validation_event = next((e for e in reversed(events) if e["step"] in VALIDATION_STEPS and e["status"] == "info"
                             and "checks" in e["evidence"]), None)
    backup_taken = state.backup.taken_at if state.backup else None
    first = next((e["evidence"] for e in events if e["step"] == "phase" and e["status"] == "started"), {})
    summary = {
        "status": status,
        "exit_code": exit_code,
        "outcome": MEANING[status] + _undone(events, status),
        "dry_run": dry_run,
        "migration_id": _from_path(run_dir, 2),
        "environment": _from_path(run_dir, 1),
        "run_id": run_dir.name,
        "strategy": (state.strategy or {}).get("chosen") or first.get("strategy"),
        "strategies": state.strategy,  # phase 01's choice: each strategy's assessment and the situation judged
        "started_at": started_at,
        "finished_at": finished_at,
        "duration_seconds": _seconds(started_at, finished_at),
        "machinery_seconds": machinery_seconds(everything),
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
        "kept_database": state.swap.kept if state.swap and first_event(events, StepName.SWAP_KEEP, "changed") else None,
        "open_kept_database": open_database_sql(state.swap.kept) if state.swap and state.swap.completed else None,
        "error": {"phase": error["phase"], "step": error["step"], "message": error["message"],
                  **{k: error["evidence"].get(k) for k in ("error", "next_action", "escalate", "contact")}}
                 if error else None,
        "rollback_stands": (stands := database_rollback_stands(
            now, error, validation_event["evidence"]["passed"] if validation_event else None,
            (state.strategy or {}).get("chosen") or first.get("strategy")) if status == FAILED else None),
        "way_back": (back := now.way_back(previous_settings(run_dir), even_if_serving=True)
                     if now is not None and status == FAILED and not stands else []),
        "way_back_command": psql_command(back, now.admin_url) if back else None,
        "services_way_back": (services_back := still_down(run_dir, events)
                              if status in (FAILED, ABORTED) and not stands else []),
        "services_way_back_command": f"rollback services-back {run_dir}" if services_back else None,
        "live": now.to_dict() if now is not None else None,
        "orphans": now.orphans() if now is not None and status != SUCCEEDED else [],
        "attempts": len(attempts(events)),
        "earlier_errors": [{"phase": e["phase"], "step": e["step"], "status": e["status"], "message": e["message"]}
                           for e in earlier],
    }
    summary["failing_checks"] = failing_checks(events)
    summary["notifications"] = notification_outcomes(events)  # each channel's outcome; a failed one is reported
    summary |= measure(summary, events, state)
    summary["production"] = production_state(run_dir, events, state, live=live)
    _still_down(summary)
    return summary


def _undone(events: list[dict], status: str) -> str:
    """What a run that changed nothing live undid on its way out (the copy it had made, dropped), as the journal says."""
    if status not in (REFUSED, ABORTED):
        return ""
    undone = [f"{e['message']} ({e['evidence']['why']})" for e in events
              if e["status"] == "ran" and e["evidence"].get("why")]
    return "; undone: " + "; ".join(undone) if undone else ""


def failing_checks(events: list[dict]) -> list[dict]:
    """Every check that failed in the latest check of the copy (02: validate-copy, its identity at the promote) and of
    the validation (03)."""
    found = []
    for step in (StepName.VALIDATE_COPY, StepName.SWAP_PROMOTE, StepName.VALIDATION):
        event = next((e for e in reversed(events) if e["step"] == step and isinstance(e["evidence"].get("checks"), list)),
                     None)
        for check in (event["evidence"]["checks"] if event else []):
            if not check.get("passed") and not check.get("skipped"):
                found.append({"step": str(step), "name": check.get("name"), "expected": check.get("expected"),
                              "found": check.get("found"), "detail": check.get("detail", "")})
    return found


def _from_path(run_dir: Path, up: int) -> str:
    return run_dir.parents[up - 1].name if len(run_dir.parents) >= up else ""


# --- production's state: the first line of the report ------------------------------------------

def _hms(ts: str | None) -> str:
    return datetime.fromisoformat(ts).astimezone(timezone.utc).strftime("%H:%M:%S UTC") if ts else "an unknown time"


def production_state(run_dir: Path, events: list[dict], state: RunState, *, live: bool = True) -> dict:
    """What state production is in: from the live catalog when the server answers, else from the final state.

    Returns ``state`` (down, blocked, serving the restored / original database, unknown), ``since``,
    ``source`` (``live catalog`` or ``final state``), ``checked_at`` and ``line``, the sentence the
    report and the post-mortem open with.
    """
    live_name = state.database or (state.swap.live if state.swap else None) or \
        (state.blocked.database if state.blocked else None)
    renamed = first_event(events, StepName.SWAP_KEEP, "changed")
    promoted = (state.swap is not None and state.swap.completed) or first_event(events, StepName.SWAP_PROMOTE, "ok") \
        or first_event(events, StepName.RESTORE_IN_PLACE, "ok")  # in-place: the live database itself restored
    blocked_at = state.blocked.at if state.blocked else None
    served_at = restored_at_from(events)
    catalog = read_catalog(run_dir, events, live_name, state.swap.kept if state.swap else None) if live else None
    checked_at = datetime.now(timezone.utc).isoformat() if catalog is not None else (events[-1]["ts"] if events else None)

    server_gone = False
    if catalog is not None:
        source = "live catalog"
        if not catalog["live_exists"]:
            what, since = DOWN, renamed["ts"] if renamed else blocked_at
        elif not catalog["allow_connections"] or catalog["connection_limit"] == 0:
            what, since = BLOCKED, blocked_at
        elif promoted or catalog["kept_exists"]:
            what, since = SERVING_RESTORED, served_at or (promoted["ts"] if isinstance(promoted, dict) else None)
        else:
            what, since = SERVING_ORIGINAL, None
    else:
        source = "final state"
        last_seen = next((e for e in reversed(events) if isinstance(e["evidence"].get("live"), dict)), None)
        server_gone = last_seen is not None and last_seen["evidence"]["live"].get("situation") == "server-down"
        if server_gone:
            what, since = DOWN, last_seen["ts"]
        elif live_name is None:
            what, since = UNKNOWN, None
        elif renamed and not promoted:
            what, since = DOWN, renamed["ts"]
        elif blocked_at and not served_at:
            what, since = BLOCKED, blocked_at
        elif promoted and served_at:
            what, since = SERVING_RESTORED, served_at
        else:
            what, since = SERVING_ORIGINAL, None
    line = {
        DOWN: f"Production DOWN since {_hms(since)} (" + ("the server does not answer" if source == "final state"
                                                         and server_gone else f"live name {live_name} missing") + ")",
        BLOCKED: f"Production BLOCKED since {_hms(since)} ({live_name} refuses connections)",
        SERVING_RESTORED: f"Production serving the restored database since {_hms(since)}",
        SERVING_ORIGINAL: "Production serving the original database: the rollback did not replace it",
        UNKNOWN: "Production's state is unknown: the run did not reach the live database",
    }[what]
    return {"state": what, "since": since, "database": live_name, "source": source, "checked_at": checked_at,
            "line": f"{line} (read from the {source}"
                    + (f" at {_hms(checked_at)})" if source == "live catalog" else ")")}


def read_catalog(run_dir: Path, events: list[dict], live_name: str | None, kept: str | None) -> dict | None:
    """The catalog's word on the live name (and the kept database), through ``rollbacklib.live``; None if unreachable."""
    if not live_name:
        return None
    now = run_view(run_dir)
    if now is None or now.catalog is None:
        return None
    row = now.named(live_name)
    return {"live_exists": row is not None, "allow_connections": bool(row and row.allow_connections),
            "connection_limit": row.connection_limit if row else None,
            "kept_exists": bool(kept and now.named(kept) is not None)}


def _still_down(summary: dict) -> None:
    """While production is down or blocked, the downtime is "still down at ...", never "not measured"."""
    production = summary["production"]
    if production["state"] not in (DOWN, BLOCKED) or summary.get("downtime_seconds") is not None:
        return
    start = next((s for s in (production["since"],) if s), None)
    so_far = seconds_between(start, production["checked_at"]) if start and production["checked_at"] else None
    for m in summary["metrics"]:
        if m["key"] == "downtime":
            m.update(value=so_far, status="fail",
                     actual=f"still down at {_hms(production['checked_at'])}"
                            + (f" ({so_far:.0f} s so far)" if so_far is not None else ""),
                     evidence=m["evidence"] + f"; production is {production['state']} ({production['source']})")
