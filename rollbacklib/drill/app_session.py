"""The drill's connected application: a small detached process that holds a session open.

It connects with ``application_name`` "api-gateway", as the seed plan's gateway would, checks its
connection every second and logs to ``app-session.log`` in the drill folder. It is started in a
session of its own, so it outlives the command that started it (``rollback drill --stage-only``)
and is there for the runbook to drain and terminate. It exits when its session is terminated.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg

from rollbacklib.errors import AbortedError

APP_NAME = "api-gateway"
LOG_NAME = "app-session.log"

_APP = """
import sys, time
import psycopg

def say(text):
    print(time.strftime("%Y-%m-%dT%H:%M:%S%z"), text, flush=True)

url, name = sys.argv[1], sys.argv[2]
conn = psycopg.connect(url, autocommit=True, application_name=name)
say(f"{name} connected (server pid {conn.info.backend_pid})")
while True:
    time.sleep(1)
    try:
        conn.execute("SELECT 1")
    except psycopg.Error as err:
        say(f"{name} lost its session: {str(err).strip()}")
        sys.exit(0)
"""


def start_app_session(url: str, folder: Path, *, timeout: float = 30) -> int:
    """Start the app process against ``url``; return its pid once its session shows in pg_stat_activity."""
    log = folder / LOG_NAME
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", _APP, url, APP_NAME, str(log)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, cwd=folder, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with psycopg.connect(url, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND datname = "
                            "current_database()", (APP_NAME,)).fetchone():
                return proc.pid
        time.sleep(0.2)
    stop_app_session(proc.pid, folder)
    raise AbortedError(f"The drill's app session did not connect within {timeout:.0f} s.",
                       next_action=f"read {log}: its last lines say why.", step="app-session",
                       found=log.read_text(errors="replace")[-500:])


def stop_app_session(pid: int | None, folder: Path) -> bool:
    """Stop the app process ``pid`` if it is still running; False if it was already gone.

    The pid is only acted on if its command line names this drill folder's log: a pid reused
    by another process since is left alone.
    """
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if str(folder / LOG_NAME) not in proc.cmdline():
            return False
        if proc.status() == psutil.STATUS_ZOMBIE:  # exited on its own, not reaped yet by its parent
            _reap(pid)
            return False
        proc.terminate()
        try:
            proc.wait(5)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        _reap(pid)
        return False
    return True


def _reap(pid: int) -> None:
    """Collect the exit status if we are its parent (the tests are; a finished CLI is not)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
