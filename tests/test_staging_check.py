"""The seed's step 3.3 (staging first), in 02 before the gate: Railway's GraphQL API, staging's health and smoke tests
stood in for by a local server on 127.0.0.1 that checks every request; a real PostgreSQL for the run."""

from __future__ import annotations

import secrets
import textwrap

import pytest
from werkzeug import Response

from rollbacklib.errors import EXIT_ABORTED, StepError
from rollbacklib.journal import read_events
from rollbacklib.phases import staging_check
from rollbacklib.platforms.railway import DEPLOY, STATE
from rollbacklib.run import open_run
from rollbacklib.steps import Phase, Plan, StepName, write_plan

MIGRATION = "20251202020032_update_user_schema_final"
URL_ENV = "ROLLBACK_TEST_STAGING_DATABASE_URL"
TOKEN_ENV = "ROLLBACK_TEST_STAGING_RAILWAY_TOKEN"
PASSWORD_ENV = "ROLLBACK_TEST_STAGING_SMOKE_PASSWORD"
IDS = {"serviceId": "svc-gw", "environmentId": "env-staging"}


@pytest.fixture
def secrets_set(monkeypatch, fresh_db):
    token, password = "tok-" + secrets.token_hex(16), secrets.token_urlsafe(12)  # built at run time
    monkeypatch.setenv(URL_ENV, fresh_db)
    monkeypatch.setenv(TOKEN_ENV, token)
    monkeypatch.setenv(PASSWORD_ENV, password)
    return token, password


def write_config(folder, httpserver, *, staging: bool = True) -> str:
    base = httpserver.url_for("").rstrip("/")
    text = textwrap.dedent(f"""
        [environments.prod]
        database_url_env = "{URL_ENV}"
        backup_dir = "backups"
        [environments.prod.release]
        previous = "abc1234"
        """)
    if staging:
        text += textwrap.dedent(f"""
            [environments.prod.staging_check]
            environment = "staging"

            [environments.staging]
            database_url_env = "{URL_ENV}"
            backup_dir = "backups"
            services = [{{ name = "api-gateway", replicas = 1 }}]
            [environments.staging.platform]
            kind = "railway"
            endpoint = "{base}/graphql/v2"
            token_env = "{TOKEN_ENV}"
            environment_id = "env-staging"
            poll_seconds = 0.05
            timeout_seconds = 5
            [environments.staging.platform.services.api-gateway]
            service_id = "svc-gw"
            [environments.staging.health]
            url = "{base}/health"
            attempts = 2
            pause_seconds = 0.1
            expect_json = {{ status = "ok" }}
            [[environments.staging.smoke_tests]]
            name = "login"
            method = "POST"
            url = "{base}/auth/login"
            json = {{ email = "smoke@example.com", password = "{{password}}" }}
            password_env = "{PASSWORD_ENV}"
            extract = {{ access_token = "access_token" }}
            """)
    path = folder / "runbook.toml"
    path.write_text(text)
    return str(path)


def phase_02(config: str, reports):
    ctx = open_run(migration_id=MIGRATION, environment="prod", config_path=config, reports_dir=str(reports),
                   phase=Phase.EXECUTE)
    plan = Plan([staging_check.staging_step(ctx)])
    write_plan(ctx.run_dir, plan)
    ctx.update(plan_digest=plan.digest)
    return ctx, plan


def expect_graphql(httpserver, token, document, variables, data):
    httpserver.expect_ordered_request(
        "/graphql/v2", method="POST", json={"query": document, "variables": variables},
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    ).respond_with_json({"data": data})


def state(deployment, status):
    return {"serviceInstance": {"numReplicas": 1},
            "deployments": {"edges": [{"node": {"id": deployment, "status": status}}]}}


def expect_deploy(httpserver, token):
    """The previous release deployed to staging's gateway: state, serviceInstanceDeployV2 with the commit, state."""
    expect_graphql(httpserver, token, STATE, IDS, state("d1", "SUCCESS"))
    expect_graphql(httpserver, token, DEPLOY, {**IDS, "commitSha": "abc1234"}, {"serviceInstanceDeployV2": "d2"})
    expect_graphql(httpserver, token, STATE, IDS, state("d2", "SUCCESS"))


def test_the_previous_release_on_staging_then_its_health_and_login(httpserver, secrets_set, tmp_path):
    token, password = secrets_set
    expect_deploy(httpserver, token)
    httpserver.expect_ordered_request("/health", method="GET").respond_with_json({"status": "ok"})
    httpserver.expect_ordered_request("/auth/login", method="POST",
                                      json={"email": "smoke@example.com", "password": password},
                                      ).respond_with_json({"access_token": "t-" + secrets.token_hex(4)})
    ctx, plan = phase_02(write_config(tmp_path, httpserver), tmp_path / "reports")
    step = plan.step(StepName.STAGING_CHECK)
    assert step.target == "staging" and not step.destructive
    assert step.actions[0].text.startswith("staging: redeploy abc1234 of api-gateway on the railway platform")
    assert [a.kind for a in step.actions] == ["platform", "http", "http"]

    frame = staging_check.check_staging(ctx)
    httpserver.check_assertions()
    assert list(frame["check"]) == ["redeploy api-gateway", "health", "smoke login"] and frame["ok"].all()
    events = read_events(ctx.run_dir)
    assert not [e for e in events if e["status"] == "changed"]  # staging is not the database rolled back
    mine = [e for e in events if e["step"] == StepName.STAGING_CHECK]
    assert any("api-gateway redeployed (abc1234)" in e["message"] for e in mine) and mine[-1]["status"] == "ok"
    text = (ctx.run_dir / "journal.jsonl").read_text()
    assert token not in text and password not in text


def test_an_unhealthy_staging_stops_the_run_before_the_gate_with_exit_3(httpserver, secrets_set, tmp_path):
    token, _ = secrets_set
    expect_deploy(httpserver, token)
    httpserver.expect_request("/health", method="GET").respond_with_response(
        Response('{"status": "down"}', status=503, content_type="application/json"))
    ctx, _ = phase_02(write_config(tmp_path, httpserver), tmp_path / "reports")
    with pytest.raises(StepError) as caught:
        staging_check.check_staging(ctx)
    err = caught.value
    assert err.exit_code == EXIT_ABORTED and err.step == StepName.STAGING_CHECK
    assert "Nothing in production was changed" in err.message and "before the gate" in err.message
    assert "do not roll production back with this release" in err.next_action
    assert [a["status"] for a in err.found] == [503, 503]
    assert [e["status"] for e in read_events(ctx.run_dir) if e["step"] == StepName.STAGING_CHECK][-1] == "aborted"


def test_not_configured_is_journaled_and_nothing_runs(httpserver, secrets_set, tmp_path):
    ctx, plan = phase_02(write_config(tmp_path, httpserver, staging=False), tmp_path / "reports")
    assert plan.step(StepName.STAGING_CHECK).actions == ()
    staging_check.check_staging(ctx)
    messages = [e["message"] for e in read_events(ctx.run_dir) if e["step"] == StepName.STAGING_CHECK]
    assert any(m.startswith("no staging check configured") for m in messages)
    assert not httpserver.log


def test_a_staging_check_naming_an_unknown_environment_or_service_is_bad_config(tmp_path):
    from rollbacklib.config import load_config
    from rollbacklib.errors import ConfigError

    head = f'[environments.prod]\ndatabase_url_env = "{URL_ENV}"\nbackup_dir = "b"\n'
    for check, why in (('environment = "stagin"', "'stagin', which is not"), ('environment = "prod"', "itself"),
                       ('environment = "staging"\nservices = ["nope"]', "['nope']")):
        path = tmp_path / "runbook.toml"
        path.write_text(head + f"[environments.prod.staging_check]\n{check}\n[environments.staging]\n"
                        f'database_url_env = "{URL_ENV}"\nbackup_dir = "b"\nservices = [{{ name = "api-gateway" }}]\n')
        with pytest.raises(ConfigError, match=why.replace("[", r"\[").replace("]", r"\]")):
            load_config(path)
