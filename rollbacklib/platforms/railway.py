"""Railway, through its public GraphQL API (``POST {endpoint}``, ``Authorization: Bearer <token>``).

The operations are the ones Railway's own CLI sends:

* read: ``serviceInstance(serviceId, environmentId) { numReplicas }`` and the latest
  deployment's status (``deployments(first: 1, input: {serviceId, environmentId})``);
* scale: ``serviceInstanceUpdate(serviceId, environmentId, input: { numReplicas })``; a new count
  applies to the next deployment, so it is followed by ``serviceInstanceRedeploy`` unless
  ``redeploy_after_scale = false``;
* redeploy: ``serviceInstanceRedeploy`` (the current release) or ``serviceInstanceDeployV2``
  with ``commitSha`` (a given release);
* logs: ``deploymentLogs(deploymentId, limit)`` of the latest deployment.

A change holds when ``numReplicas`` reads back as asked and the latest deployment has settled:
``SUCCESS`` for one replica or more, no longer building or deploying for 0. Railway has no
maintenance mode: ``maintenance`` says so.
"""

from __future__ import annotations

import json

import httpx

from rollbacklib.config import Service
from rollbacklib.errors import StepError
from rollbacklib.platforms.base import TECHNICAL, PlatformBase, http_call, token_from
from rollbacklib.steps import Action

STATE = """query ServiceState($serviceId: String!, $environmentId: String!) {
  serviceInstance(serviceId: $serviceId, environmentId: $environmentId) { numReplicas }
  deployments(first: 1, input: { serviceId: $serviceId, environmentId: $environmentId }) {
    edges { node { id status } }
  }
}"""
UPDATE = """mutation ServiceInstanceUpdate($serviceId: String!, $environmentId: String, $input: ServiceInstanceUpdateInput!) {
  serviceInstanceUpdate(serviceId: $serviceId, environmentId: $environmentId, input: $input)
}"""
REDEPLOY = """mutation ServiceInstanceRedeploy($environmentId: String!, $serviceId: String!) {
  serviceInstanceRedeploy(environmentId: $environmentId, serviceId: $serviceId)
}"""
DEPLOY = """mutation ServiceInstanceDeployV2($environmentId: String!, $serviceId: String!, $commitSha: String) {
  serviceInstanceDeployV2(environmentId: $environmentId, serviceId: $serviceId, commitSha: $commitSha)
}"""
LOGS = """query DeploymentLogs($deploymentId: String!, $limit: Int) {
  deploymentLogs(deploymentId: $deploymentId, limit: $limit) { timestamp message severity }
}"""
IN_FLIGHT = {"INITIALIZING", "QUEUED", "WAITING", "BUILDING", "DEPLOYING", "NEEDS_APPROVAL"}
BROKEN = {"FAILED", "CRASHED"}


def operation_name(document: str) -> str:
    return document.split("(", 1)[0].split()[-1]


class RailwayPlatform(PlatformBase):
    name = "railway"

    def _ids(self, service: Service) -> dict:
        return {"serviceId": self.settings.services[service.name].service_id,
                "environmentId": self.settings.environment_id}

    def _calls(self, service: Service, replicas: int) -> list[tuple[str, dict]]:
        ids = self._ids(service)
        calls = [(UPDATE, {**ids, "input": {"numReplicas": replicas}})]
        return calls + [(REDEPLOY, ids)] if self.settings.redeploy_after_scale else calls

    def describe(self, service: Service, replicas: int) -> Action:
        s = self.settings
        posts = "; then ".join(f"POST {s.endpoint} (Authorization: Bearer ${s.token_env}) {operation_name(doc)} "
                               f"variables={json.dumps(variables, sort_keys=True)}"
                               for doc, variables in self._calls(service, replicas))
        return Action("platform", service.name, f"{posts}; then ServiceState every {self.poll:g} s, up to "
                      f"{self.timeout:g} s, until numReplicas = {replicas} and the latest deployment "
                      f"{'is SUCCESS' if replicas else 'has settled'}")

    def _graphql(self, document: str, variables: dict) -> dict:
        token = token_from(self.settings.token_env, self.name)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        with httpx.Client(timeout=30) as client:
            response = http_call(client, "POST", self.settings.endpoint, platform=self.name, headers=headers,
                                 content=json.dumps({"query": document, "variables": variables}))
        body = response.json()
        if body.get("errors"):
            raise StepError(f"Railway refused {operation_name(document)}: "
                            + "; ".join(e.get("message", "?") for e in body["errors"]),
                            next_action="check the token's access to the project and the service and "
                                        "environment ids in the platform settings.",
                            found=variables, step="platform", escalate=TECHNICAL)
        return body["data"]

    def state(self, service: Service) -> dict:
        data = self._graphql(STATE, self._ids(service))
        edges = (data.get("deployments") or {}).get("edges") or []
        latest = edges[0]["node"] if edges else {}
        return {"numReplicas": (data.get("serviceInstance") or {}).get("numReplicas"),
                "deployment": latest.get("id"), "status": latest.get("status")}

    def replicas(self, service: Service) -> int:
        return self.state(service)["numReplicas"] or 0

    def scale(self, service: Service, replicas: int) -> dict:
        before = self.state(service)
        calls = self._calls(service, replicas)
        for document, variables in calls:
            self._graphql(document, variables)

        def holds(state: dict) -> bool:
            if self.settings.redeploy_after_scale and state["deployment"] == before["deployment"]:
                return False  # the new deployment has not shown up yet
            if state["status"] in BROKEN and replicas:
                raise self._broken(service, state)
            settled = state["status"] == "SUCCESS" if replicas else state["status"] not in IN_FLIGHT
            return state["numReplicas"] == replicas and settled

        after, waited, reads = self.wait_for(service, f"{replicas} replica(s)", lambda: self.state(service), holds)
        return self.evidence(service, replicas, before["numReplicas"], after["numReplicas"], waited, reads,
                             deployment=after["deployment"], status=after["status"],
                             calls=[operation_name(doc) for doc, _ in calls])

    def _broken(self, service: Service, state: dict) -> StepError:
        return StepError(f"{service.name}'s deployment {state['deployment']} on Railway is {state['status']}.",
                         next_action=f"read its logs (deploymentLogs of {state['deployment']}) and redeploy "
                                     "the previous release; the run stops here.",
                         found=state, step="platform", escalate=TECHNICAL)

    def redeploy(self, service: Service, release: str | None = None) -> dict:
        before = self.state(service)
        ids = self._ids(service)
        if release is None:
            self._graphql(REDEPLOY, ids)
        else:
            self._graphql(DEPLOY, {**ids, "commitSha": release})

        def holds(state: dict) -> bool:
            if state["deployment"] == before["deployment"]:
                return False
            if state["status"] in BROKEN:
                raise self._broken(service, state)
            return state["status"] == "SUCCESS"

        after, waited, reads = self.wait_for(service, f"a new deployment of {release or 'the current release'}",
                                             lambda: self.state(service), holds)
        return {"service": service.name, "platform": self.name, "release": release, "previous": before["deployment"],
                "deployment": after["deployment"], "status": after["status"], "waited_seconds": waited, "reads": reads}

    def logs(self, service: Service, lines: int = 100) -> list[str]:
        deployment = self.state(service)["deployment"]
        if not deployment:
            return []
        data = self._graphql(LOGS, {"deploymentId": deployment, "limit": lines})
        return [f"{e.get('timestamp')} {e.get('severity') or ''} {e.get('message')}".replace("  ", " ")
                for e in data.get("deploymentLogs") or []]
