"""Which tool is running the runbook, and how its user approves the plan or sets a parameter in it.

The same library runs under four front ends, and advice that names another tool's option is
advice nobody can follow (``-p approve`` means nothing in JupyterLab, ``--yes`` nothing to
nbconvert). ``current()`` tells them apart:

- ``cli``: ``rollback run`` / ``resume`` / ``drill``; the runner sets ``$ROLLBACK_FRONTEND`` for
  its kernels (``KERNEL_ENV``).
- ``papermill``: papermill by hand; its injected cell starts with papermill's own ``# Parameters``
  comment, and that cell is in the kernel's input history.
- ``lab``: ``rollback lab``, which sets ``$ROLLBACK_FRONTEND`` for JupyterLab's kernels.
- ``jupyter``: any other Jupyter front end that can answer ``input()`` (a person at a notebook).
- ``nbconvert``: a kernel nobody can answer (``jupyter nbconvert --execute``, nbclient): the
  parameters are in the notebook's parameters cell, so that is what to edit.
"""

from __future__ import annotations

import os

KERNEL_ENV = "ROLLBACK_FRONTEND"
CLI, PAPERMILL, LAB, JUPYTER, NBCONVERT = "cli", "papermill", "lab", "jupyter", "nbconvert"
PAPERMILL_COMMENT = "# Parameters\n"  # papermill's default comment heading the cell it injects


def current() -> str:
    """The front end running this process (or this kernel): one of the names above."""
    declared = os.environ.get(KERNEL_ENV, "")
    if declared == CLI:
        return CLI
    shell = _ipython()
    if shell is None:
        return declared or CLI  # plain Python: a script calling the library, as the runner does
    history = shell.user_ns.get("In") or []
    if any(isinstance(source, str) and source.startswith(PAPERMILL_COMMENT) for source in history):
        return PAPERMILL
    if declared == LAB:
        return LAB
    kernel = getattr(shell, "kernel", None)
    return JUPYTER if getattr(kernel, "_allow_stdin", False) else NBCONVERT


def _ipython():
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with ipykernel, a dependency
        return None
    return get_ipython()


def _cell(name: str, value: str) -> str:
    return f'{name} = "{value}"'


def approve_advice(migration_id: str, frontend: str | None = None) -> str:
    """How the user of ``frontend`` approves the plan: the one way that works in the tool they are in."""
    frontend = frontend or current()
    if frontend == CLI:
        return (f"run the same `rollback` command again and type {migration_id} at the prompt, or add --yes "
                "once --dry-run has shown what will happen")
    if frontend == PAPERMILL:
        return (f"run 02_execute again with `-p approve {migration_id}` (and the same run_id) once "
                "`-p dry_run True` has shown what will happen")
    if frontend == NBCONVERT:
        return (f"edit the notebook's parameters cell (tagged injected-parameters, or parameters) to "
                f"{_cell('approve', migration_id)}, save it and run it again")
    where = "in this JupyterLab " if frontend == LAB else ""
    return (f"set {_cell('approve', migration_id)} in the parameters cell at the top of 02_execute {where}and run "
            f"it again from the top, or run it from the top and type {migration_id} when the gate cell asks")


def parameter_advice(name: str, placeholder: str, frontend: str | None = None) -> str:
    """How the user of ``frontend`` sets parameter ``name`` (``backup``, ...) of this run, in that tool."""
    frontend = frontend or current()
    option = "--" + name.replace("_", "-")
    if frontend == CLI:
        return f"run again with {option} {placeholder}"
    if frontend == PAPERMILL:
        return f"run the notebook again with `-p {name} {placeholder}` (and the same run_id)"
    # A run folder's notebooks are never overwritten: a new value means the cell, or a new run.
    new_run = f"or start a new run with `rollback lab {option} {placeholder}` (same --env and -m)"
    if frontend == NBCONVERT:
        return f"edit the notebook's parameters cell to {_cell(name, placeholder)}, save it and run it again; {new_run}"
    return (f"set {_cell(name, placeholder)} in the parameters cell at the top of this notebook and run its cells "
            f"again from the top" + (f"; {new_run}" if frontend == LAB else ""))
