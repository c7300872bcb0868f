"""The terminal at 3 a.m.: the gate asks only once the plan is shown, and a kernel's shutdown makes no noise."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pexpect
from jupyter_client.manager import AsyncKernelManager

from rollbacklib.journal import read_events
from rollbacklib.kernels import QuietShutdownKernelManager
from rollbacklib.steps import read_plan

from conftest import MIGRATION, server_snapshot

ROLLBACK = str(Path(sys.executable).parent / "rollback")


def test_input_typed_ahead_of_the_gate_is_not_taken_as_the_approval(incident, tmp_path):
    before = server_snapshot(incident)
    env = {**os.environ, "TERM": "dumb", "COLUMNS": "250", "PYTHONUNBUFFERED": "1"}
    child = pexpect.spawn(ROLLBACK, incident.run_args("--backup", str(incident.backup), "--run-id", "typed-ahead"),
                          env=env, cwd=str(tmp_path), encoding="utf-8", timeout=240, dimensions=(50, 250))
    try:
        child.expect("01_prepare +started")
        child.sendline(MIGRATION)  # typed while phase 01 runs, before any plan or question
        child.expect(r"It changes: ([^\r\n]+)")
        changes = child.match.group(1)
        child.expect(r"Type the migration ID to approve plan ([0-9a-f]{12})")
        shown = child.match.group(1)
        # What was typed ahead was dropped: the runner still waits for an answer.
        assert child.expect([pexpect.TIMEOUT, "02_execute +started"], timeout=5) == 0, child.before
        child.sendline("not-the-id")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    output = child.before
    assert child.exitstatus == 4, output

    run_dir = next(incident.reports.rglob("typed-ahead"))
    plan = read_plan(run_dir)
    assert shown == plan.digest[:12]
    db = incident.database
    assert f"{db} blocked to new connections" in changes and f"the sessions still on {db} terminated" in changes
    assert f'"{db}" -> "{db}__pre_rollback_typed-ahead"' in changes
    assert f'"{db}__restored_typed-ahead" -> "{db}"' in changes and "service" in changes
    refused = [e for e in read_events(run_dir) if e["step"] == "gate" and e["status"] == "refused"]
    assert [e["message"] for e in refused] == ["typed 'not-the-id', not the migration ID"]
    assert "--yes" in refused[0]["evidence"]["next_action"]
    assert json.loads((run_dir / "state.json").read_text()).get("approval") is None
    assert not any(e["phase"] == "02_execute" for e in read_events(run_dir) if e["step"] == "phase")
    assert server_snapshot(incident) == before
    assert "KeyboardInterrupt" not in output


def _signals_sent(manager: type[AsyncKernelManager], tmp_path: Path) -> list[int]:
    """Run a one-cell notebook with papermill under ``manager``; the signals it sent the kernel."""
    sent: list[int] = []

    class Recording(manager):
        async def _async_signal_kernel(self, signum: int) -> None:
            sent.append(signum)
            await super()._async_signal_kernel(signum)

        signal_kernel = _async_signal_kernel

    source = tmp_path / "one.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("answer = 42")],
                                            metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                     "display_name": "Python 3"}}), source)
    pm.execute_notebook(str(source), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                        kernel_manager_class=Recording)
    return sent


def test_the_runner_shuts_its_kernels_down_without_an_interrupt(tmp_path):
    # jupyter_client interrupts every kernel it shuts down: what made ipykernel log "KeyboardInterrupt caught".
    assert signal.SIGINT in _signals_sent(AsyncKernelManager, tmp_path)
    assert signal.SIGINT not in _signals_sent(QuietShutdownKernelManager, tmp_path)
