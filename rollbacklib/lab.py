"""JupyterLab for the incident: the five phase notebooks, parameterized for one run, in its run folder.

``prepare_lab`` writes the notebooks into the run folder with papermill's parameters injected
(``parameterize_notebook`` over ``load_notebook_node``: nothing is executed), and ``serve_lab``
starts JupyterLab on that folder, on 127.0.0.1 with a fresh token. The operator steps through
the cells; every cell calls the same library as the headless run, so what they run lands in
the same journal, state and ``run.json``, and the notebooks they save are the evidence. When
JupyterLab stops, the saved notebooks are masked and sealed into the journal's hash chain.
"""

from __future__ import annotations

import os
import secrets as tokens
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import nbformat

from rollbacklib import frontends
from rollbacklib.config import WORKDIR_ENV, load_config, working_directory
from rollbacklib.errors import ConfigError
from rollbacklib.prisma import validate_migration_id
from rollbacklib.redaction import config_secrets, refuse_credentials
from rollbacklib.run import default_reports_dir, new_run_id, run_folder
from rollbacklib.steps import PHASES

if TYPE_CHECKING:
    from rollbacklib.conclude import Concluded

PARAMETERS_TAG = "injected-parameters"


@dataclass
class LabRun:
    run_dir: Path
    parameters: dict
    written: list[Path] = field(default_factory=list)  # notebooks prepared now
    kept: list[Path] = field(default_factory=list)  # notebooks already in the run folder, left as they were
    secrets: list[str] = field(default_factory=list, repr=False)
    concluded: "Concluded | None" = None  # run.json, report.html, postmortem.md, once JupyterLab stopped

    @property
    def notebooks(self) -> list[Path]:
        return [self.run_dir / f"{phase}.ipynb" for phase in PHASES]


def prepare_lab(*, migration_id: str, environment: str, config_path: str | None = None,
                reports_dir: str | None = None, run_id: str | None = None, backup: str | None = None,
                dry_run: bool = False) -> LabRun:
    """Write the phase notebooks, parameterized for this run, into its run folder. Executes nothing.

    A notebook already in the folder (a run resumed in JupyterLab) is kept as it is: it is evidence.
    """
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from rollbacklib.pipeline import notebooks_dir

    refuse_credentials({"migration_id": migration_id, "environment": environment, "config_path": config_path,
                        "reports_dir": reports_dir, "run_id": run_id, "backup": backup})
    validate_migration_id(migration_id)
    config = load_config(config_path)
    config.environment(environment).database_url()  # the kernels read it: missing is bad usage, now
    run_id = run_id or new_run_id()
    reports = Path(reports_dir or default_reports_dir()).resolve()
    run_dir = run_folder(reports, migration_id, environment, run_id)
    if backup:
        backup = str(Path(backup).expanduser().resolve())  # the kernels run in the run folder
    parameters = {"migration_id": migration_id, "environment": environment, "config_path": str(config.path),
                  "run_id": run_id, "reports_dir": str(reports), "dry_run": bool(dry_run), "approve": "",
                  "backup": backup or ""}
    run_dir.mkdir(parents=True, exist_ok=True)
    lab = LabRun(run_dir, parameters, secrets=config_secrets(config))
    source = notebooks_dir()
    for phase in PHASES:
        target = run_dir / f"{phase}.ipynb"
        if target.exists():
            lab.kept.append(target)
            continue
        nb = parameterize_notebook(load_notebook_node(str(source / f"{phase}.ipynb")), parameters,
                                   comment="Parameters of this run (rollback lab): names, IDs and paths, never secrets")
        nb.metadata.setdefault("rollbacklib", {})["prepared_by"] = "rollback lab"
        nbformat.write(nb, str(target))
        lab.written.append(target)
    return lab


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LabServer:
    process: subprocess.Popen
    url: str  # with its token: the way in
    port: int


def start_lab(run_dir: Path, *, port: int | None = None, timeout: float = 120.0) -> LabServer:
    """Start JupyterLab on ``run_dir``, on 127.0.0.1 with a fresh token; return once it answers."""
    import httpx

    port = port or free_port()
    token = tokens.token_urlsafe(24)
    folder = Path(tempfile.mkdtemp(prefix="rollback-lab-"))
    token_file = folder / "token"
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--notebook-dir", str(run_dir),
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    # The token reaches the server through a file it reads at start and that is gone once it
    # answers: never on the command line (ps) nor in the kernels' environment.
    env = {**os.environ, **kernel_environment(), "JUPYTER_TOKEN_FILE": str(token_file)}
    env.pop("JUPYTER_TOKEN", None)
    process = subprocess.Popen(command, env=env, cwd=str(run_dir), stdin=subprocess.DEVNULL,
                               start_new_session=True)  # Ctrl-C reaches `rollback lab`, which stops it
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise ConfigError(f"JupyterLab exited with code {process.returncode} before it answered on port {port}.",
                                  next_action="read its messages above; choose another --port if that one is taken.",
                                  step="lab")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"},
                             timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ConfigError(f"JupyterLab did not answer on port {port} within {timeout:.0f} s.",
                                  next_action="read its messages above and start it again.", step="lab")
            time.sleep(0.3)
    except BaseException:
        stop_lab(process)
        raise
    finally:
        token_file.unlink(missing_ok=True)
        folder.rmdir()
    return LabServer(process, f"http://127.0.0.1:{port}/lab/tree/{PHASES[0]}.ipynb?token={token}", port)


def stop_lab(process: subprocess.Popen, wait: float = 30.0) -> None:
    """Stop JupyterLab (and its kernels) as its own Ctrl-C would, then for good if it does not go."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(wait)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def kernel_environment() -> dict[str, str]:
    """What JupyterLab hands its kernels, so that they resolve the run as ``rollback run``'s kernels do.

    The kernels run in the run folder: the packaged config's ``backup_dir`` is resolved against
    the command's working directory (``$ROLLBACK_WORKDIR``), and advice names this front end.
    """
    return {WORKDIR_ENV: str(working_directory()), frontends.KERNEL_ENV: frontends.LAB}


def seal_lab(lab: LabRun) -> list[dict]:
    """Once JupyterLab is stopped: mask the saved notebooks, seal every new or changed file of the run,
    then write ``run.json``, ``report.html`` and ``postmortem.md`` (sealed too), whatever the outcome."""
    from rollbacklib.audit import record_changed_files
    from rollbacklib.conclude import conclude
    from rollbacklib.redaction import scrub_file

    for path in lab.run_dir.rglob("*"):  # JupyterLab's .ipynb_checkpoints too: masked, though not sealed
        scrub_file(path, lab.secrets)
    if not (lab.run_dir / "journal.jsonl").exists():
        return []  # nothing was run: nothing to seal, and no journal to start for it
    sealed = record_changed_files(lab.run_dir, secrets=lab.secrets)
    lab.concluded = conclude(lab.run_dir, lab.secrets)
    return sealed


def serve_lab(lab: LabRun, *, port: int | None = None, open_browser: bool = True,
              say: Callable[[str], None] = print) -> int:
    """Run JupyterLab on the run folder until Ctrl-C (or SIGTERM), then seal what was saved. Returns 0."""
    previous = signal.getsignal(signal.SIGTERM)

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    server = None
    try:
        server = start_lab(lab.run_dir, port=port)
        say(f"JupyterLab for run {lab.parameters['run_id']} ({lab.run_dir}):")
        say(f"  {server.url}")
        say(f"Stop it with Ctrl-C here (or: kill {os.getpid()}); the notebooks saved in it are then masked and "
            "sealed into the journal, and run.json, report.html and postmortem.md written for the run.")
        if open_browser:
            import webbrowser

            webbrowser.open(server.url)
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server is not None:
            stop_lab(server.process)
    sealed = seal_lab(lab)
    end = lab.concluded
    if end is None:
        say(f"Nothing was run in {lab.run_dir}: no journal, nothing to seal.")
        return 0
    ran = [p["name"] for p in end.summary["phases"]]
    say(f"Run {end.summary['status']} (exit code {end.summary['exit_code']}); phases run: {', '.join(ran) or 'none'}"
        + "; not run: " + (", ".join(p for p in PHASES if p not in ran) or "none") + ".")
    say(f"Sealed {len(sealed)} file(s) into the journal, then run.json, postmortem.md and "
        + (f"{end.report}" if end.report else f"no report ({end.report_error}; try: rollback report {lab.run_dir})"))
    head = end.summary["audit"]
    say(f"Audit chain head {head['head']} ({head['events']} events); check with: "
        f"rollback verify-audit {lab.run_dir} --head {head['head']}")
    return 0
