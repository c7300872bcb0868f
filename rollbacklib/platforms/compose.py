"""Docker Compose, through the ``docker compose`` CLI, each command rendered once and run verbatim.

* scale to N > 0: ``docker compose -p P -f F up -d --no-recreate --scale SVC=N SVC``;
* scale to 0: ``docker compose -p P -f F stop SVC``;
* read back: ``docker compose -p P -f F ps --status running -q SVC`` (one container id a line);
* redeploy the current release: ``up -d --force-recreate SVC``; another release is the compose
  file's business (its image tag), so a given release is refused, saying so;
* logs: ``logs --no-color --tail N SVC``.

Compose has no maintenance mode: ``maintenance`` says so.
"""

from __future__ import annotations

import shlex

from rollbacklib.config import Service
from rollbacklib.platforms.base import PlatformBase, run_argv, unsupported
from rollbacklib.steps import Action


class ComposePlatform(PlatformBase):
    name = "compose"

    def _service(self, service: Service) -> str:
        own = self.settings.services.get(service.name)
        return own.service if own and own.service else service.name

    def base_argv(self) -> list[str]:
        s = self.settings
        argv = [s.docker, "compose", "-p", s.project]
        for f in s.files:
            argv += ["-f", str(f)]
        return argv

    def scale_argv(self, service: Service, replicas: int) -> list[str]:
        svc = self._service(service)
        if replicas == 0:
            return self.base_argv() + ["stop", svc]
        return self.base_argv() + ["up", "-d", "--no-recreate", "--scale", f"{svc}={replicas}", svc]

    def ps_argv(self, service: Service) -> list[str]:
        return self.base_argv() + ["ps", "--status", "running", "-q", self._service(service)]

    def describe(self, service: Service, replicas: int) -> Action:
        argv = self.scale_argv(service, replicas)
        return Action("platform", service.name, f"{shlex.join(argv)}; then {shlex.join(self.ps_argv(service))} "
                      f"every {self.poll:g} s, up to {self.timeout:g} s, until {replicas} container(s) run",
                      tuple(argv))

    def replicas(self, service: Service) -> int:
        return len([line for line in run_argv(self.ps_argv(service), platform=self.name).splitlines() if line.strip()])

    def scale(self, service: Service, replicas: int) -> dict:
        before = self.replicas(service)
        argv = self.scale_argv(service, replicas)
        run_argv(argv, platform=self.name, timeout=self.timeout)
        after, waited, reads = self.wait_for(service, f"{replicas} running container(s)",
                                             lambda: self.replicas(service), lambda n: n == replicas)
        return self.evidence(service, replicas, before, after, waited, reads, argv=argv)

    def redeploy(self, service: Service, release: str | None = None) -> dict:
        if release:
            raise unsupported(self.name, "way to deploy a given release",
                              f"set {self._service(service)}'s image to {release} in the compose file, then "
                              "redeploy without a release")
        want = max(self.replicas(service), 1)
        argv = self.base_argv() + ["up", "-d", "--force-recreate", self._service(service)]
        run_argv(argv, platform=self.name, timeout=self.timeout)
        after, waited, reads = self.wait_for(service, f"{want} running container(s)", lambda: self.replicas(service),
                                             lambda n: n == want)
        return {"service": service.name, "platform": self.name, "argv": argv, "replicas": after,
                "waited_seconds": waited, "reads": reads}

    def logs(self, service: Service, lines: int = 100) -> list[str]:
        argv = self.base_argv() + ["logs", "--no-color", "--tail", str(lines), self._service(service)]
        return run_argv(argv, platform=self.name).splitlines()
