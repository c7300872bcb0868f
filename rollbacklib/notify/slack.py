"""Slack: an incoming webhook (the URL is the secret) and the Web API's ``chat.postMessage`` with a bot token.

Incoming webhook: ``POST`` the webhook URL with a JSON body ``{"text": ...}``; Slack answers 200 ``ok``.
``chat.postMessage``: ``POST {base_url}/chat.postMessage`` with ``Authorization: Bearer <token>`` and a JSON
body ``{"channel": ..., "text": ...}``; the answer is JSON whose ``ok`` says whether it was posted (an HTTP 200
with ``"ok": false`` and an ``error`` is a failure).
"""

from __future__ import annotations

import httpx

from rollbacklib.notify.base import Channel, Message, Request, SendError, http_error, secret


class SlackWebhook(Channel):
    kind = "slack-webhook"

    def request(self, message: Message) -> Request:
        return Request("POST", f"${self.settings.webhook_url_env} (a Slack incoming webhook)", {"text": message.text})

    def send(self, message: Message) -> dict:
        url = secret(self.settings.webhook_url_env, "the Slack webhook URL")
        try:
            answer = httpx.post(url, json={"text": message.text}, timeout=self.timeout)
        except httpx.HTTPError as err:
            raise http_error(err) from None
        if answer.status_code != 200:
            raise SendError(f"HTTP {answer.status_code}: {answer.text[:200]}", answer.status_code)
        return {"http_status": answer.status_code}


class SlackBot(Channel):
    kind = "slack"

    def url(self) -> str:
        return self.settings.base_url.rstrip("/") + "/chat.postMessage"

    def request(self, message: Message) -> Request:
        return Request("POST", self.url(), {"channel": self.settings.channel, "text": message.text})

    def send(self, message: Message) -> dict:
        token = secret(self.settings.token_env, "the Slack bot token")
        try:
            answer = httpx.post(self.url(), json={"channel": self.settings.channel, "text": message.text},
                                headers={"Authorization": f"Bearer {token}"}, timeout=self.timeout)
        except httpx.HTTPError as err:
            raise http_error(err) from None
        if answer.status_code != 200:
            raise SendError(f"HTTP {answer.status_code}: {answer.text[:200]}", answer.status_code)
        try:
            body = answer.json()
        except ValueError:
            raise SendError("HTTP 200 but the answer is not JSON", 200) from None
        if body.get("ok") is not True:
            raise SendError(f"Slack answered ok=false: {body.get('error', 'no error given')}", 200, retry=False)
        return {"http_status": 200, "channel": body.get("channel"), "ts": body.get("ts")}
