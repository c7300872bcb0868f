"""Sending a message to the environment's channels: bounded retries with backoff, every attempt journaled, never raising.

Each attempt is a journal event (``notify-attempt``: channel, kind, attempt, HTTP status or error), and each
message on each channel ends in one ``notification`` event (``delivered`` true or false, with the last error):
what the report lists ("notification X failed: ..."). No secret reaches them: the request is described
without its token, key or webhook URL, and the journal masks every secret the config names besides.
"""

from __future__ import annotations

import time
from typing import Callable

from rollbacklib.notify import make_channel
from rollbacklib.notify.base import Channel, Message, SendError
from rollbacklib.notify.settings import NotifySettings, Retry

ATTEMPT, OUTCOME = "notify-attempt", "notification"
Record = Callable[..., dict]  # RunContext.record's signature: (step, status, message, **evidence)


def channels(settings: NotifySettings | None, event: str, stores: dict | None = None,
             only: str | None = None) -> list[Channel]:
    """The configured channels that carry ``event`` (or the one named ``only``), in config order."""
    if settings is None:
        return []
    stores = stores if stores is not None else {}
    return [make_channel(name, s, timeout=settings.retry.timeout_seconds, store=stores.setdefault(name, {}))
            for name, s in settings.channels.items()
            if (only is None and event in s.events) or (only is not None and name == only)]


def send(channel: Channel, message: Message, retry: Retry, record: Record, step: str, *,
         sleep: Callable[[float], None] = time.sleep) -> dict:
    """Send ``message`` on ``channel`` until it is accepted or ``retry`` runs out; journal each attempt. Never raises."""
    started = time.monotonic()
    request = channel.request(message)
    error, status, answer, again = "", None, {}, True
    for attempt in range(1, retry.attempts + 1):
        left = retry.max_seconds - (time.monotonic() - started)
        if left <= 0:
            error = error or "no time left"
            break
        channel.timeout = min(retry.timeout_seconds, left)
        try:
            answer = channel.send(message)
        except SendError as err:
            error, status, again = err.error, err.status, err.retry
        except Exception as err:  # noqa: BLE001 - a notification never stops the rollback
            error, status = f"{type(err).__name__}: {err}", None
        else:
            error, status = "", answer.get("http_status")
        record(step, "info", f"{channel.name}: attempt {attempt}: " + (f"accepted ({request.describe()})" if not error
                                                                       else f"{error}"),
               **{ATTEMPT: {"channel": channel.name, "kind": channel.kind, "event": message.event,
                            "attempt": attempt, "http_status": status, "error": error or None,
                            "request": request.describe()}})
        if not error or not again:  # accepted, or another attempt cannot help
            break
        pause = retry.backoff_seconds * (2 ** (attempt - 1))
        if attempt < retry.attempts and time.monotonic() - started + pause < retry.max_seconds:
            sleep(pause)
        elif attempt < retry.attempts:
            break
    delivered = not error
    outcome = {"channel": channel.name, "kind": channel.kind, "event": message.event, "delivered": delivered,
               "attempts": attempt, "error": error or None, "http_status": status,
               "seconds": round(time.monotonic() - started, 3), "request": request.describe(),
               **{k: v for k, v in answer.items() if k in ("incident_id", "incident_status", "ts")}}
    text = (f"notification {channel.name} delivered ({message.event})" if delivered
            else f"notification {channel.name} failed: {error} (after {attempt} attempt(s); the run goes on)")
    record(step, "info", text, **{OUTCOME: outcome})
    return outcome


def send_all(settings: NotifySettings | None, message: Message, record: Record, step: str, *,
             stores: dict | None = None, only: str | None = None) -> list[dict]:
    """``message`` to every channel that carries its event, one after the other (in config order). Never raises."""
    return [send(c, message, settings.retry, record, step) for c in channels(settings, message.event, stores, only)]


def outcomes(events: list[dict]) -> list[dict]:
    """Every notification's outcome the journal holds, in order, with when it was journaled."""
    return [{**e["evidence"][OUTCOME], "at": e["ts"], "step": e["step"]} for e in events
            if isinstance(e.get("evidence"), dict) and OUTCOME in e["evidence"]]
