"""Notifications: one module per system (slack, statuspage, smtp) behind one small interface (``base.Channel``).

Channels are chosen by ``kind`` from ``[environments.<env>.notify.channels.<name>]``; ``delivery`` sends a
message to them with bounded retries, journals every attempt, and never raises: a channel that stays down
is reported, and the run goes on to its normal outcome.
"""

from __future__ import annotations

from rollbacklib.notify.base import Channel, Message, Request, SendError
from rollbacklib.notify.slack import SlackBot, SlackWebhook
from rollbacklib.notify.smtp import Email
from rollbacklib.notify.statuspage import Statuspage

KINDS: dict[str, type[Channel]] = {c.kind: c for c in (SlackWebhook, SlackBot, Statuspage, Email)}


def make_channel(name: str, settings, *, timeout: float = 2.0, store: dict | None = None) -> Channel:
    """The channel of ``settings.kind`` (validated by the config, so always known)."""
    return KINDS[settings.kind](name, settings, timeout=timeout, store=store)


__all__ = ["Channel", "Message", "Request", "SendError", "KINDS", "make_channel"]
