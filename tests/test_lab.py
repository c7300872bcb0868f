"""`rollback lab`: the run folder with the five notebooks parameterized, and JupyterLab serving it on loopback."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import nbformat
import pytest
from nbclient import NotebookClient
from typer.testing import CliRunner

from rollbacklib.audit import artifacts, verify_audit
from rollbacklib.cli import app
from rollbacklib.journal import read_events
from rollbacklib.lab import free_port, prepare_lab, seal_lab
from rollbacklib.steps import PHASES

from conftest import CONFIG, DRILL_URL_ENV, MIGRATION


def test_lab_prepares_the_notebooks_and_what_the_operator_runs_lands_in_the_runs_journal(incident):
    lab = prepare_lab(migration_id=MIGRATION, environment="drill", config_path=str(incident.config),
                      reports_dir=str(incident.reports), run_id="lab-1", backup=str(incident.backup))
    assert lab.run_dir == incident.reports.resolve() / MIGRATION / "drill" / "lab-1"
    assert lab.written == lab.notebooks == [lab.run_dir / f"{phase}.ipynb" for phase in PHASES]
    for path in lab.notebooks:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        at = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
        injected = code[at + 1]
        assert "injected-parameters" in injected.metadata["tags"], path
        for line in (f'migration_id = "{MIGRATION}"', 'environment = "drill"', 'run_id = "lab-1"',
                     f'config_path = "{incident.config.resolve()}"', f'reports_dir = "{incident.reports.resolve()}"',
                     f'backup = "{incident.backup}"', 'approve = ""', "dry_run = False"):
            assert line in injected.source, (path.name, line)
        assert dict(nb.metadata.papermill.parameters) == lab.parameters
        assert not any(c.outputs for c in code)  # prepared, not executed
        assert incident.url not in path.read_text()  # names, IDs and paths: never the URL

    # The operator runs 01_prepare cell by cell in that folder; JupyterLab saves it there.
    nb = nbformat.read(lab.notebooks[0], as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(lab.run_dir)}}).execute()
    nb.cells.append(nbformat.v4.new_markdown_cell(f"pasted by the operator: {incident.url}"))
    nbformat.write(nb, lab.notebooks[0])
    checkpoint = lab.run_dir / ".ipynb_checkpoints" / "01_prepare-checkpoint.ipynb"
    checkpoint.parent.mkdir()
    nbformat.write(nb, checkpoint)  # as JupyterLab keeps one
    events = read_events(lab.run_dir)
    assert (events[0]["phase"], events[0]["step"], events[0]["status"]) == ("01_prepare", "phase", "started")
    assert ("01_prepare", "phase", "ok") in [(e["phase"], e["step"], e["status"]) for e in events]
    assert {"verify-backup", "capture", "plan"} <= {e["step"] for e in events}
    assert (lab.run_dir / "plan.json").exists() and (lab.run_dir / "state.json").exists()

    sealed = seal_lab(lab)  # what `rollback lab` does once JupyterLab stops
    assert {e["evidence"]["path"] for e in sealed} >= {f"{phase}.ipynb" for phase in PHASES} | {"plan.json"}
    assert artifacts(lab.run_dir)["01_prepare.ipynb"]["evidence"]["kind"] == "notebook"
    assert verify_audit(lab.run_dir).intact
    for path in (lab.notebooks[0], checkpoint):  # masked before sealing, the checkpoint too
        assert incident.url not in path.read_text() and "pasted by the operator: ***" in path.read_text()

    again = prepare_lab(migration_id=MIGRATION, environment="drill", config_path=str(incident.config),
                        reports_dir=str(incident.reports), run_id="lab-1", backup=str(incident.backup))
    assert again.written == [] and again.kept == lab.notebooks  # evidence is never overwritten


def test_lab_refuses_a_credential_as_a_parameter(tmp_path, monkeypatch):
    monkeypatch.setenv(DRILL_URL_ENV, "postgresql://nobody@/nowhere")
    result = CliRunner().invoke(app, ["lab", "--env", "drill", "-m", MIGRATION, "--config", str(CONFIG),
                                      "--reports-dir", str(tmp_path), "--backup", "postgres://u:Lab-Pw-31@db/x",
                                      "--no-browser"])
    assert result.exit_code == 2, result.output
    assert "'backup' looks like a credential" in result.output and "Lab-Pw-31" not in result.output
    assert not list(tmp_path.rglob("*.ipynb"))


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)


def test_rollback_lab_serves_jupyterlab_on_loopback_with_a_token_until_stopped(tmp_path):
    port = free_port()
    env = {**os.environ, DRILL_URL_ENV: "postgresql://nobody@/nowhere", "PYTHONUNBUFFERED": "1",
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    command = [str(Path(sys.executable).parent / "rollback"), "lab", "--env", "drill", "-m", MIGRATION,
               "--config", str(CONFIG), "--reports-dir", str(tmp_path / "reports"), "--run-id", "lab-srv",
               "--no-browser", "--port", str(port)]
    with open(tmp_path / "jupyter.log", "w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=tmp_path)
    printed: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, printed), daemon=True).start()
    try:
        url, output, deadline = None, [], time.monotonic() + 120
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                line = printed.get(timeout=1)
            except queue.Empty:
                continue
            output.append(line)
            if line.strip().startswith(f"http://127.0.0.1:{port}/"):
                url = line.strip()
        assert url, "".join(output) + (tmp_path / "jupyter.log").read_text()[-3000:]
        assert any("Stop it with Ctrl-C" in line for line in output + [printed.get(timeout=5)])
        token = parse_qs(urlsplit(url).query)["token"][0]
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/status", params={"token": token}, timeout=10).status_code == 200
        assert httpx.get(f"{base}/api/status", timeout=10).status_code == 403  # the token is the way in
        listing = httpx.get(f"{base}/api/contents", params={"token": token}, timeout=10).json()
        assert {f"{phase}.ipynb" for phase in PHASES} <= {item["name"] for item in listing["content"]}

        proc.terminate()
        assert proc.wait(60) == 0
        with pytest.raises(httpx.TransportError):  # JupyterLab stopped with it
            httpx.get(f"{base}/api/status", params={"token": token}, timeout=5)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
