"""Railway and Kubernetes against local servers on 127.0.0.1 that check each request as the providers document it."""

from __future__ import annotations

import json
import secrets

import pytest

from rollbacklib.config import Service
from rollbacklib.errors import ConfigError, StepError
from rollbacklib.platform_settings import KubernetesSettings, RailwaySettings
from rollbacklib.platforms import platform_for
from rollbacklib.platforms.base import Unsupported
from rollbacklib.platforms.railway import DEPLOY, LOGS, REDEPLOY, STATE, UPDATE

TOKEN_ENV = "ROLLBACK_TEST_PLATFORM_TOKEN"
SERVICE = Service(name="api-gateway", replicas=2)


@pytest.fixture
def token(monkeypatch):
    value = "tok-" + secrets.token_hex(16)  # built at run time: no token-like literal in the tree
    monkeypatch.setenv(TOKEN_ENV, value)
    return value


class Env:
    """The parts of a resolved environment ``platform_for`` reads."""

    def __init__(self, settings):
        self.name, self.platform, self.service_platform = "test", settings, settings.kind


# --- Railway --------------------------------------------------------------------------------------

def railway(httpserver, **extra):
    settings = RailwaySettings(kind="railway", endpoint=httpserver.url_for("/graphql/v2"), token_env=TOKEN_ENV,
                               environment_id="env-1", services={"api-gateway": {"service_id": "svc-1"}},
                               poll_seconds=0.05, **extra)
    return platform_for(Env(settings))


IDS = {"serviceId": "svc-1", "environmentId": "env-1"}


def expect_graphql(httpserver, token, document, variables, data):
    httpserver.expect_ordered_request(
        "/graphql/v2", method="POST", json={"query": document, "variables": variables},
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    ).respond_with_json({"data": data})


def state(replicas, deployment, status):
    return {"serviceInstance": {"numReplicas": replicas},
            "deployments": {"edges": [{"node": {"id": deployment, "status": status}}]}}


def test_railway_scale_sends_update_then_redeploy_and_waits_for_the_new_deployment(httpserver, token):
    expect_graphql(httpserver, token, STATE, IDS, state(2, "d1", "SUCCESS"))
    expect_graphql(httpserver, token, UPDATE, {**IDS, "input": {"numReplicas": 0}}, {"serviceInstanceUpdate": True})
    expect_graphql(httpserver, token, REDEPLOY, IDS, {"serviceInstanceRedeploy": True})
    expect_graphql(httpserver, token, STATE, IDS, state(0, "d1", "SUCCESS"))  # not the new deployment yet
    expect_graphql(httpserver, token, STATE, IDS, state(0, "d2", "DEPLOYING"))
    expect_graphql(httpserver, token, STATE, IDS, state(0, "d2", "SUCCESS"))
    evidence = railway(httpserver).scale(SERVICE, 0)
    httpserver.check_assertions()
    assert evidence["replicas_before"] == 2 and evidence["replicas"] == 0 and evidence["reads"] == 3
    assert evidence["deployment"] == "d2" and evidence["calls"] == ["ServiceInstanceUpdate", "ServiceInstanceRedeploy"]
    assert token not in json.dumps(evidence)


def test_railway_describe_renders_the_calls_without_the_token(httpserver, token):
    action = railway(httpserver).describe(SERVICE, 2)
    assert action.kind == "platform"
    assert f"POST {httpserver.url_for('/graphql/v2')}" in action.text and f"${TOKEN_ENV}" in action.text
    assert 'ServiceInstanceUpdate variables={"environmentId": "env-1", "input": {"numReplicas": 2}, ' \
           '"serviceId": "svc-1"}' in action.text
    assert "ServiceInstanceRedeploy" in action.text and token not in action.text


def test_railway_never_reaching_the_count_fails_with_the_escalation(httpserver, token):
    expect_graphql(httpserver, token, STATE, IDS, state(2, "d1", "SUCCESS"))
    expect_graphql(httpserver, token, UPDATE, {**IDS, "input": {"numReplicas": 0}}, {"serviceInstanceUpdate": True})
    httpserver.expect_request("/graphql/v2", method="POST", json={"query": STATE, "variables": IDS}) \
        .respond_with_json({"data": state(2, "d1", "SUCCESS")})
    platform = railway(httpserver, redeploy_after_scale=False, timeout_seconds=0.3)
    with pytest.raises(StepError) as err:
        platform.scale(SERVICE, 0)
    assert err.value.escalate == "L1" and "did not reach 0 replica(s)" in err.value.message


def test_railway_graphql_errors_and_a_missing_token(httpserver, token, monkeypatch):
    httpserver.expect_request("/graphql/v2", method="POST").respond_with_json(
        {"errors": [{"message": "Not Authorized"}]})
    with pytest.raises(StepError, match="Not Authorized") as err:
        railway(httpserver).replicas(SERVICE)
    assert err.value.escalate == "L1"
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(ConfigError, match=TOKEN_ENV):
        railway(httpserver).replicas(SERVICE)


def test_railway_redeploys_a_release_and_reads_logs(httpserver, token):
    expect_graphql(httpserver, token, STATE, IDS, state(2, "d1", "SUCCESS"))
    expect_graphql(httpserver, token, DEPLOY, {**IDS, "commitSha": "abc123"}, {"serviceInstanceDeployV2": "d3"})
    expect_graphql(httpserver, token, STATE, IDS, state(2, "d3", "SUCCESS"))
    expect_graphql(httpserver, token, STATE, IDS, state(2, "d3", "SUCCESS"))
    expect_graphql(httpserver, token, LOGS, {"deploymentId": "d3", "limit": 2},
                   {"deploymentLogs": [{"timestamp": "t1", "message": "listening", "severity": "info"},
                                       {"timestamp": "t2", "message": "login failed", "severity": "error"}]})
    platform = railway(httpserver)
    assert platform.redeploy(SERVICE, "abc123")["deployment"] == "d3"
    assert platform.logs(SERVICE, 2) == ["t1 info listening", "t2 error login failed"]
    httpserver.check_assertions()
    with pytest.raises(Unsupported, match="no maintenance mode"):
        platform.maintenance(SERVICE, True)


# --- Kubernetes -----------------------------------------------------------------------------------

DEPLOYMENT = "/apis/apps/v1/namespaces/prod/deployments/gateway"


def kubernetes(httpserver, **extra):
    settings = KubernetesSettings(kind="kubernetes", server=httpserver.url_for("/"), namespace="prod",
                                  token_env=TOKEN_ENV, services={"api-gateway": {"deployment": "gateway"}},
                                  poll_seconds=0.05, **extra)
    return platform_for(Env(settings))


def deployment(spec, generation, observed, **status):
    return {"metadata": {"name": "gateway", "generation": generation}, "spec": {"replicas": spec,
            "selector": {"matchLabels": {"app": "gateway"}}}, "status": {"observedGeneration": observed, **status}}


def test_kubernetes_scale_patches_the_scale_subresource_and_waits_for_ready(httpserver, token):
    auth = {"Authorization": f"Bearer {token}"}
    httpserver.expect_ordered_request(f"{DEPLOYMENT}/scale", method="GET", headers=auth).respond_with_json(
        {"kind": "Scale", "spec": {"replicas": 0}, "status": {"replicas": 0}})
    httpserver.expect_ordered_request(
        f"{DEPLOYMENT}/scale", method="PATCH", json={"spec": {"replicas": 2}},
        headers={**auth, "Content-Type": "application/merge-patch+json"},
    ).respond_with_json({"kind": "Scale", "spec": {"replicas": 2}, "status": {"replicas": 0}})
    httpserver.expect_ordered_request(DEPLOYMENT, method="GET", headers=auth).respond_with_json(
        deployment(2, 5, 4))  # the controller has not seen the change yet
    httpserver.expect_ordered_request(DEPLOYMENT, method="GET", headers=auth).respond_with_json(
        deployment(2, 5, 5, replicas=2, readyReplicas=1))
    httpserver.expect_ordered_request(DEPLOYMENT, method="GET", headers=auth).respond_with_json(
        deployment(2, 5, 5, replicas=2, readyReplicas=2))
    evidence = kubernetes(httpserver).scale(SERVICE, 2)
    httpserver.check_assertions()
    assert evidence["replicas_before"] == 0 and evidence["replicas"] == 2 and evidence["reads"] == 3


def test_kubernetes_scale_to_zero_waits_for_the_pods_to_go_and_times_out_with_escalation(httpserver, token):
    httpserver.expect_request(f"{DEPLOYMENT}/scale", method="GET").respond_with_json({"spec": {"replicas": 2}})
    httpserver.expect_request(f"{DEPLOYMENT}/scale", method="PATCH", json={"spec": {"replicas": 0}},
                              headers={"Content-Type": "application/merge-patch+json"}).respond_with_json({})
    httpserver.expect_request(DEPLOYMENT, method="GET").respond_with_json(
        deployment(0, 2, 2, replicas=1))  # a pod terminating forever; readyReplicas omitted (0)
    with pytest.raises(StepError) as err:
        kubernetes(httpserver, timeout_seconds=0.3).scale(SERVICE, 0)
    assert err.value.escalate == "L1" and "0 ready replica(s)" in err.value.message


def test_kubernetes_describe_redeploy_and_logs(httpserver, token):
    text = kubernetes(httpserver).describe(SERVICE, 0).text
    assert f"PATCH {httpserver.url_for('/').rstrip('/')}{DEPLOYMENT}/scale" in text
    assert "application/merge-patch+json" in text and '{"spec": {"replicas": 0}}' in text and token not in text
    httpserver.expect_ordered_request(
        DEPLOYMENT, method="PATCH", headers={"Content-Type": "application/strategic-merge-patch+json"},
        json={"spec": {"template": {"spec": {"containers": [{"name": "api-gateway", "image": "gw:1.4.2"}]}}}},
    ).respond_with_json(deployment(2, 7, 6))
    httpserver.expect_ordered_request(DEPLOYMENT, method="GET").respond_with_json(
        deployment(2, 7, 7, replicas=2, readyReplicas=2, updatedReplicas=2))
    httpserver.expect_ordered_request(DEPLOYMENT, method="GET").respond_with_json(deployment(2, 7, 7))
    httpserver.expect_ordered_request("/api/v1/namespaces/prod/pods", method="GET",
                                      query_string={"labelSelector": "app=gateway"}).respond_with_json(
        {"items": [{"metadata": {"name": "gateway-abc"}}]})
    httpserver.expect_ordered_request("/api/v1/namespaces/prod/pods/gateway-abc/log", method="GET",
                                      query_string={"tailLines": "3"}).respond_with_data("a\nb\nc\n")
    platform = kubernetes(httpserver)
    assert platform.redeploy(SERVICE, "gw:1.4.2")["ready"] == 2
    assert platform.logs(SERVICE, 3) == ["gateway-abc: a", "gateway-abc: b", "gateway-abc: c"]
    httpserver.check_assertions()
