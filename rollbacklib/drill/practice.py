"""How to practise on a staged incident: commands that work as printed, pasted into a new shell.

Every executable is named by its absolute path in this install (a new shell has no venv
activated), every path is absolute (the shell may start anywhere), and the three ways are
offered easiest first: ``rollback lab``, the CLI, then the five phase notebooks with plain
papermill, each writing its executed notebook into the run folder, with the approval on 02.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rollbacklib.resources import default_config, notebooks_dir
from rollbacklib.run import default_reports_dir, run_folder
from rollbacklib.steps import PHASES, Phase

if TYPE_CHECKING:
    from rollbacklib.drill import StagedDrill

LAB_RUN, PAPERMILL_RUN = "practice-lab", "practice-papermill"


def executable(name: str) -> str:
    """``name`` as installed beside this Python (the venv's bin folder), else as found on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name) or name


def _line(argv: list[str]) -> str:
    return "  " + shlex.join(argv)


def instructions(staged: "StagedDrill", reports_dir: str | os.PathLike | None = None) -> str:
    """What a person needs to rehearse the rollback on ``staged``: in JupyterLab, the CLI, or papermill."""
    from rollbacklib.drill.app_session import APP_NAME, LOG_NAME
    from rollbacklib.postgres.client import client_tools

    rollback, papermill = executable("rollback"), executable("papermill")
    reports = Path(reports_dir or default_reports_dir()).resolve()
    custom_config = staged.config.resolve() != default_config().resolve()
    options = ["--reports-dir", str(reports)] + (["--config", str(staged.config)] if custom_config else [])
    which = ["--env", staged.environment, "-m", staged.migration, "--backup", str(staged.backup)]
    run = [rollback, "run", *which, *options]
    lab = [rollback, "lab", *which, "--run-id", LAB_RUN, *options]
    run_dir = run_folder(reports, staged.migration, staged.environment, PAPERMILL_RUN)
    parameters = [("migration_id", staged.migration), ("environment", staged.environment), ("run_id", PAPERMILL_RUN),
                  ("reports_dir", str(reports)), ("backup", str(staged.backup))]
    if custom_config:
        parameters.append(("config_path", str(staged.config)))
    notebooks = []
    for phase in PHASES:
        argv = [papermill, str(notebooks_dir() / f"{phase}.ipynb"), str(run_dir / f"{phase}.ipynb")]
        for name, value in parameters + ([("approve", staged.migration)] if phase == Phase.EXECUTE else []):
            argv += ["-p", name, value]
        notebooks.append(_line(argv))
    psql = client_tools("embedded").path("psql")
    return "\n".join([
        f"Incident staged in {staged.folder}: the server is running and nothing of the runbook has run.",
        f"  {staged.migration} is applied, rows were written after it, and an app session "
        f"({APP_NAME}, pid {staged.app_pid}, log {staged.folder / LOG_NAME}) is connected.",
        f"  Backup taken before the migration: {staged.backup}",
        "Every command below works as printed in a new shell: the executables are this install's, by absolute "
        f"path (or activate it first: source {shlex.quote(str(Path(sys.executable).parent / 'activate'))}).",
        "",
        "1. Point the drill environment at the server, in the shell you practise in (no password: a local socket):",
        f"  export {staged.database_url_env}={shlex.quote(staged.url)}",
        "",
        "2. Roll it back, one of three ways (each rolls the incident back: stage a new one to try another).",
        "",
        "A. In JupyterLab, the easiest: the five notebooks of a new run, parameterized, in its run folder.",
        "   Run each notebook's cells in order, 01 to 05; the gate cell in 02_execute asks for the migration ID.",
        "   The last cell of 05_close writes report.html, run.json and postmortem.md; Ctrl-C in that shell stops",
        "   JupyterLab and seals the notebooks as saved.",
        _line(lab),
        "",
        "B. With the CLI: look first (nothing changes), then roll back (phase 02 asks for the migration ID):",
        _line([*run, "--dry-run"]),
        _line(run),
        "",
        f"C. Headless with papermill, one notebook per phase, each written into the run folder {run_dir}",
        "   (the same run_id ties them; 02 carries the approval; 05 writes report.html, run.json, postmortem.md):",
        _line(["mkdir", "-p", str(run_dir)]),
        *notebooks,
        _line([rollback, "verify-audit", str(run_dir)]),
        "",
        f"3. Look around: {shlex.quote(psql)} \"${staged.database_url_env}\"",
        "4. Afterwards, stop the server and the app session and remove the folder: "
        + shlex.join([rollback, "drill", "--stop", str(staged.folder)]),
    ])
