"""Kubernetes, through the API server (``Authorization: Bearer <token>``, the cluster's CA file).

* scale: ``PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale`` with the merge patch
  ``{"spec": {"replicas": N}}`` (``Content-Type: application/merge-patch+json``);
* read back: ``GET /apis/apps/v1/namespaces/{ns}/deployments/{name}``: the change holds when
  ``status.observedGeneration`` has caught up and ``status.readyReplicas`` (absent: 0) is N, with
  no pod left (``status.replicas`` 0) for N = 0;
* redeploy: a strategic merge patch of the Deployment (``application/strategic-merge-patch+json``):
  the container's image for a given release, or the pod template's
  ``kubectl.kubernetes.io/restartedAt`` annotation for the current one (what
  ``kubectl rollout restart`` writes), then a wait until every replica is updated and ready;
* logs: the pods of the Deployment's selector, ``GET /api/v1/namespaces/{ns}/pods/{pod}/log?tailLines=N``.

A Deployment has no maintenance mode: ``maintenance`` says so.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import httpx

from rollbacklib.config import Service
from rollbacklib.platforms.base import PlatformBase, http_call, token_from
from rollbacklib.steps import Action

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class KubernetesPlatform(PlatformBase):
    name = "kubernetes"

    def _deployment(self, service: Service) -> str:
        own = self.settings.services.get(service.name)
        return (own.deployment if own and own.deployment else service.name)

    def _path(self, service: Service, sub: str = "") -> str:
        return f"/apis/apps/v1/namespaces/{self.settings.namespace}/deployments/{self._deployment(service)}{sub}"

    def describe(self, service: Service, replicas: int) -> Action:
        s = self.settings
        return Action("platform", service.name,
                      f"PATCH {s.server.rstrip('/')}{self._path(service, '/scale')} (Authorization: Bearer "
                      f"${s.token_env}; Content-Type: {MERGE_PATCH}) {json.dumps(self._scale_body(replicas))}; "
                      f"then GET {self._path(service)} every {self.poll:g} s, up to {self.timeout:g} s, until "
                      f"status.readyReplicas = {replicas}")

    @staticmethod
    def _scale_body(replicas: int) -> dict:
        return {"spec": {"replicas": replicas}}

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        s = self.settings
        headers = {"Authorization": f"Bearer {token_from(s.token_env, self.name)}", "Accept": "application/json",
                   **kwargs.pop("headers", {})}
        verify = str(s.ca_file) if s.ca_file else True
        with httpx.Client(base_url=s.server, verify=verify, timeout=30) as client:
            return http_call(client, method, path, platform=self.name, headers=headers, **kwargs)

    def _patch(self, path: str, content_type: str, body: dict) -> dict:
        return self._request("PATCH", path, headers={"Content-Type": content_type}, content=json.dumps(body)).json()

    def status(self, service: Service) -> dict:
        deployment = self._request("GET", self._path(service)).json()
        status = deployment.get("status") or {}
        return {"spec": (deployment.get("spec") or {}).get("replicas"),
                "generation": (deployment.get("metadata") or {}).get("generation"),
                "observed": status.get("observedGeneration"), "replicas": status.get("replicas", 0),
                "ready": status.get("readyReplicas", 0), "updated": status.get("updatedReplicas", 0),
                "selector": ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}}

    def replicas(self, service: Service) -> int:
        return self.status(service)["ready"]

    def _caught_up(self, state: dict) -> bool:
        return state["generation"] is None or (state["observed"] or 0) >= state["generation"]

    def scale(self, service: Service, replicas: int) -> dict:
        before = self._request("GET", self._path(service, "/scale")).json()
        self._patch(self._path(service, "/scale"), MERGE_PATCH, self._scale_body(replicas))

        def holds(state: dict) -> bool:
            gone = state["replicas"] == 0 if replicas == 0 else True
            return self._caught_up(state) and state["ready"] == replicas and gone

        after, waited, reads = self.wait_for(service, f"{replicas} ready replica(s)", lambda: self.status(service),
                                             holds)
        return self.evidence(service, replicas, (before.get("spec") or {}).get("replicas"), after["ready"], waited,
                             reads, deployment=self._deployment(service), namespace=self.settings.namespace)

    def redeploy(self, service: Service, release: str | None = None) -> dict:
        own = self.settings.services.get(service.name)
        container = own.container if own and own.container else service.name
        if release:
            body = {"spec": {"template": {"spec": {"containers": [{"name": container, "image": release}]}}}}
        else:
            now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            body = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": now}}}}}
        patched = self._patch(self._path(service), STRATEGIC_PATCH, body)
        generation = (patched.get("metadata") or {}).get("generation")

        def holds(state: dict) -> bool:
            want = state["spec"] or 0
            return ((state["observed"] or 0) >= (generation or 0) and state["updated"] == want
                    and state["ready"] == want and state["replicas"] == want)

        after, waited, reads = self.wait_for(service, f"every replica on {release or 'a restarted pod template'}",
                                             lambda: self.status(service), holds)
        return {"service": service.name, "platform": self.name, "release": release, "generation": generation,
                "ready": after["ready"], "waited_seconds": waited, "reads": reads}

    def logs(self, service: Service, lines: int = 100) -> list[str]:
        ns = self.settings.namespace
        selector = ",".join(f"{k}={v}" for k, v in sorted(self.status(service)["selector"].items()))
        pods = self._request("GET", f"/api/v1/namespaces/{ns}/pods", params={"labelSelector": selector}).json()
        out: list[str] = []
        for pod in pods.get("items") or []:
            name = pod["metadata"]["name"]
            text = self._request("GET", f"/api/v1/namespaces/{ns}/pods/{name}/log",
                                 params={"tailLines": lines}, headers={"Accept": "text/plain"}).text
            out += [f"{name}: {line}" for line in text.splitlines()]
        return out[-lines:]
