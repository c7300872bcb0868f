"""Statuspage REST API v1: the incident opened at the start, updated around the outage window, resolved at the close.

``POST {base_url}/v1/pages/{page_id}/incidents`` with ``{"incident": {name, status, impact_override, body,
component_ids, components: {id: status}}}`` opens it (``investigating``); its ``id`` is kept in the run's state
(``store``), so every later message, in this kernel or a resumed run's, updates the same incident with ``PATCH
{base_url}/v1/pages/{page_id}/incidents/{incident_id}`` (``{"incident": {status, body, component_ids,
components}}``), following Statuspage's lifecycle: ``identified`` as the outage window opens (components
``window_component_status``), ``monitoring`` once the services are back (``operational``), ``resolved`` at the
close (``operational``). Every request carries ``Authorization: OAuth <api key>``.
"""

from __future__ import annotations

import httpx

from rollbacklib.notify.base import Channel, Message, Request, SendError, http_error, secret

INCIDENT_ID = "incident_id"
RESTORED_EVENTS = ("window-closed",)  # the services are back: the components are operational again


class Statuspage(Channel):
    kind = "statuspage"

    def _incidents(self) -> str:
        return f"{self.settings.base_url.rstrip('/')}/v1/pages/{self.settings.page_id}/incidents"

    def _components(self, status: str) -> dict:
        return {c: status for c in self.settings.component_ids}

    def component_status(self, message: Message) -> str:
        """What the components show after ``message``: down in the window, operational once restored or resolved."""
        if message.status == "resolved" or message.event in RESTORED_EVENTS:
            return "operational"
        s = self.settings
        return s.window_component_status if message.event == "window-open" else s.component_status

    def request(self, message: Message) -> Request:
        s = self.settings
        incident_id = self.store.get(INCIDENT_ID)
        components = self._components(self.component_status(message))
        if incident_id is None and message.event == "initiated":
            body = {"name": s.incident_name, "status": message.status or "investigating",
                    "impact_override": s.impact, "body": message.public}
            if s.component_ids:
                body.update(component_ids=list(s.component_ids), components=components)
            return Request("POST", self._incidents(), {"incident": body})
        body = {"status": message.status or "identified", "body": message.public}
        if s.component_ids:
            body.update(component_ids=list(s.component_ids), components=components)
        where = incident_id or "{incident_id: the one opened at the start}"
        return Request("PATCH", f"{self._incidents()}/{where}", {"incident": body})

    def send(self, message: Message) -> dict:
        request = self.request(message)
        if request.method == "PATCH" and INCIDENT_ID not in self.store:
            raise SendError("no Statuspage incident was opened by this run (its creation failed): nothing to update",
                            retry=False)
        key = secret(self.settings.api_key_env, "the Statuspage API key")
        try:
            answer = httpx.request(request.method, request.url, json=request.body, timeout=self.timeout,
                                   headers={"Authorization": f"OAuth {key}"})
        except httpx.HTTPError as err:
            raise http_error(err) from None
        if answer.status_code not in (200, 201):
            raise SendError(f"HTTP {answer.status_code}: {answer.text[:200]}", answer.status_code)
        try:
            incident = answer.json()
        except ValueError:
            raise SendError(f"HTTP {answer.status_code} but the answer is not JSON", answer.status_code) from None
        if request.method == "POST":
            if not incident.get("id"):
                raise SendError("Statuspage created no incident id", answer.status_code)
            self.store[INCIDENT_ID] = incident["id"]
        return {"http_status": answer.status_code, INCIDENT_ID: incident.get("id"),
                "incident_status": incident.get("status")}
