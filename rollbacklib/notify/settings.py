"""The config of notifications and escalation, validated: every secret by the NAME of an env var, every base URL set.

``[environments.<env>.notify]`` holds the environment's channels (``[environments.<env>.notify.channels.<name>]``,
one of four kinds) and how a send is retried; ``[escalation]`` holds the seed's levels L1..L5 (who, how to reach
them), the channel that carries escalations and when the run escalates to L2 on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from rollbacklib.config_base import _env_var_name, _Strict

EVENTS = ("initiated", "window-open", "window-closed", "completed", "escalation")
Event = Literal["initiated", "window-open", "window-closed", "completed", "escalation"]
ComponentStatus = Literal["operational", "under_maintenance", "degraded_performance", "partial_outage", "major_outage"]


def _env(value: str | None) -> str | None:
    return None if value is None else _env_var_name(value)


class Retry(_Strict):
    """How one message is retried on one channel: bounded by ``max_seconds`` whatever the endpoint does."""

    attempts: int = Field(3, ge=1, le=10)
    backoff_seconds: float = Field(0.25, ge=0)  # before the 2nd attempt; doubled before each later one
    timeout_seconds: float = Field(2.0, gt=0)  # one request (connect, send, answer)
    max_seconds: float = Field(5.0, gt=0)  # every attempt of one message on one channel, backoff included


class SlackWebhookChannel(_Strict):
    """A Slack incoming webhook: ``POST <webhook URL>`` with ``{"text": ...}``. The URL is a secret: by env var name."""

    kind: Literal["slack-webhook"]
    webhook_url_env: str
    events: list[Event] = ["initiated", "completed", "escalation"]

    _check = field_validator("webhook_url_env")(_env_var_name)


class SlackBotChannel(_Strict):
    """Slack's Web API ``chat.postMessage`` with a bot token (``Authorization: Bearer``)."""

    kind: Literal["slack"]
    token_env: str
    channel: str  # "#production-incidents" or a channel ID
    base_url: str = "https://slack.com/api"
    events: list[Event] = ["initiated", "completed", "escalation"]

    _check = field_validator("token_env")(_env_var_name)


class StatuspageChannel(_Strict):
    """Statuspage REST API v1: the incident opened at the start, updated around the outage window, resolved last."""

    kind: Literal["statuspage"]
    api_key_env: str
    page_id: str
    base_url: str = "https://api.statuspage.io"
    component_ids: list[str] = []
    component_status: ComponentStatus = "major_outage"  # from the start until the window opens
    window_component_status: ComponentStatus = "major_outage"  # while the services are stopped (window-open)
    impact: Literal["none", "minor", "major", "critical"] = "major"
    incident_name: str = "Database Maintenance - Authentication System"
    events: list[Event] = ["initiated", "window-open", "window-closed", "completed"]

    _check = field_validator("api_key_env")(_env_var_name)


class EmailChannel(_Strict):
    """E-mail over SMTP with STARTTLS (smtplib); the login's user and password by env var name."""

    kind: Literal["email"]
    host: str
    port: int = 587
    sender: str
    to: list[str] = Field(min_length=1)
    starttls: bool = True
    username_env: str | None = None
    password_env: str | None = None
    ca_file: Path | None = None  # a private CA to trust for STARTTLS (else the system's)
    events: list[Event] = ["initiated", "completed", "escalation"]

    _check = field_validator("username_env", "password_env")(_env)


ChannelSettings = Annotated[Union[SlackWebhookChannel, SlackBotChannel, StatuspageChannel, EmailChannel],
                            Field(discriminator="kind")]


class NotifySettings(_Strict):
    channels: dict[str, ChannelSettings] = {}
    retry: Retry = Retry()


class Contact(_Strict):
    who: str
    reach: str = ""  # how: "+34 600 000 000, @ana on Slack"


class Escalation(_Strict):
    """The seed's escalation path: who each level is, the channel that carries escalations, the L2 timer."""

    channel: str | None = None  # a channel name of the environment's notify.channels
    after_seconds: float = Field(1200, gt=0)  # the run not finished after this: L2 (the seed's 20 min)
    L1: Contact = Contact(who="On-Call Engineer")
    L2: Contact = Contact(who="Lead Engineer")
    L3: Contact = Contact(who="DevOps Lead")
    L4: Contact = Contact(who="CTO")
    L5: Contact = Contact(who="CEO + Legal")

    def contact(self, level: str) -> Contact | None:
        return getattr(self, level, None) if level in ("L1", "L2", "L3", "L4", "L5") else None
