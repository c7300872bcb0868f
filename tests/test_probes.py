"""Health checks with retries and config-declared smoke tests, against a local server on 127.0.0.1."""

from __future__ import annotations

import json
import secrets
import textwrap

import pytest
from werkzeug import Response

from rollbacklib.config import load_config
from rollbacklib.errors import ConfigError, StepError
from rollbacklib.probes import HealthCheck, SmokeTest, check_health, run_smoke_tests
from rollbacklib.redaction import secret_env_names

PASSWORD_ENV = "ROLLBACK_TEST_SMOKE_PASSWORD"


def test_health_retries_until_it_holds(httpserver):
    for answer in ({"status": "error", "database": "disconnected"}, None, {"status": "ok", "database": "connected"}):
        handler = httpserver.expect_ordered_request("/health", method="GET")
        if answer is None:
            handler.respond_with_data("starting", status=503)
        else:
            handler.respond_with_json(answer, status=200 if answer["status"] == "ok" else 503)
    pauses = []
    tries = check_health(HealthCheck(url=httpserver.url_for("/health"),
                                     expect_json={"status": "ok", "database": "connected"}), sleep=pauses.append)
    assert [t["ok"] for t in tries] == [False, False, True] and pauses == [5, 5]  # the seed's 5 s apart
    httpserver.check_assertions()


def test_health_that_never_holds_escalates_with_every_attempt(httpserver):
    httpserver.expect_request("/health").respond_with_json({"status": "ok", "database": "disconnected"})
    with pytest.raises(StepError) as err:
        check_health(HealthCheck(url=httpserver.url_for("/health"), attempts=3, pause_seconds=0,
                                 expect_json={"database": "connected"}))
    assert err.value.escalate == "L1" and len(err.value.found) == 3
    assert "fields differ" in err.value.found[0]["detail"]


def smoke_config(httpserver) -> list[SmokeTest]:
    return [SmokeTest.model_validate(t) for t in (
        {"name": "login", "method": "POST", "url": httpserver.url_for("/auth/login"),
         "json": {"email": "smoke@example.com", "password": "{password}"}, "password_env": PASSWORD_ENV,
         "extract": {"access_token": "access_token"}},
        {"name": "protected", "url": httpserver.url_for("/protected/endpoint"), "bearer": "access_token"},
    )]


def test_smoke_tests_pass_the_token_on_and_keep_no_secret(httpserver, monkeypatch):
    password, token = secrets.token_urlsafe(10), "t-" + secrets.token_hex(10)  # made at run time
    monkeypatch.setenv(PASSWORD_ENV, password)
    httpserver.expect_ordered_request("/auth/login", method="POST",
                                      json={"email": "smoke@example.com", "password": password}) \
        .respond_with_json({"access_token": token, "token_type": "Bearer"})
    httpserver.expect_ordered_request("/protected/endpoint", method="GET",
                                      headers={"Authorization": f"Bearer {token}"}).respond_with_json({"user": {}})
    evidence = run_smoke_tests(smoke_config(httpserver))
    httpserver.check_assertions()
    assert [(e["name"], e["status"]) for e in evidence] == [("login", 200), ("protected", 200)]
    assert password not in json.dumps(evidence) and token not in json.dumps(evidence)


def test_a_failed_smoke_test_escalates_and_a_missing_password_is_named(httpserver, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, secrets.token_urlsafe(10))
    httpserver.expect_request("/auth/login").respond_with_response(
        Response(json.dumps({"error": "database error"}), status=500, content_type="application/json"))
    with pytest.raises(StepError, match="Smoke test 'login' failed: HTTP 500") as err:
        run_smoke_tests(smoke_config(httpserver))
    assert err.value.escalate == "L1" and err.value.found[0]["status"] == 500
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(ConfigError, match=PASSWORD_ENV):
        run_smoke_tests(smoke_config(httpserver))


def test_probes_in_runbook_toml(tmp_path):
    path = tmp_path / "runbook.toml"
    path.write_text(textwrap.dedent(f"""\
        [environments.production]
        database_url_env = "PRODUCTION_DATABASE_URL"
        backup_dir = "backups"
        [environments.production.health]
        url = "https://api.example.com/health"
        expect_json = {{ status = "ok", database = "connected" }}
        [[environments.production.smoke_tests]]
        name = "login"
        method = "POST"
        url = "https://api.example.com/auth/login"
        json = {{ email = "smoke@example.com", password = "{{password}}" }}
        password_env = "{PASSWORD_ENV}"
        extract = {{ access_token = "access_token" }}
        """))
    config = load_config(path)
    env = config.environment("production")
    assert env.health.attempts == 10 and env.health.pause_seconds == 5
    assert env.smoke_tests[0].json_body["password"] == "{password}" and PASSWORD_ENV in secret_env_names(config)
    path.write_text(path.read_text().replace(f'"{PASSWORD_ENV}"', '"hunter2=x"'))
    with pytest.raises(ConfigError, match="password_env"):
        load_config(path)
