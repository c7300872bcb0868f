"""`rollback lab`: the run folder with the five notebooks parameterized, and JupyterLab serving it on loopback."""

from __future__ import annotations

import json
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
from rollbacklib.lab import free_port, kernel_environment, prepare_lab, seal_lab
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

    # 02_execute in a kernel nobody can answer: the gate refuses, naming the way to approve in this tool.
    with pytest.MonkeyPatch.context() as env:
        for name, value in kernel_environment().items():  # what JupyterLab hands its kernels
            env.setenv(name, value)
        error = _run_saved(lab.notebooks[1], lab.run_dir)
    assert error is not None and "RefusedError" in str(error)
    assert f'set approve = "{MIGRATION}" in the parameters cell at the top of 02_execute in this JupyterLab' \
        in str(error) and "--yes" not in str(error) and "-p approve" not in str(error)

    sealed = seal_lab(lab)  # what `rollback lab` does once JupyterLab stops
    assert {e["evidence"]["path"] for e in sealed} >= {f"{phase}.ipynb" for phase in PHASES} | {"plan.json"}
    # ... and the run's evidence, though only two phases ran: which ran, which did not, none "succeeded" unrun.
    run = json.loads((lab.run_dir / "run.json").read_text())
    assert (run["status"], run["exit_code"]) == ("refused", 4)  # refused at the gate, nothing changed
    assert [(p["name"], p["status"]) for p in run["phases"]] == [("01_prepare", "succeeded"), ("02_execute", "refused")]
    assert lab.concluded.report == lab.run_dir / "report.html"
    html = (lab.run_dir / "report.html").read_text()
    for phase in PHASES[2:]:
        section = html[html.index(f"id='phase-{phase}'"):]
        section = section[: section.index("</section>")]
        assert "not run" in section and "This phase did not run" in section and "succeeded" not in section, phase
    assert {"report.html", "postmortem.md"} <= artifacts(lab.run_dir).keys()
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
        output = []
        url = wait_for_lab_url(proc, printed, port, output, tmp_path / "jupyter.log")
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


# --- a whole run done by hand in the lab's run folder, from 01 to the report ------------------

def _run_saved(path: Path, cwd: Path) -> Exception | None:
    """Run every cell of a notebook in a real kernel in ``cwd`` and save it, as the operator in JupyterLab would."""
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    error = None
    try:
        NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(cwd)}}).execute()
    except CellExecutionError as err:
        error = err
    nbformat.write(nb, path)
    return error


def _set_parameter(path: Path, line: str, new: str) -> None:
    """Edit the injected parameters cell, as the refusal says to."""
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert line in cell.source
    cell.source = cell.source.replace(line, new)
    nbformat.write(nb, path)


def _password_hash_exists(url: str) -> bool:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SELECT 1 FROM information_schema.columns WHERE table_name = 'users' "
                            "AND column_name = 'passwordHash'").fetchone() is not None


def test_a_lab_run_done_cell_by_cell_finds_the_backup_where_rollback_run_would_and_ends_with_its_report(
        incident, tmp_path, monkeypatch):
    # The operator's shell: the packaged config (backup_dir = backups/drill, under the working directory).
    workdir = tmp_path / "operator"
    shelf = workdir / "backups" / "drill"
    shelf.mkdir(parents=True)
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("ROLLBACK_CONFIG", raising=False)
    lab = prepare_lab(migration_id=MIGRATION, environment="drill", run_id="by-hand")  # no --backup
    assert lab.run_dir == workdir / "reports" / MIGRATION / "drill" / "by-hand"
    for name, value in kernel_environment().items():  # what JupyterLab hands its kernels
        monkeypatch.setenv(name, value)
    nb = {phase: lab.run_dir / f"{phase}.ipynb" for phase in PHASES}

    # No backup on the shelf yet: the message says where it looked (not the run folder) and what to set, here.
    error = _run_saved(nb["01_prepare"], lab.run_dir)
    assert error is not None and "failed verification" in str(error)
    assert f"{shelf}/(none)" in str(error) and str(lab.run_dir / "backups") not in str(error)
    assert 'backup = "/path/to/backup.dump" in the parameters cell' in str(error)
    assert "rollback lab --backup /path/to/backup.dump" in str(error) and "--backup PATH" not in str(error)

    for path in (incident.backup, Path(f"{incident.backup}.manifest.json")):  # the backup, where `rollback run` looks
        path.rename(shelf / path.name)
    assert _run_saved(nb["01_prepare"], lab.run_dir) is None
    assert json.loads((lab.run_dir / "state.json").read_text())["backup"]["path"] == str(shelf / incident.backup.name)

    _set_parameter(nb["02_execute"], 'approve = ""', f'approve = "{MIGRATION}"')  # the gate, passed as advised
    for phase in ("02_execute", "03_validate", "04_restore_service"):
        assert _run_saved(nb[phase], lab.run_dir) is None, phase
    # 05 with plain nbconvert, outside the lab, in the run folder.
    env = {k: v for k, v in os.environ.items() if k != "ROLLBACK_FRONTEND"}
    done = subprocess.run([sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute", "--inplace",
                           str(nb["05_close"])], cwd=lab.run_dir, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _password_hash_exists(incident.url)  # rolled back, by the catalog

    # The last cell of 05 wrote the run's evidence, sealed, whatever ran.
    run = json.loads((lab.run_dir / "run.json").read_text())
    assert run["status"] == "succeeded" and [p["name"] for p in run["phases"]] == list(PHASES)
    assert all(p["status"] == "succeeded" for p in run["phases"])
    sealed = artifacts(lab.run_dir)
    assert {"report.html", "postmortem.md"} <= sealed.keys()
    assert verify_audit(lab.run_dir).intact
    last = nbformat.read(nb["05_close"], as_version=4).cells[-1]
    shown = "".join(o.get("data", {}).get("text/markdown", "") for o in last.outputs)
    assert "**Run succeeded**" in shown and "report.html" in shown and "not run" not in shown

    # JupyterLab stops: the saved notebooks are sealed and the evidence written again from them.
    assert seal_lab(lab)
    assert lab.concluded.summary["status"] == "succeeded" and lab.concluded.report == lab.run_dir / "report.html"
    html = (lab.run_dir / "report.html").read_text()
    assert "This phase did not run" not in html and "05_close" in html
    result = CliRunner().invoke(app, ["verify-audit", str(lab.run_dir)])
    assert result.exit_code == 0, result.output


def wait_for_lab_url(proc, printed: "queue.Queue[str]", port: int, output: list[str], log: Path) -> str:
    """The URL `rollback lab` prints (token included), read from its output lines as they come."""
    url, deadline = None, time.monotonic() + 120
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            line = printed.get(timeout=1)
        except queue.Empty:
            continue
        output.append(line)
        if line.strip().startswith(f"http://127.0.0.1:{port}/"):
            url = line.strip()
    assert url, "".join(output) + log.read_text()[-3000:]
    return url
