"""Each notification channel against a local stand-in that checks method, path, headers and body as the provider
documents them; retries bounded and journaled; SMTP with STARTTLS for real (aiosmtpd, a certificate made here)."""

from __future__ import annotations

import email
import email.policy
import ipaddress
import socket
import ssl
import time
from datetime import datetime, timedelta, timezone

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rollbacklib.notify import delivery, make_channel, messages
from rollbacklib.notify.settings import (EmailChannel, NotifySettings, Retry, SlackBotChannel, SlackWebhookChannel,
                                         StatuspageChannel)

# Token-shaped values are assembled at run time (a literal in the tree reads as a leaked secret to scanners).
BOT_TOKEN = "xo" + "xb-" + "-".join(("1" * 10, "2" * 10, "NotifyMarker" * 2))
WEBHOOK_PATH = "/" + "/".join(("services", "workspace", "channel", "WebhookMarker" * 2))  # not token-shaped
API_KEY = "statuspage-key-" + "KeyMarker" * 3

MESSAGE = messages.initiated("20251202020032_update_user_schema_final", "production", "rolling back the bad one",
                             "r1", "ana@host (cli)")


class Journal:
    """What ``RunContext.record`` receives, kept in order."""

    def __init__(self):
        self.events: list[dict] = []

    def __call__(self, step, status, message="", **evidence):
        event = {"ts": datetime.now(timezone.utc).isoformat(), "step": step, "status": status, "message": message,
                 "evidence": evidence}
        self.events.append(event)
        return event

    def attempts(self) -> list[dict]:
        return [e["evidence"][delivery.ATTEMPT] for e in self.events if delivery.ATTEMPT in e["evidence"]]


def test_slack_webhook_posts_the_text_as_json(httpserver, monkeypatch):
    monkeypatch.setenv("ROLLBACK_TEST_WEBHOOK", httpserver.url_for(WEBHOOK_PATH))
    httpserver.expect_oneshot_request(WEBHOOK_PATH, method="POST", json={"text": MESSAGE.text},
                                      headers={"Content-Type": "application/json"}).respond_with_data("ok")
    channel = make_channel("team", SlackWebhookChannel(kind="slack-webhook", webhook_url_env="ROLLBACK_TEST_WEBHOOK"))
    journal = Journal()
    outcome = delivery.send(channel, MESSAGE, Retry(), journal, "notify-initiated")
    httpserver.check_assertions()
    assert outcome["delivered"] and outcome["attempts"] == 1
    assert "🚨 PRODUCTION ROLLBACK INITIATED - Migration 20251202020032_update_user_schema_final" in MESSAGE.text
    shown = channel.request(MESSAGE).describe()  # what the plan and the journal show: the variable, not the URL
    assert shown == "POST $ROLLBACK_TEST_WEBHOOK (a Slack incoming webhook)"
    assert "WebhookMarker" not in repr(journal.events)


def test_slack_chat_post_message_sends_the_bot_token_and_checks_ok(httpserver, monkeypatch):
    monkeypatch.setenv("ROLLBACK_TEST_SLACK_TOKEN", BOT_TOKEN)
    body = {"channel": "#production-incidents", "text": MESSAGE.text}
    headers = {"Authorization": f"Bearer {BOT_TOKEN}", "Content-Type": "application/json"}
    httpserver.expect_ordered_request("/api/chat.postMessage", method="POST", json=body, headers=headers) \
        .respond_with_json({"ok": True, "channel": "C0123", "ts": "1733112000.000100"})
    httpserver.expect_ordered_request("/api/chat.postMessage", method="POST", json=body, headers=headers) \
        .respond_with_json({"ok": False, "error": "channel_not_found"})
    settings = SlackBotChannel(kind="slack", token_env="ROLLBACK_TEST_SLACK_TOKEN", channel="#production-incidents",
                               base_url=httpserver.url_for("/api"))
    journal = Journal()
    first = delivery.send(make_channel("team", settings), MESSAGE, Retry(attempts=1), journal, "notify-initiated")
    second = delivery.send(make_channel("team", settings), MESSAGE, Retry(attempts=1), journal, "notify-initiated")
    httpserver.check_assertions()
    assert first["delivered"] and first["ts"] == "1733112000.000100"
    assert not second["delivered"] and second["error"] == "Slack answered ok=false: channel_not_found"
    assert BOT_TOKEN not in repr(journal.events)


def test_statuspage_opens_the_incident_then_resolves_the_same_one(httpserver, monkeypatch):
    monkeypatch.setenv("ROLLBACK_TEST_STATUSPAGE_KEY", API_KEY)
    headers = {"Authorization": f"OAuth {API_KEY}", "Content-Type": "application/json"}
    httpserver.expect_ordered_request("/v1/pages/pg123/incidents", method="POST", headers=headers, json={"incident": {
        "name": "Database Maintenance - Authentication System", "status": "investigating", "impact_override": "major",
        "body": messages.PUBLIC_INITIATED, "component_ids": ["cmp1", "cmp2"],
        "components": {"cmp1": "major_outage", "cmp2": "major_outage"}}}) \
        .respond_with_json({"id": "inc42", "status": "investigating"}, status=201)
    completed = messages.completed("m", "production", duration="3 min", status="ok", next_steps="pm", head="h",
                                   verify="v")
    httpserver.expect_ordered_request("/v1/pages/pg123/incidents/inc42", method="PATCH", headers=headers, json={
        "incident": {"status": "resolved", "body": messages.PUBLIC_RESOLVED, "component_ids": ["cmp1", "cmp2"],
                     "components": {"cmp1": "operational", "cmp2": "operational"}}}) \
        .respond_with_json({"id": "inc42", "status": "resolved"})
    settings = StatuspageChannel(kind="statuspage", api_key_env="ROLLBACK_TEST_STATUSPAGE_KEY", page_id="pg123",
                                 base_url=httpserver.url_for("/"), component_ids=["cmp1", "cmp2"])
    store: dict = {}  # the run's state keeps it between phases (and kernels)
    journal = Journal()
    opened = delivery.send(make_channel("status", settings, store=store), MESSAGE, Retry(), journal, "notify-initiated")
    assert opened["delivered"] and store == {"incident_id": "inc42"}
    resolved = delivery.send(make_channel("status", settings, store=dict(store)), completed, Retry(), journal,
                             "notify-completed")
    httpserver.check_assertions()
    assert resolved["delivered"] and resolved["incident_id"] == "inc42"
    assert API_KEY not in repr(journal.events)


def test_statuspage_follows_the_outage_window_identified_then_monitoring(httpserver, monkeypatch):
    monkeypatch.setenv("ROLLBACK_TEST_STATUSPAGE_KEY", API_KEY)
    headers = {"Authorization": f"OAuth {API_KEY}", "Content-Type": "application/json"}
    incident = "/v1/pages/pg123/incidents/inc42"
    httpserver.expect_ordered_request("/v1/pages/pg123/incidents", method="POST", headers=headers) \
        .respond_with_json({"id": "inc42", "status": "investigating"}, status=201)
    httpserver.expect_ordered_request(incident, method="PATCH", headers=headers, json={"incident": {
        "status": "identified", "body": messages.PUBLIC_WINDOW_OPEN, "component_ids": ["cmp1"],
        "components": {"cmp1": "partial_outage"}}}).respond_with_json({"id": "inc42", "status": "identified"})
    httpserver.expect_ordered_request(incident, method="PATCH", headers=headers, json={"incident": {
        "status": "monitoring", "body": messages.PUBLIC_WINDOW_CLOSED, "component_ids": ["cmp1"],
        "components": {"cmp1": "operational"}}}).respond_with_json({"id": "inc42", "status": "monitoring"})
    settings = StatuspageChannel(kind="statuspage", api_key_env="ROLLBACK_TEST_STATUSPAGE_KEY", page_id="pg123",
                                 base_url=httpserver.url_for("/"), component_ids=["cmp1"],
                                 window_component_status="partial_outage")
    assert settings.events == ["initiated", "window-open", "window-closed", "completed"]  # the status page's default
    store: dict = {}
    journal = Journal()
    opened = delivery.send(make_channel("status", settings, store=store), MESSAGE, Retry(), journal,
                           "notify-initiated")
    window_open = messages.window_open("m", "production", "r1")
    window_closed = messages.window_closed("m", "production", "r1")
    during = delivery.send(make_channel("status", settings, store=dict(store)), window_open, Retry(), journal,
                           "notify-window-open")
    after = delivery.send(make_channel("status", settings, store=dict(store)), window_closed, Retry(), journal,
                          "notify-window-closed")
    httpserver.check_assertions()
    assert [o["incident_status"] for o in (opened, during, after)] == ["investigating", "identified", "monitoring"]
    assert during["request"] == f"PATCH {httpserver.url_for(incident)}" and after["delivered"]
    assert API_KEY not in repr(journal.events)


def test_a_window_update_without_an_incident_is_reported_not_sent(httpserver, monkeypatch):
    monkeypatch.setenv("ROLLBACK_TEST_STATUSPAGE_KEY", API_KEY)
    settings = StatuspageChannel(kind="statuspage", api_key_env="ROLLBACK_TEST_STATUSPAGE_KEY", page_id="pg123",
                                 base_url=httpserver.url_for("/"))
    outcome = delivery.send(make_channel("status", settings, store={}), messages.window_open("m", "production", "r1"),
                            Retry(attempts=3), Journal(), "notify-window-open")  # the creation failed: no id kept
    assert not outcome["delivered"] and outcome["attempts"] == 1 and not httpserver.log
    assert outcome["error"].startswith("no Statuspage incident was opened by this run")


def test_slack_carries_the_window_only_when_its_events_list_it():
    quiet = SlackBotChannel(kind="slack", token_env="ROLLBACK_TEST_SLACK_TOKEN", channel="#c")
    loud = SlackBotChannel(kind="slack", token_env="ROLLBACK_TEST_SLACK_TOKEN", channel="#c",
                           events=["initiated", "window-open", "completed"])
    settings = NotifySettings(channels={"quiet": quiet, "loud": loud})
    assert [c.name for c in delivery.channels(settings, "window-open")] == ["loud"]
    assert delivery.channels(settings, "window-closed") == []


def test_the_report_measures_the_status_page_from_the_journal():
    from rollbacklib.report.communication import status_page

    def sent(ts: str, event: str, status: str | None, delivered: bool = True) -> dict:
        return {"ts": f"2026-12-02T03:{ts}+00:00", "step": f"notify-{event}", "status": "info", "evidence": {
            delivery.OUTCOME: {"channel": "status", "kind": "statuspage", "event": event, "delivered": delivered,
                               "attempts": 1, "error": None, "http_status": 200, "seconds": 0.1,
                               "request": "PATCH https://status.example/v1/pages/p/incidents/i",
                               "incident_status": status}}}

    events = [{"ts": "2026-12-02T03:00:00+00:00", "step": "attempt", "status": "info", "evidence": {}},
              sent("00:42", "initiated", "investigating"), sent("05:00", "window-open", None, delivered=False),
              sent("05:10", "window-open", "identified"), sent("09:00", "window-closed", "monitoring")]
    rows = status_page(events)
    assert rows[0]["item"].startswith("Status page first updated 42.0 s after the run's start")
    assert rows[0]["state"] == "proved"  # under the drill's 3 minutes
    assert [r["item"] for r in rows[1:]] == ["Status page status: investigating", "Status page status: identified",
                                             "Status page status: monitoring"]  # the failed attempt is not one
    assert rows[2]["evidence"].startswith("at 03:05:10 UTC, 310.0 s after the start (window-open)")
    late = [events[0], sent("04:00", "initiated", "investigating")]
    assert status_page(late)[0]["state"] == "failed" and status_page(events[:1]) == []


def test_a_500_is_retried_with_backoff_and_reported_without_raising(httpserver, monkeypatch):
    monkeypatch.setenv("ROLLBACK_TEST_WEBHOOK", httpserver.url_for(WEBHOOK_PATH))
    httpserver.expect_request(WEBHOOK_PATH, method="POST").respond_with_data("boom", status=500)
    channel = make_channel("team", SlackWebhookChannel(kind="slack-webhook", webhook_url_env="ROLLBACK_TEST_WEBHOOK"))
    journal, slept = Journal(), []
    outcome = delivery.send(channel, MESSAGE, Retry(attempts=3, backoff_seconds=0.2), journal, "notify-initiated",
                            sleep=slept.append)
    assert not outcome["delivered"] and outcome["attempts"] == 3 and outcome["http_status"] == 500
    assert slept == [0.2, 0.4]  # doubled before each later attempt
    assert [a["attempt"] for a in journal.attempts()] == [1, 2, 3]
    assert all(a["http_status"] == 500 for a in journal.attempts())
    assert len(httpserver.log) == 3
    assert journal.events[-1]["message"].startswith("notification team failed: HTTP 500")


def test_a_refusal_another_attempt_cannot_change_is_reported_at_once(httpserver, monkeypatch):
    monkeypatch.setenv("ROLLBACK_TEST_WEBHOOK", httpserver.url_for(WEBHOOK_PATH))
    httpserver.expect_request(WEBHOOK_PATH, method="POST").respond_with_data("no_service", status=404)
    channel = make_channel("team", SlackWebhookChannel(kind="slack-webhook", webhook_url_env="ROLLBACK_TEST_WEBHOOK"))
    outcome = delivery.send(channel, MESSAGE, Retry(attempts=3), Journal(), "notify-initiated")
    assert not outcome["delivered"] and outcome["attempts"] == 1 and outcome["error"] == "HTTP 404: no_service"
    assert len(httpserver.log) == 1


def test_an_endpoint_that_never_answers_is_bounded_by_max_seconds(monkeypatch):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the backlog; nothing ever answers
    try:
        monkeypatch.setenv("ROLLBACK_TEST_WEBHOOK", f"http://127.0.0.1:{silent.getsockname()[1]}{WEBHOOK_PATH}")
        channel = make_channel("team", SlackWebhookChannel(kind="slack-webhook",
                                                           webhook_url_env="ROLLBACK_TEST_WEBHOOK"))
        journal = Journal()
        started = time.monotonic()
        outcome = delivery.send(channel, MESSAGE, Retry(attempts=5, backoff_seconds=0.05, timeout_seconds=0.4,
                                                        max_seconds=1.0), journal, "notify-initiated")
        took = time.monotonic() - started
    finally:
        silent.close()
    assert not outcome["delivered"] and outcome["error"].startswith("timed out")
    assert took < 1.6, took
    assert 2 <= outcome["attempts"] <= 3


def test_a_missing_secret_is_a_failed_notification_not_a_crash(monkeypatch):
    monkeypatch.delenv("ROLLBACK_TEST_SLACK_TOKEN", raising=False)
    settings = NotifySettings(channels={"team": SlackBotChannel(kind="slack", token_env="ROLLBACK_TEST_SLACK_TOKEN",
                                                                channel="#c", base_url="http://127.0.0.1:9")},
                              retry=Retry(attempts=1))
    journal = Journal()
    [outcome] = delivery.send_all(settings, MESSAGE, journal, "notify-initiated")
    assert outcome["error"] == "environment variable ROLLBACK_TEST_SLACK_TOKEN (the Slack bot token) is not set"


# --- e-mail: SMTP with STARTTLS ------------------------------------------------------------------------

def _certificate(folder):
    now = datetime.now(timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (folder / "smtp.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "smtp.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return folder / "smtp.crt", folder / "smtp.key"


class Inbox:
    def __init__(self):
        self.messages, self.logins, self.tls = [], [], []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        self.tls.append(session.ssl is not None)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server(tmp_path):
    cert, key = _certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox = Inbox()

    def authenticate(server, session, envelope, mechanism, auth_data):
        inbox.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password.decode() == "smtp-" + "PasswordMarker")

    with socket.socket() as probe:  # a free port (the controller checks its own port once started)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
                            authenticator=authenticate, auth_require_tls=True)
    controller.start()
    yield controller, inbox, cert
    controller.stop()


def _email(controller, cert, **extra) -> EmailChannel:
    return EmailChannel(kind="email", host="127.0.0.1", port=controller.port,
                        sender="rollback@example.com", to=["stakeholders@example.com"], ca_file=cert,
                        username_env="ROLLBACK_TEST_SMTP_USER", password_env="ROLLBACK_TEST_SMTP_PASSWORD", **extra)


def test_email_goes_over_starttls_with_the_login_from_env_vars(smtp_server, monkeypatch):
    controller, inbox, cert = smtp_server
    monkeypatch.setenv("ROLLBACK_TEST_SMTP_USER", "rollback-bot")
    monkeypatch.setenv("ROLLBACK_TEST_SMTP_PASSWORD", "smtp-" + "PasswordMarker")
    journal = Journal()
    outcome = delivery.send(make_channel("mail", _email(controller, cert)), MESSAGE, Retry(), journal,
                            "notify-initiated")
    assert outcome["delivered"], outcome
    [envelope] = inbox.messages
    assert inbox.tls == [True] and inbox.logins == [("rollback-bot", "smtp-PasswordMarker")]
    assert envelope.mail_from == "rollback@example.com" and envelope.rcpt_tos == ["stakeholders@example.com"]
    mail = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
    assert mail["Subject"] == MESSAGE.subject and mail["To"] == "stakeholders@example.com"
    assert mail.get_content().replace("\r\n", "\n").strip() == MESSAGE.text
    assert "PasswordMarker" not in repr(journal.events)


def test_email_is_never_sent_in_the_clear_to_a_server_without_starttls(monkeypatch):
    inbox = Inbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)  # no TLS offered
    controller.start()
    try:
        monkeypatch.setenv("ROLLBACK_TEST_SMTP_USER", "rollback-bot")
        monkeypatch.setenv("ROLLBACK_TEST_SMTP_PASSWORD", "smtp-" + "PasswordMarker")
        settings = EmailChannel(kind="email", host="127.0.0.1", port=port, sender="rollback@example.com",
                                to=["stakeholders@example.com"], username_env="ROLLBACK_TEST_SMTP_USER",
                                password_env="ROLLBACK_TEST_SMTP_PASSWORD")
        outcome = delivery.send(make_channel("mail", settings), MESSAGE, Retry(attempts=1), Journal(),
                                "notify-initiated")
    finally:
        controller.stop()
    assert not outcome["delivered"] and not inbox.messages
    assert outcome["error"] == f"127.0.0.1:{port} does not offer STARTTLS: not sent in the clear"
