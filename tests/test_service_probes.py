"""Phase 04's service steps (start-services in order, service-health, smoke-tests) and phase 01's
service-snapshot, on a real PostgreSQL with the scenario's real services under the process platform, and
local HTTP servers on 127.0.0.1 where a third party would answer."""

from __future__ import annotations

import json
import secrets
import socket
import textwrap
from pathlib import Path

import psutil
import pytest
from psycopg.conninfo import make_conninfo
from werkzeug import Response

from rollbacklib.audit import artifacts, record_changed_files
from rollbacklib.config import load_config
from rollbacklib.errors import StepError
from rollbacklib.journal import read_events
from rollbacklib.phases import service_probes, service_snapshot
from rollbacklib.platforms import platform_for
from rollbacklib.resources import scenarios_dir
from rollbacklib.run import open_run, record_approval
from rollbacklib.steps import Phase, Plan, StepName, write_plan

MIGRATION = "20251202020032_update_user_schema_final"
URL_ENV = "ROLLBACK_TEST_SVC_DATABASE_URL"
GATEWAY_URL_ENV = "ROLLBACK_TEST_GATEWAY_DATABASE_URL"  # what the gateway connects with (the fault changes it)
PASSWORD_ENV = "ROLLBACK_TEST_SVC_SMOKE_PASSWORD"
SERVICES = scenarios_dir() / "auth-platform" / "services"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, *, health: str = "", smoke: str = "", platform: bool = True, extra: str = "") -> Path:
    """An environment ``svc`` with the scenario's api-gateway and reports-client on the process platform."""
    gw, rc = _free_port(), _free_port()
    text = textwrap.dedent(f"""
        [environments.svc]
        database_url_env = "{URL_ENV}"
        backup_dir = "backups"
        services = [{{ name = "api-gateway", replicas = 1 }}, {{ name = "reports-client", replicas = 1 }}]
        """)
    if platform:
        text += textwrap.dedent(f"""
            [environments.svc.platform]
            kind = "process"
            timeout_seconds = 20
            [environments.svc.platform.services.api-gateway]
            command = ["{{python}}", "{SERVICES / 'api_gateway.py'}", "--port", "{gw}", "--database-url-env", "{GATEWAY_URL_ENV}"]
            pid_file = "{folder / 'api-gateway.pid'}"
            port = {gw}
            [environments.svc.platform.services.reports-client]
            command = ["{{python}}", "{SERVICES / 'reports_client.py'}", "--port", "{rc}", "--database-url-env", "{URL_ENV}"]
            pid_file = "{folder / 'reports-client.pid'}"
            health_url = "http://127.0.0.1:{rc}/health"
            """)
    text += (health or textwrap.dedent(f"""
        [environments.svc.health]
        url = "http://127.0.0.1:{gw}/health"
        attempts = 3
        pause_seconds = 0.2
        expect_json = {{ database = "connected" }}
        """)) + smoke + extra
    path = folder / "runbook.toml"
    path.write_text(text)
    return path


def login_then_protected(base: str) -> str:
    """The seed's smoke tests as config: login (the password by env var name), then the protected endpoint."""
    return textwrap.dedent(f"""
        [[environments.svc.smoke_tests]]
        name = "login"
        method = "POST"
        url = "{base}/auth/login"
        json = {{ email = "smoke@example.com", password = "{{password}}" }}
        password_env = "{PASSWORD_ENV}"
        extract = {{ access_token = "access_token" }}

        [[environments.svc.smoke_tests]]
        name = "protected"
        url = "{base}/protected/endpoint"
        bearer = "access_token"
        """)


@pytest.fixture
def services_env(fresh_db, tmp_path, monkeypatch):
    """The config and, afterwards, every service of it stopped (whatever the test left running)."""
    monkeypatch.setenv(URL_ENV, fresh_db)
    monkeypatch.setenv(GATEWAY_URL_ENV, fresh_db)
    made: list[Path] = []
    yield lambda **kw: made.append(write_config(tmp_path, **kw)) or made[-1]
    for path in made:
        env = load_config(path).environment("svc")
        if env.platform is not None:
            platform = platform_for(env)
            for service in env.services:
                platform.scale(service, 0)


def phase_04(config: Path, reports: Path, *, dry_run: bool = False):
    """A run at phase 04: its plan holds phase 04's steps, approved; validation done."""
    ctx = open_run(migration_id=MIGRATION, environment="svc", config_path=str(config), reports_dir=str(reports),
                   phase=Phase.RESTORE_SERVICE, dry_run=dry_run)
    plan = Plan(service_probes.plan_steps(ctx))
    write_plan(ctx.run_dir, plan)
    ctx.update(plan_digest=plan.digest)
    ctx.mark_step(StepName.VALIDATION, "ok")
    record_approval(ctx.run_dir, MIGRATION, "test", plan.digest)
    return ctx, plan


def test_the_gateway_is_healthy_before_the_others_start(services_env, tmp_path):
    ctx, plan = phase_04(services_env(), tmp_path / "reports")
    kinds = [a.kind for a in plan.step(StepName.START_SERVICES).actions]
    assert kinds == ["platform", "http", "platform"]  # the gateway, its health, then the next service

    service_probes.start_services(ctx)
    service_probes.service_health(ctx)

    events = [e for e in read_events(ctx.run_dir) if e["step"] in (StepName.START_SERVICES, StepName.SERVICE_HEALTH)]
    started = [e for e in events if e["status"] == "changed"]
    assert [e["evidence"]["service"] for e in started] == ["api-gateway", "reports-client"]
    healthy = next(e for e in events if e["message"].startswith("api-gateway healthy"))
    assert started[0]["seq"] < healthy["seq"] < started[1]["seq"]
    last = healthy["evidence"]["attempts"][-1]
    assert last["ok"] is True and last["status"] == 200
    gateway, second = started[1]["evidence"]["services"]
    assert psutil.pid_exists(gateway["pid"]) and psutil.pid_exists(second["pid"]) and second["started"]
    assert all(s["replicas"] == 1 for s in started[-1]["evidence"]["services"])  # what the metric reads
    post = [e for e in events if e["message"].startswith("postcondition")]
    assert [e["evidence"]["check"]["passed"] for e in post] == [True, True]
    assert post[0]["evidence"]["check"]["found"] == {"api-gateway": 1, "reports-client": 1}
    assert [e["status"] for e in events if e["status"] == "ok"] == ["ok", "ok"]


def test_a_gateway_whose_health_never_passes_fails_the_step_and_starts_nothing_else(services_env, tmp_path,
                                                                                     fresh_db, monkeypatch):
    # the gateway's database URL points at a database that is not there: it listens, but its health says 503
    monkeypatch.setenv(GATEWAY_URL_ENV, make_conninfo(fresh_db, dbname="no_such_database"))
    ctx, _ = phase_04(services_env(), tmp_path / "reports")

    with pytest.raises(StepError) as failed:
        service_probes.start_services(ctx)

    err = failed.value
    assert err.escalate == "L1" and err.step == StepName.START_SERVICES and err.exit_code == 5
    assert "api-gateway is up on the process platform but its health check never passed; reports-client not " \
           "started" in err.message
    assert "read api-gateway's logs" in err.next_action and "resume" in err.next_action
    assert [a["status"] for a in err.found] == [503, 503, 503]
    assert not (tmp_path / "reports-client.pid").exists()  # never started
    env = load_config(ctx.config.path).environment("svc")
    platform = platform_for(env)
    assert [platform.replicas(s) for s in env.services] == [1, 0]  # the gateway runs: it came back, unhealthy
    failure = [e for e in read_events(ctx.run_dir) if e["step"] == StepName.START_SERVICES and e["status"] == "failed"]
    assert failure and failure[0]["evidence"]["escalate"] == "L1" and len(failure[0]["evidence"]["found"]) == 3

    # what the message says to do: fix its configuration, restart it, run the step again (as a resume does)
    monkeypatch.setenv(GATEWAY_URL_ENV, fresh_db)
    platform.scale(env.services[0], 0)
    service_probes.start_services(ctx)
    assert [platform.replicas(s) for s in env.services] == [1, 1]
    events = read_events(ctx.run_dir)
    assert [e["status"] for e in events if e["step"] == StepName.START_SERVICES and e["status"] in
            ("failed", "ok")] == ["failed", "ok"]


def test_the_dry_run_shows_each_request_and_runs_none(services_env, tmp_path, monkeypatch, capsys):
    password = secrets.token_urlsafe(16)
    monkeypatch.setenv(PASSWORD_ENV, password)
    smoke = login_then_protected("http://127.0.0.1:9")
    ctx, plan = phase_04(services_env(smoke=smoke), tmp_path / "reports", dry_run=True)
    service_probes.start_services(ctx)
    service_probes.service_health(ctx)
    service_probes.smoke_tests(ctx)

    planned = [e for e in read_events(ctx.run_dir) if e["status"] == "planned"]
    texts = {e["step"]: [p["message"] for p in planned if p["step"] == e["step"]] for e in planned}
    health = plan.step(StepName.SERVICE_HEALTH).actions[0].text
    assert texts[StepName.SERVICE_HEALTH] == [health]
    assert health.startswith("GET http://127.0.0.1:") and "up to 3 attempt(s) 0.2 s apart" in health
    assert texts[StepName.SMOKE_TESTS] == [
        'POST http://127.0.0.1:9/auth/login JSON {"email": "smoke@example.com", "password": "{password}"} '
        f"({{password}} from ${PASSWORD_ENV}); expects HTTP 200; keeps access_token for the next tests (never shown)",
        "GET http://127.0.0.1:9/protected/endpoint Authorization: Bearer {access_token}; expects HTTP 200"]
    assert texts[StepName.START_SERVICES][1].startswith("before the next service starts: GET http://127.0.0.1:")
    assert not (tmp_path / "api-gateway.pid").exists()  # nothing started
    assert password not in (ctx.run_dir / "journal.jsonl").read_text()
    assert password not in (ctx.run_dir / "plan.json").read_text()
    from rollbacklib.cli import print_plan  # what `rollback run --dry-run` prints of the plan

    print_plan(plan)
    printed = capsys.readouterr().out
    for step in (StepName.SERVICE_HEALTH, StepName.SMOKE_TESTS):
        assert all(f"http     {text}" in printed for text in texts[step]), printed


def test_a_failing_smoke_test_escalates_and_says_what_to_do(services_env, tmp_path, httpserver, monkeypatch):
    password = secrets.token_urlsafe(16)
    token = secrets.token_urlsafe(24)
    monkeypatch.setenv(PASSWORD_ENV, password)
    for _ in ("the step", "its postcondition, read again"):
        httpserver.expect_ordered_request("/health", method="GET").respond_with_json(
            {"status": "ok", "database": "connected"})
    httpserver.expect_ordered_request("/auth/login", method="POST", json={"email": "smoke@example.com",
                                                                          "password": password}
                                      ).respond_with_json({"access_token": token, "token_type": "Bearer"})
    httpserver.expect_ordered_request("/protected/endpoint", method="GET",
                                      headers={"Authorization": f"Bearer {token}"}
                                      ).respond_with_response(Response('{"error": "database error"}', status=500))
    health = textwrap.dedent(f"""
        [environments.svc.health]
        url = "{httpserver.url_for('/health')}"
        expect_json = {{ status = "ok", database = "connected" }}
        """)
    smoke = login_then_protected(httpserver.url_for("").rstrip("/"))
    ctx, _ = phase_04(services_env(health=health, smoke=smoke, platform=False), tmp_path / "reports")
    service_probes.start_services(ctx)  # no platform: a person starts them, in the order the journal says
    service_probes.service_health(ctx)
    with pytest.raises(StepError) as failed:
        service_probes.smoke_tests(ctx)

    httpserver.check_assertions()
    err = failed.value
    assert err.escalate == "L1" and err.step == StepName.SMOKE_TESTS
    assert err.message == "Smoke test 'protected' failed: HTTP 500, expected 200."
    assert "decide with the lead" in err.next_action
    assert [t["status"] for t in err.found] == [200, 500]
    journal = (ctx.run_dir / "journal.jsonl").read_text()
    assert password not in journal and token not in journal
    events = read_events(ctx.run_dir)
    by_hand = next(e for e in events if e["step"] == StepName.START_SERVICES and e["status"] == "info")
    assert [s["name"] for s in by_hand["evidence"]["services"]] == ["api-gateway", "reports-client"]


def test_the_start_order_and_waits_are_config(services_env, tmp_path):
    extra = textwrap.dedent("""
        [environments.svc.start]
        order = ["reports-client"]
        wait_healthy = []
        """)
    env = load_config(services_env(extra=extra)).environment("svc")
    assert [s.name for s in env.start.ordered(env.services)] == ["reports-client", "api-gateway"]
    assert env.start.waited(env.services) == set()
    bad = tmp_path / "bad.toml"
    bad.write_text((tmp_path / "runbook.toml").read_text().replace('order = ["reports-client"]',
                                                                  'order = ["reports-clients"]'))
    from rollbacklib.errors import ConfigError

    with pytest.raises(ConfigError) as wrong:
        load_config(bad)
    assert "start.order names ['reports-clients'], not among the environment's services" in wrong.value.message


# --- phase 01: the services' logs and metrics before anything changes ----------------------------------

def test_the_snapshot_keeps_each_services_last_log_lines_and_the_metrics(services_env, tmp_path, httpserver,
                                                                        fresh_db):
    metrics = "# HELP http_requests_total HTTP requests served\nhttp_requests_total{status=\"500\"} 42.0\n"
    httpserver.expect_request("/metrics", method="GET").respond_with_data(metrics, content_type="text/plain")
    extra = f'[environments.svc.snapshot]\nmetrics_url = "{httpserver.url_for("/metrics")}"\n'
    config = services_env(extra=extra)
    log = tmp_path / "api-gateway.log"  # the process platform's log beside the pid file
    log.write_text("".join(f"line {i}\n" for i in range(1, 1501)) + f"connecting to {fresh_db}\n")
    ctx = open_run(migration_id=MIGRATION, environment="svc", config_path=str(config),
                   reports_dir=str(tmp_path / "reports"), phase=Phase.PREPARE)

    frame = service_snapshot.save_service_snapshot(ctx)

    saved = (ctx.run_dir / "capture" / "logs" / "api-gateway.log").read_text().splitlines()
    assert len(saved) == 1000 and saved[0] == "line 502" and fresh_db not in saved[-1]  # the URL masked
    assert (ctx.run_dir / "capture" / "metrics.prom").read_text() == metrics
    index = json.loads((ctx.run_dir / "capture" / "service_snapshot.json").read_text())
    assert [(r["what"], r.get("service"), r["saved"]) for r in index] == [
        ("logs", "api-gateway", True), ("logs", "reports-client", True), ("metrics", None, True)]
    assert index[0]["lines"] == 1000 and index[1]["lines"] == 0  # reports-client never ran: an empty log, said
    assert list(frame["saved"]) == [True, True, True]
    sealed = {e["evidence"]["path"] for e in record_changed_files(ctx.run_dir)}
    assert {"capture/logs/api-gateway.log", "capture/metrics.prom", "capture/service_snapshot.json"} <= sealed
    assert artifacts(ctx.run_dir)["capture/metrics.prom"]["evidence"]["kind"] == "evidence"
    httpserver.check_assertions()


def test_a_platform_without_logs_and_a_metrics_endpoint_down_are_said(services_env, tmp_path):
    closed = _free_port()  # nothing listens there
    config = services_env(platform=False, extra=f'[environments.svc.snapshot]\nmetrics_url = '
                                                 f'"http://127.0.0.1:{closed}/metrics"\ntimeout_seconds = 2\n')
    ctx = open_run(migration_id=MIGRATION, environment="svc", config_path=str(config),
                   reports_dir=str(tmp_path / "reports"), phase=Phase.PREPARE)

    service_snapshot.save_service_snapshot(ctx)  # evidence that cannot be had does not stop the rollback

    index = json.loads((ctx.run_dir / "capture" / "service_snapshot.json").read_text())
    assert [r["saved"] for r in index] == [False, False, False]
    assert index[0]["why"] == "The none platform has no logs: nothing was changed."
    assert index[0]["next_action"] == "read api-gateway's logs where it runs"
    assert index[2]["why"].startswith(f"GET http://127.0.0.1:{closed}/metrics: no answer (ConnectError")
    events = read_events(ctx.run_dir)
    said = [e["message"] for e in events if e["step"] == StepName.SERVICE_SNAPSHOT and e["status"] == "info"]
    assert "api-gateway: no logs saved: The none platform has no logs: nothing was changed." in said
    assert any(m.startswith("metrics not saved: GET") for m in said)
    assert any(e["step"] == StepName.SERVICE_SNAPSHOT and e["status"] == "ok" for e in events)
