"""The phases' kernels: each started while the phase before it ran, none started by papermill, none left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
import psutil
import pytest
from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from typer.testing import CliRunner

from rollbacklib.cli import app
from rollbacklib.journal import read_events
from rollbacklib.steps import PHASES

from conftest import MIGRATION

runner = CliRunner()
ROLLBACK = str(Path(sys.executable).parent / "rollback")


def _kernels_in(folder: Path) -> list[psutil.Process]:
    """Every ipykernel process, whoever its parent now is, running in a run folder below ``folder``."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if "ipykernel" in " ".join(process.info["cmdline"] or ()) and \
                    str(process.info["cwd"] or "").startswith(str(folder.resolve())) and \
                    process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


def _ts(event: dict) -> datetime:
    return datetime.fromisoformat(event["ts"])


def test_each_phase_runs_in_a_kernel_started_while_the_phase_before_it_ran(incident, monkeypatch):
    launched: list[int] = []
    launch = LocalProvisioner.launch_kernel

    async def counting(self, cmd, **kwargs):  # jupyter_client's, not ours: every kernel process of the run
        info = await launch(self, cmd, **kwargs)
        launched.append(self.pid)
        return info

    monkeypatch.setattr(LocalProvisioner, "launch_kernel", counting)
    result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--yes"))
    assert result.exit_code == 0, result.output
    events = read_events(next(incident.reports.rglob("journal.jsonl")))
    kernels = {e["phase"]: e for e in events if e["step"] == "kernel"}
    started = {e["phase"]: e for e in events if e["step"] == "phase" and e["status"] == "started"}
    ended = {e["phase"]: e for e in events if e["step"] == "phase" and e["status"] == "ok"}
    assert list(kernels) == list(PHASES)
    for before, phase in zip(PHASES, PHASES[1:]):
        kernel = kernels[phase]["evidence"]
        assert kernels[phase]["evidence"]["ahead"] is True
        # The process that ran the phase is the kernel started ahead of it, and it started before the phase before ended.
        assert started[phase]["evidence"]["pid"] == kernel["pid"]
        assert datetime.fromisoformat(kernel["started_at"]) < _ts(ended[before]), phase
    assert started[PHASES[0]]["evidence"]["pid"] == kernels[PHASES[0]]["evidence"]["pid"]
    # papermill started no kernel of its own: the run launched exactly the five the runner started ahead.
    assert sorted(launched) == sorted(k["evidence"]["pid"] for k in kernels.values())
    # The warm-up left nothing in the notebooks: the first cell papermill ran is execution 1.
    executed = nbformat.read(next(incident.reports.rglob("03_validate.ipynb")), as_version=4)
    counts = [c.execution_count for c in executed.cells if c.cell_type == "code" and c.execution_count]
    assert counts == list(range(1, len(counts) + 1))
    assert not _kernels_in(incident.reports)
    run = json.loads(next(incident.reports.rglob("run.json")).read_text())
    assert 0 < run["machinery_seconds"] < run["duration_seconds"]


def test_no_kernel_outlives_a_run_that_fails_in_phase_01(incident):
    result = runner.invoke(app, ["run", "--env", "drill", "-m", "20251203000000_never_applied", "--config",
                                 str(incident.config), "--reports-dir", str(incident.reports), "--yes"])
    assert result.exit_code == 3, result.output
    events = read_events(next(incident.reports.rglob("journal.jsonl")))
    assert [e["phase"] for e in events if e["step"] == "kernel"] == ["01_prepare"]
    assert not _kernels_in(incident.reports)  # the kernels started ahead for 02 and 03 were shut down too
    assert not [c for c in psutil.Process().children(recursive=True) if "ipykernel" in " ".join(c.cmdline())]


def test_no_kernel_outlives_a_run_interrupted_with_sigint(incident, tmp_path):
    process = subprocess.Popen([ROLLBACK, *incident.run_args("--backup", str(incident.backup), "--yes",
                                                             "--run-id", "interrupted")],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        journal = incident.reports / MIGRATION / "drill" / "interrupted" / "journal.jsonl"
        while time.monotonic() < deadline and not any(
                e["step"] == "drain" and e["status"] == "started" for e in read_events(journal)):
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.05)
        assert len(_kernels_in(incident.reports)) >= 2  # 02's kernel, and 03's (04's) started ahead
        os.kill(process.pid, signal.SIGINT)  # the runner alone, as `kill -INT` does
        process.wait(120)
    finally:
        if process.poll() is None:
            process.kill()
    assert not _kernels_in(incident.reports), process.stdout.read()


@pytest.mark.parametrize("how", ["plain papermill, the default engine", "papermill --engine rollbacklib"])
def test_papermill_alone_still_starts_its_own_kernel(how, tmp_path):
    import papermill as pm

    source = tmp_path / "one.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os\nanswer = os.getpid()")],
                                            metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                     "display_name": "Python 3"}}), source)
    engine = {"engine_name": "rollbacklib"} if "rollbacklib" in how else {}
    pm.execute_notebook(str(source), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False, **engine)
    assert nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].execution_count == 1


def test_machinery_is_the_wall_time_of_each_attempt_outside_its_steps():
    from rollbacklib.metrics import machinery_seconds

    def event(second: float, phase: str, step: str, status: str) -> dict:
        return {"ts": f"2026-12-02T03:00:{second:06.3f}+00:00", "phase": phase, "step": step, "status": status}

    events = [
        event(0, "run", "attempt", "info"),
        event(1, "01_prepare", "phase", "started"),
        event(2, "01_prepare", "migration", "started"), event(3.5, "01_prepare", "migration", "ok"),
        event(4, "01_prepare", "plan", "started"), event(4.25, "01_prepare", "plan", "failed"),
        event(5, "01_prepare", "artifact", "info"),
        # a second attempt 20 s later: the time between attempts is no one's
        event(25, "run", "attempt", "info"),
        event(26, "01_prepare", "plan", "started"), event(27, "01_prepare", "plan", "skipped"),
        event(28, "02_execute", "restore", "started"),  # killed: inside its step until the attempt's last event
        event(30, "02_execute", "head", "info"),
    ]
    assert machinery_seconds(events) == (5 - 1.5 - 0.25) + (5 - 1 - 2)
    assert machinery_seconds([]) is None


def test_a_kernel_that_died_while_it_waited_is_not_used(tmp_path):
    import papermill as pm

    from rollbacklib.engine import engine_name
    from rollbacklib.kernels import KernelPool

    source = tmp_path / "one.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os\nprint(os.getpid())")],
                                            metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                     "display_name": "Python 3"}}), source)
    with KernelPool(tmp_path, dict(os.environ)) as pool:
        pool.start("01_prepare", ["json"])
        dead = pool.waiting["01_prepare"].pid
        os.kill(dead, signal.SIGKILL)
        kernel = pool.take("01_prepare")
        assert f"(pid {dead}) had exited" in kernel.failure
        pm.execute_notebook(str(source), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                            engine_name=engine_name(), kernel=kernel)
    printed = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].outputs[0]["text"]
    assert int(printed) != dead  # a fresh kernel ran it
    assert not _kernels_in(tmp_path)
