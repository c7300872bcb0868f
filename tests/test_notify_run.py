"""Notifications and escalation in real runs on a real server: a channel answering 500 and one that never answers do
not stop the rollback (exit 0, the failures in run.json and the report), the team channel gets "initiated" then
"completed" (with the measured RTO and the audit chain's head) in order, the status page incident is opened and
resolved; a failing step escalates with its level, who it is and the next action; the L2 timer fires once; no
secret reaches any file of the run."""

from __future__ import annotations

import json
import socket
import time

import pytest
from typer.testing import CliRunner
from werkzeug import Request, Response

from rollbacklib import escalation
from rollbacklib.audit import verify_audit
from rollbacklib.cli import app
from rollbacklib.journal import read_events
from rollbacklib.notify import delivery
from rollbacklib.phases import notify
from rollbacklib.pipeline import run_phases
from rollbacklib.run import open_run
from rollbacklib.steps import read_plan

from conftest import CONFIG, DRILL_URL_ENV, MIGRATION, plain_gz

runner = CliRunner()

# Token-shaped values are assembled at run time (a literal in the tree reads as a leaked secret to scanners).
BOT_TOKEN = "xo" + "xb-" + "-".join(("3" * 10, "4" * 10, "RunTokenMarker" * 2))
WEBHOOK_SECRET = "/" + "/".join(("services", "workspace", "channel", "RunWebhookMarker" * 2))  # not token-shaped
API_KEY = "statuspage-" + "RunKeyMarker" * 3
MARKERS = ("RunTokenMarker", "RunWebhookMarker", "RunKeyMarker")


def _config(tmp_path, extra: str) -> str:
    text = CONFIG.read_text().replace('"scenarios/', f'"{CONFIG.resolve().parent}/scenarios/')
    path = tmp_path / "runbook.toml"
    path.write_text(text + extra)
    return str(path)


def _channels(team_url: str, down_port: int, status_url: str, silent_port: int) -> str:
    return f"""
[environments.drill.notify.retry]
attempts = 2
backoff_seconds = 0.1
timeout_seconds = 0.5
max_seconds = 1.5

[environments.drill.notify.channels.team]
kind = "slack"
token_env = "ROLLBACK_TEST_SLACK_TOKEN"
channel = "#production-incidents"
base_url = "{team_url}"

[environments.drill.notify.channels.down]
kind = "slack-webhook"
webhook_url_env = "ROLLBACK_TEST_WEBHOOK"

[environments.drill.notify.channels.status]
kind = "statuspage"
api_key_env = "ROLLBACK_TEST_STATUSPAGE_KEY"
page_id = "pg1"
base_url = "{status_url}"
component_ids = ["auth"]

[environments.drill.notify.channels.silent]
kind = "slack"
token_env = "ROLLBACK_TEST_SLACK_TOKEN"
channel = "#nobody"
base_url = "http://127.0.0.1:{silent_port}/api"

[escalation]
channel = "team"
L3 = {{ who = "Dani", reach = "+34 600 000 003" }}
"""


@pytest.fixture
def silent_port():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections wait in the backlog; nothing ever answers
    yield silent.getsockname()[1]
    silent.close()


def _incident_updated(request: Request) -> Response:
    """Statuspage's answer to an update: the incident with the status it was given."""
    return Response(json.dumps({"id": "inc7", "status": request.get_json()["incident"]["status"]}), 200,
                    content_type="application/json")


def _secrets(monkeypatch, httpserver):
    monkeypatch.setenv("ROLLBACK_TEST_SLACK_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("ROLLBACK_TEST_WEBHOOK", httpserver.url_for(WEBHOOK_SECRET))
    monkeypatch.setenv("ROLLBACK_TEST_STATUSPAGE_KEY", API_KEY)


def _no_marker_in(folder, output: str = "") -> None:
    for path in [p for p in folder.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        for marker in MARKERS:
            assert marker.encode() not in data, f"{marker} in {path}"
    for marker in MARKERS:
        assert marker not in output


def test_notifications_down_or_silent_do_not_stop_the_rollback(incident, tmp_path, httpserver, silent_port,
                                                               monkeypatch):
    _secrets(monkeypatch, httpserver)
    httpserver.expect_request("/api/chat.postMessage", method="POST",
                              headers={"Authorization": f"Bearer {BOT_TOKEN}"}).respond_with_json({"ok": True, "ts": "1"})
    httpserver.expect_request(WEBHOOK_SECRET, method="POST").respond_with_data("down", status=500)
    httpserver.expect_request("/v1/pages/pg1/incidents", method="POST",
                              headers={"Authorization": f"OAuth {API_KEY}"}).respond_with_json(
        {"id": "inc7", "status": "investigating"}, status=201)
    httpserver.expect_request("/v1/pages/pg1/incidents/inc7", method="PATCH",
                              headers={"Authorization": f"OAuth {API_KEY}"}).respond_with_handler(_incident_updated)
    acks = tmp_path / "acks.json"
    acks.write_text(json.dumps({"checklist:team:lead-engineer-available": {"by": "Marta", "at": "2025-12-02T03:01:00Z"},
                                "checklist:communication:support-team-notified": {"by": "Joan"}}))
    config = _config(tmp_path, _channels(httpserver.url_for("/api"), 0, httpserver.url_for("/"), silent_port)
                     + f'\n[checklists]\nacknowledgements_file = "{acks}"\n')

    result = run_phases(migration_id=MIGRATION, environment="drill", config_path=config,
                        reports_dir=str(incident.reports), run_id="notified", approve=MIGRATION,
                        backup=str(incident.backup))

    assert result.exit_code == 0, result.summary.get("error")
    sent = [(r.method, r.path, r.get_json(silent=True)) for r, _ in httpserver.log]
    team = [body["text"] for method, path, body in sent if path == "/api/chat.postMessage"]
    assert len(team) == 2, sent  # in order: initiated at the start, completed at the close
    assert team[0].startswith(f"🚨 PRODUCTION ROLLBACK INITIATED - Migration {MIGRATION} - Reason: rolling back")
    assert team[1].startswith("✅ ROLLBACK COMPLETED SUCCESSFULLY") and "Audit chain head: " in team[1]
    status = [(m, p, b["incident"]["status"], b["incident"]["components"]) for m, p, b in sent
              if p.startswith("/v1/pages/")]
    same = "/v1/pages/pg1/incidents/inc7"  # opened, then the same incident updated through the window, resolved
    assert status == [("POST", "/v1/pages/pg1/incidents", "investigating", {"auth": "major_outage"}),
                      ("PATCH", same, "identified", {"auth": "major_outage"}),
                      ("PATCH", same, "monitoring", {"auth": "operational"}),
                      ("PATCH", same, "resolved", {"auth": "operational"})]
    events = read_events(result.run_dir)
    order = [e["step"] for e in events if e["status"] == "ok"]  # the window notices bracket the outage
    assert order.index("gate") < order.index("notify-window-open") < order.index("stop-services")
    assert order.index("smoke-tests") < order.index("notify-window-closed") < order.index("notify-completed")
    assert sum(1 for _, p, _ in sent if p == WEBHOOK_SECRET) == 4  # two attempts for each of the two messages

    run = json.loads((result.run_dir / "run.json").read_text())
    every = delivery.outcomes(read_events(result.run_dir))  # run.json's, then the completion's after the end
    by = {(n["channel"], n["event"]): n for n in every}
    assert by[("down", "initiated")]["delivered"] is False and by[("down", "initiated")]["http_status"] == 500
    assert by[("silent", "initiated")]["delivered"] is False and by[("silent", "completed")]["delivered"] is False
    assert by[("silent", "completed")]["error"].startswith("timed out")
    assert by[("team", "completed")]["delivered"] and by[("status", "completed")]["delivered"]
    assert all(n["seconds"] <= 2.0 for n in every)  # bounded by max_seconds (and one timeout)
    assert [n["channel"] for n in run["notifications"] if not n["delivered"]] == ["down", "silent"]
    milestones = {m["milestone"]: m for m in run["milestones"]}  # measured from the deliveries, not for people
    assert milestones["team notified"]["status"] == "pass" and milestones["status page updated"]["status"] == "pass"

    # the message carries the head the run ended at, and the folder verifies against it with the sends after it
    head = team[1].split("Audit chain head: ")[1].split()[0]
    assert head == result.summary["audit"]["head"]  # the one the run printed at its end
    assert verify_audit(result.run_dir, head=head).intact
    sent_after = [e for e in events if e["step"] == "notified" and "notification" in e["evidence"]]
    assert {n["evidence"]["notification"]["channel"] for n in sent_after} == {"team", "down", "status", "silent"}
    report = (result.run_dir / "report.html").read_text()
    assert "notification down failed: HTTP 500" in report and "notification silent failed: timed out" in report

    # the checklists of 01: proved from the evidence, acknowledged from the file (who, when), the rest open
    acked = {e["evidence"]["acknowledgement"]["key"]: e["evidence"]["acknowledgement"] for e in events
             if "acknowledgement" in e["evidence"]}
    assert acked["checklist:team:lead-engineer-available"]["acknowledged_by"] == "Marta"
    assert acked["checklist:communication:support-team-notified"]["acknowledged_by"] == "Joan"
    [lists] = [e["evidence"]["checklists"] for e in events if "checklists" in e["evidence"]]
    state = {row["item"]: row["state"] for rows in lists.values() for row in rows}
    assert state["Stakeholders notified of the critical problem"] == "proved"
    assert state["Status page updated"] == "proved"
    assert state["Production backup created and verified (taken < 1 h before the migration)"] == "proved"
    assert state["Lead Engineer available"] == "acknowledged" and state["DevOps Lead available"] == "for people"
    assert "acknowledged by Marta at 2025-12-02T03:01:00Z" in report
    assert "Notification team (slack): initiated" in report and "delivered at" in report
    postmortem = (result.run_dir / "postmortem.md").read_text()
    assert "Notification team (slack) delivered: initiated" in postmortem
    assert "Notification down (slack-webhook, initiated) failed: HTTP 500" in postmortem
    assert "Status page first updated " in report
    for status in ("investigating", "identified", "monitoring"):  # resolved is sent after the report is written
        assert f"Status page status: {status}" in report
    _no_marker_in(result.run_dir)

    # 02's cell run again (as a resume or a person would): done in this run, so the window is not announced twice
    ctx = open_run(migration_id=MIGRATION, environment="drill", config_path=config, reports_dir=str(incident.reports),
                   run_id="notified", phase="02_execute")
    notify.notify_window_open(ctx)
    assert sum(1 for r, _ in httpserver.log if r.method == "PATCH" and r.get_json()["incident"]["status"]
               == "identified") == 1
    assert any(e["step"] == "notify-window-open" and e["status"] == "skipped" for e in read_events(ctx.run_dir))


def test_a_failed_step_escalates_with_who_and_the_next_action(incident, tmp_path, httpserver, silent_port,
                                                              monkeypatch):
    _secrets(monkeypatch, httpserver)
    httpserver.expect_request("/api/chat.postMessage", method="POST").respond_with_json({"ok": True, "ts": "1"})
    httpserver.expect_request(WEBHOOK_SECRET, method="POST").respond_with_data("ok")
    httpserver.expect_request("/v1/pages/pg1/incidents", method="POST").respond_with_json({"id": "i"}, status=201)
    config = _config(tmp_path, _channels(httpserver.url_for("/api"), 0, httpserver.url_for("/"), silent_port))
    truncated = plain_gz(incident.backup, tmp_path, keep_end=False)  # a backup that fails its checks: L3

    result = runner.invoke(app, ["run", "--env", "drill", "-m", MIGRATION, "--config", config, "--reports-dir",
                                 str(incident.reports), "--backup", str(truncated), "--yes", "--run-id", "esc"])

    assert result.exit_code == 3, result.output
    assert "Escalate to L3 (DevOps Lead): Dani, +34 600 000 003." in result.output  # a backup that cannot be trusted
    run_dir = next(incident.reports.rglob("esc"))
    events = read_events(run_dir)
    [escalated] = [e["evidence"]["escalation"] for e in events if "escalation" in e["evidence"]]
    assert escalated["level"] == "L3" and escalated["who"] == "Dani" and escalated["step"] == "verify-backup"
    texts = [r.get_json()["text"] for r, _ in httpserver.log if r.path == "/api/chat.postMessage"]
    assert texts[0].startswith("🚨 PRODUCTION ROLLBACK INITIATED")
    assert texts[1].startswith("🆘 ESCALATION L3: Dani (+34 600 000 003)")
    assert "step verify-backup" in texts[1] and "Next: " in texts[1]
    assert texts[2].startswith("⚠️ ROLLBACK ABORTED") and len(texts) == 3  # and how the run ended
    run = json.loads((run_dir / "run.json").read_text())
    assert run["error"]["contact"] == "L3 (DevOps Lead): Dani, +34 600 000 003"
    report = (run_dir / "report.html").read_text()
    assert "L3 (DevOps Lead): Dani, +34 600 000 003" in report
    _no_marker_in(run_dir, result.output)


def test_the_run_past_its_time_escalates_to_l2_once(fresh_db, tmp_path, monkeypatch):
    monkeypatch.setenv(DRILL_URL_ENV, fresh_db)
    config = _config(tmp_path, "\n[escalation]\nafter_seconds = 0.4\n"
                               "L2 = { who = \"Luis, lead\", reach = \"+34 600 000 002\" }\n")
    ctx = open_run(migration_id=MIGRATION, environment="drill", config_path=config, reports_dir=str(tmp_path / "r"),
                   run_id="slow", phase="02_execute")
    escalation.arm(ctx)  # the step boundary: too early; the timer covers the long step that follows
    time.sleep(1.2)
    escalation.check_overdue(ctx, "restore")  # the next boundary: already escalated, not again
    found = [e["evidence"]["escalation"] for e in read_events(ctx.run_dir) if "escalation" in e["evidence"]]
    assert len(found) == 1, found
    assert found[0]["level"] == "L2" and found[0]["who"] == "Luis, lead" and found[0]["why"] == "timer"
    assert found[0]["step"] == "a long step" and "has not finished" in found[0]["reason"]


def test_required_acknowledgements_missing_abort_before_any_change(incident, tmp_path):
    config = _config(tmp_path, "\n[checklists]\nrequire_acknowledgements = true\n")
    result = run_phases(migration_id=MIGRATION, environment="drill", config_path=config,
                        reports_dir=str(incident.reports), run_id="unacked", approve=MIGRATION,
                        backup=str(incident.backup))
    assert result.exit_code == 3, result.summary.get("error")
    error = result.summary["error"]
    assert error["step"] == "checklists" and "checklist:team:lead-engineer-available" in error["message"]
    assert result.summary["changes_made"] is False


def test_the_dry_run_shows_each_request_and_sends_nothing(incident, tmp_path, httpserver, silent_port, monkeypatch):
    _secrets(monkeypatch, httpserver)
    config = _config(tmp_path, _channels(httpserver.url_for("/api"), 0, httpserver.url_for("/"), silent_port))
    result = run_phases(migration_id=MIGRATION, environment="drill", config_path=config, dry_run=True,
                        reports_dir=str(incident.reports), run_id="dry", backup=str(incident.backup),
                        phases=("01_prepare",))  # 01 plans every later step: notify-completed's requests are in it
    assert result.summary["error"] is None and result.summary["phases"][0]["status"] == "succeeded", result.summary
    assert not httpserver.log  # nothing sent
    planned = [e["message"] for e in read_events(result.run_dir) if e["status"] == "planned"
               and e["step"] == "notify-initiated"]
    assert any(t.startswith(f"POST {httpserver.url_for('/api/chat.postMessage')}\n") and "ROLLBACK INITIATED" in t
               for t in planned)
    assert any(t.startswith("POST $ROLLBACK_TEST_WEBHOOK (a Slack incoming webhook)") for t in planned)
    completed = [a.text for a in read_plan(result.run_dir).step("notify-completed").actions]
    assert any(t.startswith(f"PATCH {httpserver.url_for('/v1/pages/pg1/incidents/')}") and '"resolved"' in t
               for t in completed)
    assert all("<the measured RTO>" in t for t in completed if "ROLLBACK COMPLETED" in t)
    plan = read_plan(result.run_dir)
    names = [s.name for s in plan.steps]
    assert names.index("gate") + 1 == names.index("notify-window-open") == names.index("stop-services") - 1
    assert names.index("smoke-tests") + 1 == names.index("notify-window-closed")
    for name, status, components in (("notify-window-open", "identified", "major_outage"),
                                      ("notify-window-closed", "monitoring", "operational")):
        [shown] = [a.text for a in plan.step(name).actions]  # only the status page carries the window by default
        request, body = shown.split("\n", 1)
        where = httpserver.url_for("/v1/pages/pg1/incidents/")
        assert request == f"PATCH {where}{{incident_id: the one opened at the start}}"
        update = json.loads(body)["incident"]
        assert update["status"] == status and update["components"] == {"auth": components}
    _no_marker_in(result.run_dir)


def test_the_l2_timer_leaves_a_run_that_has_ended_alone(fresh_db, tmp_path, monkeypatch):
    monkeypatch.setenv(DRILL_URL_ENV, fresh_db)
    config = _config(tmp_path, "\n[escalation]\nafter_seconds = 0.2\n")
    ctx = open_run(migration_id=MIGRATION, environment="drill", config_path=config, reports_dir=str(tmp_path / "r"),
                   run_id="ended", phase="02_execute")
    ctx.record("head", "info", "chain head (end of the run)", reason="end of the run")  # as conclude() journals it
    time.sleep(0.4)
    assert escalation.check_overdue(ctx, "late") is None
    assert not [e for e in read_events(ctx.run_dir) if "escalation" in e["evidence"]]


def test_only_a_plan_that_stops_the_services_announces_the_window(fresh_db, tmp_path, monkeypatch):
    from rollbacklib.steps import Step
    from rollbacklib.strategies.plan import with_window_notices

    monkeypatch.setenv(DRILL_URL_ENV, fresh_db)
    ctx = open_run(migration_id=MIGRATION, environment="drill", config_path=_config(tmp_path, ""),
                   reports_dir=str(tmp_path / "r"), run_id="window", phase="01_prepare")

    def names(*steps: str) -> list[str]:
        return [s.name for s in with_window_notices(ctx, [Step(n, "02_execute", "-", n) for n in steps])]

    # swap, in-place, surgical with the services drained: right after the gate, before the services stop
    assert names("gate", "stop-services", "block-connections", "start-services", "smoke-tests", "close") == [
        "gate", "notify-window-open", "stop-services", "block-connections", "start-services", "smoke-tests",
        "notify-window-closed", "close"]
    # resolve-only, surgical with the services up: nothing stops, no window to announce
    assert names("gate", "resolve-rolled-back", "validate-resolved", "close") == [
        "gate", "resolve-rolled-back", "validate-resolved", "close"]
    assert names("gate", "surgical-reverse-ddl", "service-health", "smoke-tests", "close") == [
        "gate", "surgical-reverse-ddl", "service-health", "smoke-tests", "close"]
    [action] = notify.window_open_step(ctx).actions  # the drill has no channel: the plan says to do it by hand
    assert action.text.startswith("no notification channel carries 'window-open' in environment 'drill'")
