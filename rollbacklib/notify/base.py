"""What every notification channel is: the request it will make (shown before, without secrets) and the send.

A ``Message`` is what the runbook has to say (one event of the run); a channel turns it into one
request to its system (``request``: method, URL without secrets, body, for the plan and the journal)
and makes it (``send``), raising ``SendError`` with the HTTP status or the error when it was not
accepted. Retrying, journaling and never blocking the run are ``rollbacklib.notify.delivery``'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Message:
    event: str  # initiated | window-open | window-closed | completed | escalation
    subject: str  # one line: the e-mail's subject
    text: str  # what the team reads (Slack, e-mail)
    public: str = ""  # what the status page says to customers
    status: str = ""  # the status page incident's status: investigating, identified, monitoring, resolved
    level: str | None = None  # an escalation's level (L1..L5)


@dataclass(frozen=True)
class Request:
    """One request as shown and journaled: never a token, key, password or webhook URL."""

    method: str
    url: str
    body: dict | str = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.method} {self.url}"


class SendError(Exception):
    """The channel did not accept the message: ``status`` is the HTTP status (or SMTP code) when there was one.

    ``retry`` is False when another attempt cannot help (a secret not set, a request refused as malformed or
    unauthorized, nothing to update): the message is reported at once.
    """

    def __init__(self, error: str, status: int | None = None, *, retry: bool | None = None):
        self.error, self.status = error, status
        self.retry = retry if retry is not None else not (status is not None and 400 <= status < 500 and status
                                                          not in (408, 429))
        super().__init__(error)


class Channel:
    """A notification channel of one kind, named in the config; ``store`` keeps what a later send needs (state)."""

    kind = ""
    default_events: tuple[str, ...] = ()

    def __init__(self, name: str, settings, *, timeout: float = 2.0, store: dict | None = None):
        self.name, self.settings, self.timeout = name, settings, timeout
        self.store = store if store is not None else {}

    def handles(self, event: str) -> bool:
        return event in self.settings.events

    def request(self, message: Message) -> Request:
        raise NotImplementedError

    def send(self, message: Message) -> dict:
        """Make the request; return what the answer proved (status, ids). Raise ``SendError`` otherwise."""
        raise NotImplementedError


def secret(env_name: str, what: str) -> str:
    """The value of the env var a channel names for a secret, read at the moment of sending."""
    value = os.environ.get(env_name)
    if not value:
        raise SendError(f"environment variable {env_name} ({what}) is not set", retry=False)
    return value


def http_error(err: Exception) -> SendError:
    """An httpx transport error as a SendError naming its kind, never the URL it was sent to."""
    import httpx

    if isinstance(err, httpx.TimeoutException):
        return SendError(f"timed out ({type(err).__name__})")
    return SendError(f"{type(err).__name__}: could not reach the endpoint")
