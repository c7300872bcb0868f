"""Local processes the runbook starts and stops: one process per service (the drill's platform).

Each service is a command line (``{python}`` is this interpreter), a pid file, and a health URL
(answers 200) or a port (accepts TCP on 127.0.0.1). Scale to 0: SIGTERM, SIGKILL after the
service's ``stop_timeout_seconds``, and the pid gone. Scale to 1: started detached (its own
session, output into its log file), then read back until it is healthy. A process counts as
running only while its pid is alive and is the process started (the pid file holds the pid and
its start time, so a pid reused by another program is not it). There is no maintenance mode, and
one replica at most.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from rollbacklib.config import Service
from rollbacklib.errors import ConfigError, StepError
from rollbacklib.platforms.base import TECHNICAL, PlatformBase, unsupported
from rollbacklib.platform_settings import ProcessService
from rollbacklib.steps import Action


class ProcessPlatform(PlatformBase):
    name = "process"

    def _own(self, service: Service) -> ProcessService:
        return self.settings.services[service.name]

    def argv(self, service: Service) -> list[str]:
        return [part.replace("{python}", sys.executable) for part in self._own(service).command]

    def _log_file(self, own: ProcessService) -> Path:
        return own.log_file or own.pid_file.with_suffix(".log")

    def _probe(self, own: ProcessService) -> str:
        if own.health_url:
            return f"GET {own.health_url} answers 200"
        return f"127.0.0.1:{own.port} accepts TCP" if own.port else "the process is alive"

    def describe(self, service: Service, replicas: int) -> Action:
        own = self._own(service)
        if replicas == 0:
            return Action("platform", service.name, f"SIGTERM the pid in {own.pid_file}, SIGKILL after "
                          f"{own.stop_timeout_seconds:g} s; then wait up to {self.timeout:g} s until the pid is gone")
        argv = self.argv(service)
        return Action("platform", service.name, f"start {shlex.join(argv)} detached (pid file {own.pid_file}, log "
                      f"{self._log_file(own)}); then wait up to {self.timeout:g} s until {self._probe(own)}",
                      tuple(argv))

    # --- reading back -------------------------------------------------------------------------------

    def pid(self, service: Service) -> int | None:
        """The pid of the service's process if it runs now (alive, not a zombie, running its command)."""
        own = self._own(service)
        try:
            fields = own.pid_file.read_text().split()
            pid = int(fields[0])
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                _reap(pid)
                return None
            if len(fields) > 1:  # the start time recorded at the start: still alive while it exits
                return pid if abs(proc.create_time() - float(fields[1])) < 0.01 else None
            return pid if proc.cmdline() == self.argv(service) else None
        except (OSError, ValueError, IndexError, psutil.Error):
            return None

    def healthy(self, service: Service) -> bool:
        own = self._own(service)
        if self.pid(service) is None:
            return False
        if own.health_url:
            try:
                return httpx.get(own.health_url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        if own.port:
            try:
                with socket.create_connection(("127.0.0.1", own.port), timeout=1):
                    return True
            except OSError:
                return False
        return True

    def replicas(self, service: Service) -> int:
        return 1 if self.healthy(service) else 0

    # --- changing ---------------------------------------------------------------------------------

    def scale(self, service: Service, replicas: int) -> dict:
        if replicas not in (0, 1):
            raise ConfigError(f"The process platform runs one process per service, not {replicas} ({service.name}).",
                              next_action=f"set {service.name}'s replicas to 1 in the environment's services.",
                              step="config")
        before = self.replicas(service)
        done = self._stop(service) if replicas == 0 else self._start(service)
        return self.evidence(service, replicas, before, **done)

    def _stop(self, service: Service) -> dict:
        own, pid = self._own(service), self.pid(service)
        sent: list[str] = []
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            sent.append("SIGTERM")
            deadline = time.monotonic() + own.stop_timeout_seconds
            while time.monotonic() < deadline and self.pid(service) is not None:
                time.sleep(self.poll)
            if self.pid(service) is not None:
                os.kill(pid, signal.SIGKILL)
                sent.append("SIGKILL")
        after, waited, reads = self.wait_for(service, "0 processes", lambda: self.pid(service), lambda p: p is None)
        own.pid_file.unlink(missing_ok=True)
        return {"after": 0, "waited": waited, "reads": reads, "pid": pid, "signals": sent}

    def _start(self, service: Service) -> dict:
        own = self._own(service)
        if self.healthy(service):
            return {"after": 1, "waited": 0.0, "reads": 1, "pid": self.pid(service), "started": False}
        if self.pid(service) is not None:  # alive but not healthy: let the wait decide
            proc = None
        else:
            proc = self._spawn(service, own)
        try:
            _, waited, reads = self.wait_for(service, f"1 healthy process ({self._probe(own)})",
                                             lambda: self._alive_or_fail(service, proc), lambda up: up)
        except StepError:
            self._stop_quietly(service)
            raise
        return {"after": 1, "waited": waited, "reads": reads, "pid": self.pid(service), "started": proc is not None}

    def _spawn(self, service: Service, own: ProcessService) -> subprocess.Popen:
        env = dict(os.environ)
        for item in own.environment:
            env[item.name] = os.environ.get(item.from_env, "")
        own.pid_file.parent.mkdir(parents=True, exist_ok=True)
        log = self._log_file(own)
        with open(log, "ab") as out:
            proc = subprocess.Popen(self.argv(service), cwd=own.cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            started = psutil.Process(proc.pid).create_time()
        except psutil.Error:  # already gone: the wait reports how it exited
            started = 0.0
        own.pid_file.write_text(f"{proc.pid} {started}\n")
        return proc

    def _alive_or_fail(self, service: Service, proc: subprocess.Popen | None) -> bool:
        if proc is not None and proc.poll() is not None:
            raise StepError(f"{service.name} exited with code {proc.returncode} while starting.",
                            next_action=f"read its log {self._log_file(self._own(service))} and fix what it says.",
                            found=self.logs(service, 20), step="platform", escalate=TECHNICAL)
        return self.healthy(service)

    def _stop_quietly(self, service: Service) -> None:
        """After a start that never got healthy: leave no half-started process behind."""
        pid = self.pid(service)
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            _reap(pid)
        self._own(service).pid_file.unlink(missing_ok=True)

    def redeploy(self, service: Service, release: str | None = None) -> dict:
        if release:
            raise unsupported(self.name, "releases", f"change {service.name}'s command in the platform settings")
        stopped, started = self._stop(service), self._start(service)
        return {"service": service.name, "platform": self.name, "stopped": stopped, "started": started}

    def logs(self, service: Service, lines: int = 100) -> list[str]:
        log = self._log_file(self._own(service))
        if not log.exists():
            return []
        return log.read_text(errors="replace").splitlines()[-lines:]


def _reap(pid: int) -> None:
    """Collect the exit status of a child of this process (so it is not left a zombie); others are not ours."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
