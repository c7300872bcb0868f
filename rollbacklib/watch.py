"""``rollback watch``: sample on an interval, evaluate the triggers after each sample, alert, and
where the environment allows it (``auto_rollback = true``) start the runbook on an automatic trigger.

The rollback it starts is ``rollback run``'s own code path (``pipeline.run_phases``), headless,
and it still needs its approval: the person who starts ``rollback watch --yes`` gives it then,
for this migration on this environment, and the run journals it as given to the runner (with
the trigger's evidence in the watch's journal). Without ``--yes`` an automatic trigger only
alerts, even with ``auto_rollback = true``: nobody approved a rollback.

Alerts go to the terminal (``say``), the watch's journal, and every function in ``ALERT_HOOKS``
(or passed as ``alert``): the seam a notification module (Slack, Statuspage, e-mail) hooks into.
A hook that raises is journaled and does not stop the watch. SIGINT and SIGTERM end it cleanly
after the sample under way: the series and the journal are whole.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from rollbacklib.triggers.evaluate import FIRED, ROLL_BACK_NOW, Assessment, evaluate
from rollbacklib.triggers.sampler import Sampler, _wait

#: Functions of (alert: dict) called for every alert: where notifications hook in.
ALERT_HOOKS: list[Callable[[dict], None]] = []


@dataclass
class WatchResult:
    folder: object
    samples: int = 0
    alerts: list[dict] = field(default_factory=list)
    stopped_by: str | None = None  # SIGINT, SIGTERM, max_seconds, or rollback
    run: object = None  # the RunResult of a rollback it started
    last: Assessment | None = None

    @property
    def exit_code(self) -> int:
        return self.run.exit_code if self.run is not None else 0


class _Stop:
    def __init__(self):
        self.event = threading.Event()
        self.why: str | None = None

    def __call__(self) -> bool:
        return self.event.is_set()

    def set(self, why: str) -> None:
        self.why = self.why or why
        self.event.set()


def watch(ctx, *, approve: str = "", say: Callable[[str], None] = print, alert: Callable[[dict], None] | None = None,
          start_rollback: Callable[[], object] | None = None, max_seconds: float | None = None,
          handle_signals: bool = True) -> WatchResult:
    """Watch until stopped (a signal, ``max_seconds``) or until it starts a rollback; ``ctx`` from ``open_assessment``.

    ``approve`` is the migration ID given with ``--yes``: only then may an automatic trigger start the
    runbook, and only where ``auto_rollback = true``. ``start_rollback`` defaults to ``rollback run``'s path.
    """
    t = ctx.triggers
    stop = _Stop()
    result = WatchResult(ctx.folder)
    previous = {}
    if handle_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda number, frame: stop.set(signal.Signals(number).name))
    horizon = max([r.for_seconds for r in t.rules] + [0]) + 3 * t.interval_seconds
    allowed = t.auto_rollback and approve == ctx.migration_id
    ctx.record("watch", "started", f"watching every {t.interval_seconds:g} s; automatic rollback "
               + ("ON (auto_rollback = true, approved with --yes)" if allowed else "off: alerts only"
                  + (" (auto_rollback = true but no --yes: nobody approved a rollback)" if t.auto_rollback else "")),
               auto_rollback=t.auto_rollback, approved=bool(approve == ctx.migration_id))
    say(f"Watching {ctx.env.name} every {t.interval_seconds:g} s (Ctrl-C to stop); automatic rollback "
        + ("ON" if allowed else "off: alerts only") + f". Series: {ctx.series_path}")
    sampler = Sampler(t, ctx.series_path, database_url=ctx.env.database_url())
    fired: set[str] = set()
    started = None
    try:
        while not stop():
            started = started or time.monotonic()
            tick = time.monotonic()
            record = sampler.sample()
            result.samples += 1
            sampler.samples = [s for s in sampler.samples if s["t"] >= record["t"] - horizon]
            result.last = assessment = evaluate(t, sampler.samples)
            now = {r.name for r in assessment.results if r.status == FIRED}
            for r in assessment.results:
                if r.name in now - fired:
                    result.alerts.append(_alert(ctx, r, assessment, say, alert))
            for name in fired - now:
                ctx.record("alert", "info", f"trigger {name!r} no longer fires")
                say(f"  cleared: {name}")
            fired = now
            if assessment.recommendation == ROLL_BACK_NOW and allowed:
                ctx.record("rollback", "started", "an automatic trigger fired and auto_rollback = true: starting the "
                           "runbook (rollback run's path, approved at watch start)",
                           fired=[r.name for r in assessment.fired])
                say("Starting the rollback (auto_rollback = true; approved when the watch started).")
                _restore(previous)
                previous = {}
                result.run = (start_rollback or _default_rollback(ctx))()
                ctx.record("rollback", "info", f"the runbook ended: exit {result.run.exit_code}",
                           run_dir=str(result.run.run_dir), exit_code=result.run.exit_code)
                stop.set("rollback")
                break
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                stop.set("max_seconds")
                break
            _wait(tick + t.interval_seconds, stop)
    finally:
        sampler.close()
        _restore(previous)
        result.stopped_by = stop.why
        ctx.record("watch", "ok", f"stopped ({stop.why or 'error'}) after {result.samples} samples, "
                   f"{len(result.alerts)} alert(s)", samples=result.samples, alerts=len(result.alerts),
                   stopped_by=stop.why)
    return result


def _alert(ctx, rule, assessment: Assessment, say, alert) -> dict:
    what = (f"{rule.kind.upper()} trigger fired: {rule.name} ({rule.condition} for {rule.for_seconds:g} s): "
            f"{rule.reason}. Recommendation: {assessment.recommendation}")
    event = {"environment": ctx.env.name, "migration_id": ctx.migration_id, "trigger": rule.name, "kind": rule.kind,
             "recommendation": assessment.recommendation, "reason": rule.reason, "evidence": rule.evidence}
    ctx.record("alert", "info", what, **event)
    say(f"ALERT {what}")
    for hook in ([alert] if alert else []) + list(ALERT_HOOKS):
        try:
            hook(event)
        except Exception as err:  # an alert channel down never stops the watch
            ctx.record("alert", "failed", f"alert hook {getattr(hook, '__name__', hook)!r} failed: {err}",
                       error=type(err).__name__)
    return event


def _restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _default_rollback(ctx):
    def start():
        from rollbacklib.pipeline import run_phases

        return run_phases(migration_id=ctx.migration_id, environment=ctx.env.name, config_path=str(ctx.config.path),
                          reports_dir=str(ctx.folder.parent.parent.parent.parent), approve=ctx.migration_id)
    return start
