"""A person does it: the runbook says exactly what to do, and records who acknowledged it, and when.

Each change is a task with a key (``api-gateway:scale=0``, ``api-gateway:redeploy=<release>``,
``api-gateway:maintenance=on``). Its acknowledgement comes, in this order, from

* the acknowledgements file (``acknowledgements_file`` in the settings, or given as the
  ``acknowledgements`` option): JSON ``{"<task key>": {"by": "<who>", "at": "<when>"}}``; or
* a person at the keyboard: ``input()`` (JupyterLab's prompt, or a terminal) asks for their name
  once the task is done; an empty answer is no acknowledgement.

No acknowledgement fails the step, saying which task and how to acknowledge it. Nothing here
can read a replica count or logs: the acknowledgement is the evidence.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from rollbacklib.config import Service
from rollbacklib.errors import ConfigError, StepError
from rollbacklib.platforms.base import PlatformBase, unsupported
from rollbacklib.steps import Action


class ManualPlatform(PlatformBase):
    name = "manual"

    def __init__(self, settings=None, *, acknowledgements: str | Path | None = None,
                 ask: Callable[[str], str] | None = input):
        super().__init__(settings)
        self.file = Path(acknowledgements) if acknowledgements else getattr(settings, "acknowledgements_file", None)
        self.ask = ask

    def instruction(self, service: Service) -> str:
        return ((getattr(self.settings, "instructions", None) or {}).get(service.name)
                or f"use {service.name}'s own console or CLI")

    def describe(self, service: Service, replicas: int) -> Action:
        return Action("manual", service.name, f"a person scales {service.name} to {replicas} replica(s) "
                      f"({self.instruction(service)}) and acknowledges task {task_key(service, 'scale', replicas)!r}")

    def scale(self, service: Service, replicas: int) -> dict:
        return self._acknowledged(service, "scale", replicas,
                                  f"scale {service.name} to {replicas} replica(s) ({self.instruction(service)})")

    def redeploy(self, service: Service, release: str | None = None) -> dict:
        return self._acknowledged(service, "redeploy", release or "current",
                                  f"redeploy {service.name} ({release or 'its current release'})")

    def maintenance(self, service: Service, on: bool) -> dict:
        return self._acknowledged(service, "maintenance", "on" if on else "off",
                                  f"turn maintenance mode {'on' if on else 'off'} for {service.name}")

    def replicas(self, service: Service) -> int:
        raise unsupported(self.name, "replica count to read",
                          f"look at {service.name} where it runs; the acknowledgement is the evidence")

    def logs(self, service: Service, lines: int = 100) -> list[str]:
        raise unsupported(self.name, "logs", f"read {service.name}'s logs where it runs")

    # --- acknowledgements ---------------------------------------------------------------------------

    def _acknowledged(self, service: Service, verb: str, value: object, task: str) -> dict:
        key = task_key(service, verb, value)
        found = self._from_file(key)
        if found is None and self.ask is not None:
            found = self._typed(key, task)
        if found is None:
            where = f"add it to {self.file}" if self.file else "give an acknowledgements file"
            raise StepError(
                f"Nobody acknowledged task {key!r}: {task}.",
                next_action=f"do it, then acknowledge it: type your name when asked (JupyterLab or a terminal), or "
                            f"{where} as JSON: {{\"{key}\": {{\"by\": \"<your name>\", \"at\": \"<ISO time>\"}}}}; "
                            "then run the step again.",
                expected=key, found=None, step="platform")
        return {"service": service.name, "platform": self.name, "task": task, "key": key, **found}

    def _from_file(self, key: str) -> dict | None:
        if not self.file or not self.file.exists():
            return None
        try:
            acks = json.loads(self.file.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"The acknowledgements file {self.file} is not JSON: {err}",
                              next_action='write it as {"<task key>": {"by": "<who>", "at": "<when>"}}.',
                              step="config") from None
        ack = acks.get(key) if isinstance(acks, dict) else None
        if not isinstance(ack, dict) or not str(ack.get("by") or "").strip():
            return None
        return {"acknowledged_by": str(ack["by"]), "acknowledged_at": str(ack.get("at") or ""),
                "source": str(self.file)}

    def _typed(self, key: str, task: str) -> dict | None:
        try:
            who = self.ask(f"{task}.\nWhen it is done, type your name to acknowledge {key!r} "
                           "(empty: not done): ").strip()
        except (EOFError, OSError, RuntimeError, NotImplementedError):
            return None  # no one to ask (headless): the file is the only way
        except Exception as err:  # ipykernel's StdinNotImplementedError when the frontend has no stdin
            if type(err).__name__ == "StdinNotImplementedError":
                return None
            raise
        if not who:
            return None
        return {"acknowledged_by": who, "acknowledged_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "source": "typed"}


def task_key(service: Service, verb: str, value: object) -> str:
    return f"{service.name}:{verb}={value}"
