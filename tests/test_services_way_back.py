"""The services' way back: a stop-services cut short brings back what it had stopped; a stop that stays down is
listed in run.json and brought back by `rollback services-back` once the live database serves.

Railway's GraphQL API is a local server on 127.0.0.1 that keeps each service's replicas and checks every request
(method, path, bearer token, the documented operations and variables). The database is a real PostgreSQL.
"""

from __future__ import annotations

import json
import secrets
import textwrap

import psycopg
import pytest
from typer.testing import CliRunner
from werkzeug import Response

from rollbacklib import cli
from rollbacklib.errors import RefusedError, StepError
from rollbacklib.journal import read_events
from rollbacklib.phases import execute
from rollbacklib.phases.restore_service import service_actions
from rollbacklib.platforms.railway import REDEPLOY, STATE, UPDATE
from rollbacklib.postgres.client import database_name
from rollbacklib.run import open_run, record_approval
from rollbacklib.report import html
from rollbacklib.services_way_back import bring_back, pending
from rollbacklib.services_way_back import still_down as services_way_back
from rollbacklib.steps import Phase, Plan, Step, StepName, write_plan
from rollbacklib.summary import write_summary

MIGRATION = "20251202020032_update_user_schema_final"
URL_ENV = "ROLLBACK_TEST_SWB_DATABASE_URL"
TOKEN_ENV = "ROLLBACK_TEST_SWB_RAILWAY_TOKEN"
IDS = {"api-gateway": "svc-gw", "reports-client": "svc-rc"}


class Railway:
    """Railway's GraphQL endpoint: numReplicas per service, changed by ServiceInstanceUpdate; each request checked."""

    def __init__(self, token: str, replicas: dict[str, int]):
        self.token, self.replicas = token, dict(replicas)
        self.stuck: set[str] = set()  # services whose count never changes (the platform does not get there)
        self.refuse_up = False  # scaling up is refused (HTTP 500)
        self.updates: list[tuple[str, int]] = []
        self.errors: list[str] = []

    def __call__(self, request) -> Response:
        if request.method != "POST" or request.path != "/graphql/v2":
            self.errors.append(f"{request.method} {request.path}")
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            self.errors.append("bad Authorization header")
        body = json.loads(request.get_data())
        query, variables = body["query"], body["variables"]
        if variables.get("environmentId") != "env-prod" or variables.get("serviceId") not in IDS.values():
            self.errors.append(f"bad ids {variables}")
        service = variables["serviceId"]
        if query == STATE:
            data = {"serviceInstance": {"numReplicas": self.replicas[service]},
                    "deployments": {"edges": [{"node": {"id": f"d-{service}", "status": "SUCCESS"}}]}}
        elif query == UPDATE:
            wanted = variables["input"]["numReplicas"]
            if wanted > 0 and self.refuse_up:
                return Response("upstream error", status=500)
            self.updates.append((service, wanted))
            if service not in self.stuck:
                self.replicas[service] = wanted
            data = {"serviceInstanceUpdate": True}
        else:
            self.errors.append(f"unexpected operation {query.split('(')[0]}")
            data = {}
        return Response(json.dumps({"data": data}), content_type="application/json")


@pytest.fixture
def setup(fresh_db, tmp_path, monkeypatch, httpserver):
    token = "rw-" + secrets.token_hex(12)  # built at run time: no token-like literal in the tree
    monkeypatch.setenv(URL_ENV, fresh_db)
    monkeypatch.setenv(TOKEN_ENV, token)
    railway = Railway(token, {IDS["api-gateway"]: 2, IDS["reports-client"]: 1})
    httpserver.expect_request("/graphql/v2").respond_with_handler(railway)
    config = tmp_path / "runbook.toml"
    config.write_text(textwrap.dedent(f"""
        [environments.prod]
        database_url_env = "{URL_ENV}"
        backup_dir = "backups"
        services = [{{ name = "api-gateway", replicas = 2 }}, {{ name = "reports-client", replicas = 1 }}]

        [environments.prod.platform]
        kind = "railway"
        endpoint = "{httpserver.url_for('/graphql/v2')}"
        token_env = "{TOKEN_ENV}"
        environment_id = "env-prod"
        redeploy_after_scale = false
        poll_seconds = 0.05
        timeout_seconds = 0.5
        services.api-gateway = {{ service_id = "{IDS['api-gateway']}" }}
        services.reports-client = {{ service_id = "{IDS['reports-client']}" }}
        """))
    return config, railway, fresh_db, tmp_path / "reports"


def at_stop_services(config, reports):
    """A run in 02, its plan approved and its gate passed: stop-services is next."""
    ctx = open_run(migration_id=MIGRATION, environment="prod", config_path=str(config), reports_dir=str(reports),
                   phase=Phase.EXECUTE)
    actions = tuple(service_actions(ctx, stop=True))
    plan = Plan([Step(StepName.STOP_SERVICES, Phase.EXECUTE, "railway", "scale the services to 0", actions,
                      destructive=True, requires=(StepName.GATE,))])
    write_plan(ctx.run_dir, plan)
    ctx.update(plan_digest=plan.digest)
    ctx.mark_step(StepName.GATE, "ok")
    record_approval(ctx.run_dir, MIGRATION, "test", plan.digest)
    return ctx


def test_a_stop_cut_short_brings_back_what_it_had_stopped(setup):
    config, railway, url, reports = setup
    railway.stuck.add(IDS["reports-client"])  # the platform never gets reports-client to 0
    ctx = at_stop_services(config, reports)

    with pytest.raises(StepError) as failed:
        execute.stop_services(ctx)

    err = failed.value
    assert err.escalate == "L1" and "reports-client did not reach 0 replica(s)" in err.message
    assert "brought back" in err.message and "api-gateway (2)" in err.message
    # what the platform did, in order: gateway to 0, reports-client asked (never got there), gateway back to 2
    assert railway.updates == [(IDS["api-gateway"], 0), (IDS["reports-client"], 0), (IDS["api-gateway"], 2)]
    assert railway.replicas == {IDS["api-gateway"]: 2, IDS["reports-client"]: 1} and not railway.errors
    events = read_events(ctx.run_dir)
    back = [e for e in events if e["step"] == StepName.STOP_SERVICES and "service_back" in e["evidence"]]
    assert [(e["status"], e["evidence"]["service_back"]["service"]) for e in back] == [("changed", "api-gateway")]
    assert back[0]["evidence"]["service_back"]["replicas"] == 2  # read back from the platform
    assert services_way_back(ctx.run_dir, events) == []  # nothing left down, read from the platform now
    failure = next(e for e in events if e["step"] == StepName.STOP_SERVICES and e["status"] in ("failed", "aborted"))
    assert "brought back" in failure["message"] and failure["seq"] > back[0]["seq"]  # run.json's error says it
    with psycopg.connect(url) as conn:  # the database was never touched: it serves
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_services_still_down_are_listed_and_brought_back_once_the_database_serves(setup):
    config, railway, url, reports = setup
    railway.stuck.add(IDS["reports-client"])
    railway.refuse_up = True  # the way back of the stop fails too: the gateway stays down
    ctx = at_stop_services(config, reports)
    with pytest.raises(StepError) as failed:
        execute.stop_services(ctx)
    assert "NOT brought back" in failed.value.message and "api-gateway (0 -> 2)" in failed.value.message
    assert "bring back by hand" in failed.value.next_action
    assert railway.replicas[IDS["api-gateway"]] == 0

    summary = write_summary(ctx.run_dir)  # run.json, as the runner writes it when the run stops
    listed = summary["services_way_back"]
    assert [(i["service"], i["replicas"], i["target"]) for i in listed] == [("api-gateway", 0, 2)]
    assert "ServiceInstanceUpdate" in listed[0]["action"] and railway.token not in json.dumps(summary)
    assert summary["services_way_back_command"] == f"rollback services-back {ctx.run_dir}"
    page = html.write(ctx.run_dir).read_text()
    assert "Services still down" in page and "rollback services-back" in page and railway.token not in page

    # `rollback status`: where the run stands, read now; nothing in the run folder is written
    runner = CliRunner()
    files = {f: f.read_bytes() for f in ctx.run_dir.rglob("*") if f.is_file()}
    status = runner.invoke(cli.app, ["status", str(ctx.run_dir)])
    assert status.exit_code == 0, status.output
    assert f"rollback services-back {ctx.run_dir}" in status.output and "api-gateway: 0 -> 2 replica(s)" in status.output
    assert {f: f.read_bytes() for f in ctx.run_dir.rglob("*") if f.is_file()} == files

    # the dry run says what it would do and does nothing
    shown = runner.invoke(cli.app, ["services-back", str(ctx.run_dir), "--dry-run"])
    assert shown.exit_code == 0 and "api-gateway: 0 -> 2" in shown.output and "nothing was changed" in shown.output
    assert railway.replicas[IDS["api-gateway"]] == 0

    # refused while the live database does not accept connections: nothing is called
    live = database_name(url)
    admin = psycopg.connect(url.replace(f"/{live}", "/postgres"), autocommit=True)
    admin.execute(f'ALTER DATABASE "{live}" ALLOW_CONNECTIONS false')
    railway.refuse_up = False
    updates = len(railway.updates)
    with pytest.raises(RefusedError, match="does not accept connections"):
        bring_back(ctx.run_dir)
    assert len(railway.updates) == updates and railway.replicas[IDS["api-gateway"]] == 0

    admin.execute(f'ALTER DATABASE "{live}" ALLOW_CONNECTIONS true')
    admin.close()
    done = runner.invoke(cli.app, ["services-back", str(ctx.run_dir)])
    assert done.exit_code == 0, done.output
    assert "api-gateway back: the railway platform reports 2 replica(s)" in done.output
    assert railway.replicas == {IDS["api-gateway"]: 2, IDS["reports-client"]: 1} and not railway.errors
    events = read_events(ctx.run_dir)
    assert [e["status"] for e in events if e["step"] == "services-back"] == ["started", "changed", "ok"]
    assert pending(ctx.env, events) == []
    again = runner.invoke(cli.app, ["services-back", str(ctx.run_dir)])
    assert again.exit_code == 0 and "nothing to bring back" in again.output


def test_a_stop_refused_before_it_acted_brings_nothing_up(setup):
    config, railway, url, reports = setup
    railway.replicas[IDS["reports-client"]] = 0  # down for a reason of its own: not this run's to start
    ctx = at_stop_services(config, reports)
    (ctx.run_dir / "plan.json").write_text((ctx.run_dir / "plan.json").read_text().replace("scale the", "scale all"))
    with pytest.raises(Exception):
        execute.stop_services(ctx)
    assert railway.updates == [] and railway.replicas[IDS["reports-client"]] == 0
    assert services_way_back(ctx.run_dir, read_events(ctx.run_dir)) == []


def test_a_stop_failing_while_the_live_database_refuses_connections_leaves_the_services_down(setup):
    config, railway, url, reports = setup
    railway.stuck.add(IDS["reports-client"])
    ctx = at_stop_services(config, reports)
    live = database_name(url)
    with psycopg.connect(url.replace(f"/{live}", "/postgres"), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{live}" ALLOW_CONNECTIONS false')  # as a resume finds it mid-window
        with pytest.raises(StepError) as failed:
            execute.stop_services(ctx)
        assert "stay down" in failed.value.message and "services-back" in failed.value.next_action
        assert railway.updates == [(IDS["api-gateway"], 0), (IDS["reports-client"], 0)]  # nothing scaled back up
        assert railway.replicas[IDS["api-gateway"]] == 0
        admin.execute(f'ALTER DATABASE "{live}" ALLOW_CONNECTIONS true')
