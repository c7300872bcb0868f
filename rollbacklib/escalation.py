"""Escalation: each failure names a level of the seed's path, the config says who that is, and they are told.

The levels (``[escalation]`` in ``runbook.toml``; the seed's "Escalation Path"):

    L1  On-Call Engineer  a technical problem during the rollback (any failure that names no other level)
    L2  Lead Engineer     the rollback has not finished ``after_seconds`` (20 min) after it started
    L3  DevOps Lead       database corruption: the live system is not what a step left it
    L4  CTO               confirmed data loss
    L5  CEO + Legal       a security or compliance breach

When a step fails, the dispatcher calls ``prepare`` (the error gets its level and who it is, so the notebook,
the terminal, the journal and the report say it) and ``on_failure`` (an ``escalation`` event, and the message
on the escalation channel). A timer escalates to L2 once the run passes ``after_seconds`` from its first journal
event: checked at every step boundary and by a daemon thread in the process running the phase (a long step
included), once per run (a lock file and the journal decide). Nothing here ever raises into the run.
"""

from __future__ import annotations

import fcntl
import threading
from datetime import datetime, timezone
from pathlib import Path

from rollbacklib.errors import ESCALATION, ConfigError, RefusedError, RollbackError
from rollbacklib.journal import read_events
from rollbacklib.metrics import duration
from rollbacklib.notify import delivery, messages

STEP = "escalation"
TECHNICAL, OVERDUE, CORRUPTION, DATA_LOSS, BREACH = "L1", "L2", "L3", "L4", "L5"
LOCK_NAME = ".escalation.lock"


def contact(config, level: str) -> tuple[str, str]:
    """Who level ``level`` is and how to reach them, from the config (the seed's roles when none is set)."""
    found = config.escalation.contact(level) if config is not None else None
    if found is None:
        return ESCALATION.get(level, "?"), ""
    return found.who, found.reach


def describe(config, level: str) -> str:
    """``L1 (On-Call Engineer): Ana, +34 600 000 000, @ana``: the level, its role and who it is."""
    who, reach = contact(config, level)
    role = ESCALATION.get(level, "?")
    return f"{level} ({role})" + (f": {who}" if who != role else "") + (f", {reach}" if reach else "")


def level_for(err: RollbackError) -> str | None:
    """The level a failure escalates to: its own, or L1 for a technical problem; none for bad usage or a refusal."""
    if err.escalate:
        return err.escalate
    if isinstance(err, (ConfigError, RefusedError)):
        return None
    return TECHNICAL


def prepare(ctx, err: RollbackError) -> None:
    """Give the error its level and who it is: what the notebook, the terminal and the report show."""
    try:
        level = level_for(err)
        if level:
            err.escalate = level
            err.contact = describe(ctx.config, level)
    except Exception:  # noqa: BLE001 - escalation never hides the failure itself
        return


def on_failure(ctx, step: str, err: RollbackError) -> None:
    """Journal the escalation of a failed step and tell the escalation channel. Never raises."""
    if not err.escalate:
        return
    reason = err.message.strip().splitlines()[0] if err.message.strip() else type(err).__name__
    escalate(ctx, err.escalate, step, reason, err.next_action, why="failure")


def escalate(ctx, level: str, step: str, reason: str, next_action: str, *, why: str) -> dict | None:
    """Journal an escalation to ``level`` and send it on the escalation channel (not under a dry run). Never raises."""
    try:
        config = ctx.config.escalation
        who, reach = contact(ctx.config, level)
        settings = ctx.env.raw.notify
        channel = config.channel
        entry = {"level": level, "role": ESCALATION.get(level, "?"), "who": who, "reach": reach, "step": step,
                 "reason": reason, "next_action": next_action, "why": why, "channel": channel}
        ctx.record(STEP, "info", f"escalated to {describe(ctx.config, level)}: {reason}", escalation=entry)
        print(f"ESCALATION {describe(ctx.config, level)}: {reason}\nNext: {next_action}", flush=True)  # the cell
        if channel is None:
            ctx.record(STEP, "info", "no escalation channel configured ([escalation] channel): reach them by hand")
            return entry
        if settings is None or channel not in settings.channels:
            ctx.record(STEP, "info", f"the escalation channel {channel!r} is not a notify channel of environment "
                       f"{ctx.env.name!r}: reach them by hand")
            return entry
        if ctx.dry_run:
            ctx.record(STEP, "info", f"dry run: the escalation is not sent to {channel}")
            return entry
        message = messages.escalation(level, who, reach, ctx.migration_id, ctx.env.name, ctx.run_id, step, reason,
                                      next_action)
        delivery.send_all(settings, message, ctx.record, STEP, only=channel)
        return entry
    except Exception:  # noqa: BLE001 - an escalation that cannot be sent never changes the run's outcome
        return None


# --- the L2 timer ------------------------------------------------------------------------------------

_started: dict[str, datetime] = {}
_timers: dict[str, threading.Timer] = {}


def run_started(run_dir: Path) -> datetime | None:
    """When the run started: its journal's first event (kept per process once read)."""
    key = str(run_dir)
    if key not in _started:
        events = read_events(run_dir)
        if not events:
            return None
        _started[key] = datetime.fromisoformat(events[0]["ts"])
    return _started[key]


def _finished(events: list[dict]) -> bool:
    """Has the run ended: 05 finished, or the run concluded (its end's chain head) since its last phase started?"""
    last_start = max((i for i, e in enumerate(events) if e["step"] == "phase" and e["status"] == "started"), default=-1)
    return any(e["step"] == "phase" and e["status"] == "ok" and e["phase"] == "05_close" for e in events) or any(
        i > last_start and e["step"] == "head" and (e.get("evidence") or {}).get("reason") == "end of the run"
        for i, e in enumerate(events))


def check_overdue(ctx, step: str = "") -> dict | None:
    """Escalate to L2 once the run has gone on ``after_seconds`` without finishing; once per run. Never raises."""
    try:
        started = run_started(ctx.run_dir)
        after = ctx.config.escalation.after_seconds
        if started is None:
            return None
        elapsed = (datetime.now(timezone.utc) - started).total_seconds()
        if elapsed < after:
            return None
        with open(Path(ctx.run_dir) / LOCK_NAME, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            events = read_events(ctx.run_dir)
            if _finished(events) or any(e["step"] == STEP and (e["evidence"].get("escalation") or {}).get("why")
                                        == "timer" for e in events):
                return None
            return escalate(ctx, OVERDUE, step or "run",
                            f"the rollback has not finished {duration(elapsed)} after it started (the limit is "
                            f"{duration(after)})", "the Lead Engineer joins and decides: go on, or take the way "
                            "back the report and the journal give", why="timer")
    except Exception:  # noqa: BLE001
        return None


def arm(ctx) -> None:
    """Check now (a step boundary), and start this process's timer for the rest of the time (a long step)."""
    key = str(ctx.run_dir)
    check_overdue(ctx)
    timer = _timers.get(key)
    if timer is not None and timer.is_alive():
        return
    started = run_started(ctx.run_dir)
    if started is None:
        return
    left = ctx.config.escalation.after_seconds - (datetime.now(timezone.utc) - started).total_seconds()
    if left <= 0:
        return
    timer = threading.Timer(left + 0.5, check_overdue, args=(ctx, "a long step"))
    timer.daemon = True
    timer.start()
    _timers[key] = timer
