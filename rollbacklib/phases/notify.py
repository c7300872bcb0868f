"""The notification steps: ``notify-initiated`` (01), the outage window's ``notify-window-open`` (02) and
``notify-window-closed`` (04), and ``notify-completed`` (05).

Each is a ``Step`` in the plan whose actions are the requests it will make (method, URL without secrets, the
text, with ``<placeholders>`` for what is measured later), so the dry run shows them. Sending never stops the
run: every attempt and each channel's outcome is journaled (``rollbacklib.notify.delivery``), a channel that
stays down is reported, and the step itself ends ``ok``. Under a dry run nothing is sent.

``notify-completed`` carries the audit chain's head the run ended at, so it is sent once the run has ended
(``rollbacklib.completion``, from ``rollbacklib.conclude``): the step in 05 says so and shows its requests.
"""

from __future__ import annotations

import json

import pandas as pd

from rollbacklib.dispatch import dispatch
from rollbacklib.notify import delivery, messages
from rollbacklib.notify.base import Message
from rollbacklib.run import RunContext
from rollbacklib.checks import Check
from rollbacklib.steps import Action, Phase, Step, StepName

INITIATED_WHO = "<the user and host running phase 01>"


def _settings(ctx: RunContext):
    return ctx.env.raw.notify


def _reason(ctx: RunContext) -> str:
    migration = ctx.migration
    what = migration.description if migration and migration.description else "the migration broke production"
    return f"rolling back {ctx.migration_id}: {what}"


def _actions(ctx: RunContext, message: Message) -> tuple[Action, ...]:
    chans = delivery.channels(_settings(ctx), message.event, {})  # as planned: the same text on every render
    if not chans:
        return (Action("notify", "-", f"no notification channel carries '{message.event}' in environment "
                       f"{ctx.env.name!r}: tell the team by hand ({message.subject})"),)
    actions = []
    for channel in chans:
        request = channel.request(message)
        body = request.body if isinstance(request.body, str) else json.dumps(request.body, ensure_ascii=False)
        actions.append(Action("notify", channel.name, f"{request.describe()}\n{body}"))
    return tuple(actions)


def _notified(ctx: RunContext, step: Step) -> Check:
    """Done once per run: a re-run (a resume) does not tell the team twice."""
    return Check(f"{step.name} sent in this run", True)


def _send(ctx: RunContext, step: Step, message: Message) -> pd.DataFrame:
    settings = _settings(ctx)
    if ctx.dry_run:
        for action in step.actions:
            ctx.record(step.name, "planned", action.text, kind=action.kind, target=action.target)
        return pd.DataFrame([{"channel": a.target, "request": a.text, "sent": "no (dry run)"} for a in step.actions])
    stores = {name: dict(store) for name, store in ctx.state().notifications.items()}
    ctx.record(step.name, "info", f"sending: {message.subject}", text=message.text, event=message.event)
    results = delivery.send_all(settings, message, ctx.record, step.name, stores=stores) if settings else []
    if stores:
        ctx.update(notifications=stores)  # the Statuspage incident's id: a resume updates the same incident
    if not results:
        ctx.record(step.name, "info", f"no notification channel configured for {message.event}: tell people by hand")
    return pd.DataFrame([{k: r.get(k) for k in ("channel", "kind", "delivered", "attempts", "http_status", "error")}
                         for r in results] or [{"channel": "none configured", "delivered": None}])


# --- rollback initiated (phase 01, first) ---------------------------------------------------------

def initiated_message(ctx: RunContext, by: str = INITIATED_WHO) -> Message:
    return messages.initiated(ctx.migration_id, ctx.env.name, _reason(ctx), ctx.run_id, by)


def initiated_step(ctx: RunContext) -> Step:
    return Step(StepName.NOTIFY_INITIATED, Phase.PREPARE, "team and status page",
                "declare the incident: rollback initiated, with its reason (never blocks the run)",
                _actions(ctx, initiated_message(ctx)), postcondition="each channel's outcome journaled")


def notify_initiated(ctx: RunContext) -> pd.DataFrame:
    """Tell the team (and the status page) that the rollback started, and why."""
    return dispatch(ctx, initiated_step(ctx), lambda c, s: _send(c, s, initiated_message(c, messages.started_by())),
                    postcondition=_notified)


# --- the outage window: opening (02, after the gate) and closed (04, after the smoke tests) -----------

def window_open_message(ctx: RunContext) -> Message:
    return messages.window_open(ctx.migration_id, ctx.env.name, ctx.run_id)


def window_closed_message(ctx: RunContext) -> Message:
    return messages.window_closed(ctx.migration_id, ctx.env.name, ctx.run_id)


def window_open_step(ctx: RunContext) -> Step:
    # Sent before stop-services, never inside the window: a slow or down status page costs its bounded retries
    # ([notify.retry] max_seconds per channel) before the outage starts, never a second of the outage itself.
    return Step(StepName.NOTIFY_WINDOW_OPEN, Phase.EXECUTE, "status page (and channels that carry window-open)",
                "the outage window opens: the status page incident to identified, its components down (never blocks)",
                _actions(ctx, window_open_message(ctx)), requires=(StepName.GATE,),
                postcondition="each channel's outcome journaled")


def window_closed_step(ctx: RunContext) -> Step:
    return Step(StepName.NOTIFY_WINDOW_CLOSED, Phase.RESTORE_SERVICE,
                "status page (and channels that carry window-closed)",
                "the services are back and passed their smoke tests: the status page incident to monitoring, its "
                "components operational (never blocks)", _actions(ctx, window_closed_message(ctx)),
                requires=(StepName.SMOKE_TESTS,), postcondition="each channel's outcome journaled")


def notify_window_open(ctx: RunContext) -> pd.DataFrame | None:
    """Tell the status page (and who asked for it) that the rollback is being applied and the services stop now."""
    return dispatch(ctx, StepName.NOTIFY_WINDOW_OPEN, lambda c, s: _send(c, s, window_open_message(c)),
                    postcondition=_notified)


def notify_window_closed(ctx: RunContext) -> pd.DataFrame | None:
    """Tell the status page (and who asked for it) that the service is restored and being monitored."""
    return dispatch(ctx, StepName.NOTIFY_WINDOW_CLOSED, lambda c, s: _send(c, s, window_closed_message(c)),
                    postcondition=_notified)


# --- rollback completed (phase 05; sent at the run's end) --------------------------------------------

def completed_placeholder(ctx: RunContext) -> Message:
    return messages.completed(ctx.migration_id, ctx.env.name, duration="<the measured RTO>",
                              status="<from the validation>", next_steps="<post-mortem within 48 h: its draft>",
                              head="<the chain head the run ends at>", verify="<rollback verify-audit ...>")


def completed_step(ctx: RunContext) -> Step:
    return Step(StepName.NOTIFY_COMPLETED, Phase.CLOSE, "team, stakeholders and status page",
                "rollback completed: duration (the measured RTO), status, next steps and the audit chain's head",
                _actions(ctx, completed_placeholder(ctx)), requires=(StepName.HEALTH,),
                postcondition="each channel's outcome journaled")


def notify_completed(ctx: RunContext) -> pd.DataFrame:
    """The completion's requests, as planned; it is sent once the run has ended, with the chain head it ended at.

    The run's end (``rollbacklib.conclude``: ``rollback run``'s runner, 05's last cell, the lab stopping) journals the
    final head, then sends this (``rollbacklib.completion``): its duration is the measured RTO and its head is the
    one ``rollback verify-audit --head`` checks the whole run against.
    """
    def execute(c: RunContext, step: Step) -> pd.DataFrame:
        c.record(step.name, "info", "the completion is sent once the run has ended, with the chain head it ends at",
                 channels=[a.target for a in step.actions])
        return pd.DataFrame([{"channel": a.target, "request": a.text, "sent": "at the end of the run"}
                             for a in step.actions])

    return dispatch(ctx, ctx.planned(StepName.NOTIFY_COMPLETED), execute, postcondition=_notified)
