"""`rollback lab` driven as a person drives it: a real JupyterLab, its kernels over their websocket.

Each code cell of 01–05 is sent as JupyterLab's front end sends it (an ``execute_request`` with
``allow_stdin``), the gate's ``input()`` is answered on the stdin channel as a person types,
and each notebook is saved with its outputs through the contents API, as JupyterLab saves it.
Then ``rollback lab`` is stopped: its run folder must hold ``run.json``, ``report.html`` and
``postmortem.md``, sealed.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import nbformat
import psycopg
import websocket

from rollbacklib.audit import artifacts, verify_audit
from rollbacklib.journal import read_events
from rollbacklib.lab import free_port
from rollbacklib.steps import PHASES

import browser
from conftest import MIGRATION
from test_lab import wait_for_lab_url


def _message(session: str, msg_type: str, channel: str, content: dict, parent: dict | None = None) -> str:
    header = {"msg_id": uuid.uuid4().hex, "username": "operator", "session": session, "msg_type": msg_type,
              "version": "5.3", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return json.dumps({"header": header, "parent_header": parent or {}, "metadata": {}, "content": content,
                       "channel": channel, "buffers": []})


class Operator:
    """A person at JupyterLab: runs each cell of a notebook in its kernel, answers the prompts, saves."""

    def __init__(self, base: str, token: str, answers: dict[str, str]):
        self.base, self.token, self.answers = base, token, answers
        self.http = httpx.Client(base_url=base, headers={"Authorization": f"token {token}"}, timeout=60)
        self.prompts: list[str] = []

    def run_notebook(self, name: str) -> list[dict]:
        """Every code cell in order, stopping at the first error; the notebook saved with its outputs. Its errors."""
        model = self.http.get(f"/api/contents/{name}", params={"content": 1}).json()
        nb = nbformat.from_dict(model["content"])
        session = self.http.post("/api/sessions", json={"path": name, "type": "notebook", "name": name,
                                                        "kernel": {"name": "python3"}}).json()
        ws_url = self.base.replace("http", "ws", 1) + f"/api/kernels/{session['kernel']['id']}/channels"
        ws = websocket.create_connection(f"{ws_url}?session_id={uuid.uuid4().hex}",
                                         header=[f"Authorization: token {self.token}"], timeout=300)
        errors = []
        try:
            for cell in nb.cells:
                if cell.cell_type != "code":
                    continue
                cell.outputs, cell.execution_count = self._execute(ws, cell.source)
                errors += [o for o in cell.outputs if o.output_type == "error"]
                if errors:
                    break
        finally:
            ws.close()
            self.http.put(f"/api/contents/{name}", json={"type": "notebook", "format": "json", "content": nb})
            self.http.delete(f"/api/sessions/{session['id']}")
        return errors

    def _execute(self, ws, code: str) -> tuple[list, int | None]:
        session = uuid.uuid4().hex
        request = json.loads(_message(session, "execute_request", "shell", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": True,
            "stop_on_error": True}))
        ws.send(json.dumps(request))
        outputs, count, replied, idle = [], None, False, False
        while not (replied and idle):
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != request["header"]["msg_id"]:
                continue
            kind = msg["header"]["msg_type"]
            if msg["channel"] == "stdin" and kind == "input_request":
                prompt = msg["content"]["prompt"]
                self.prompts.append(prompt)
                answer = next(value for key, value in self.answers.items() if key in prompt)
                ws.send(_message(session, "input_reply", "stdin", {"value": answer}, msg["header"]))
            elif kind == "execute_reply":
                replied, count = True, msg["content"].get("execution_count")
            elif kind == "status":
                idle = msg["content"]["execution_state"] == "idle"
            elif kind in ("stream", "display_data", "execute_result", "error"):
                outputs.append(nbformat.v4.output_from_msg(msg))
        return outputs, count


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)


def test_a_person_in_jupyterlab_rolls_back_from_01_to_05_and_stopping_the_lab_writes_the_sealed_report(
        incident, tmp_path):
    workdir = tmp_path / "operator"  # the shell `rollback lab` is started in; the packaged config's backups
    shelf = workdir / "backups" / "drill"
    shelf.mkdir(parents=True)
    for path in (incident.backup, Path(f"{incident.backup}.manifest.json")):
        path.rename(shelf / path.name)
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    env.pop("ROLLBACK_CONFIG", None)
    command = [str(Path(sys.executable).parent / "rollback"), "lab", "--env", "drill", "-m", MIGRATION,
               "--run-id", "in-lab", "--no-browser", "--port", str(port)]  # no --config, no --backup
    with open(tmp_path / "jupyter.log", "w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=workdir)
    printed: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, printed), daemon=True).start()
    output: list[str] = []
    try:
        url = wait_for_lab_url(proc, printed, port, output, tmp_path / "jupyter.log")
        person = Operator(f"http://127.0.0.1:{port}", parse_qs(urlsplit(url).query)["token"][0],
                          answers={"Type the migration ID": MIGRATION, "Checklist (": "Lab Operator"})
        for phase in PHASES:
            errors = person.run_notebook(f"{phase}.ipynb")
            assert not errors, (phase, [f"{e.ename}: {e.evalue}" for e in errors])
        gate = [p for p in person.prompts if "Checklist (" not in p]
        assert len(gate) == 1 and "Swap the restored copy in" in gate[0]  # the gate asked
        assert len(person.prompts) > 1  # and 01's checklists asked for each item the evidence does not prove

        proc.send_signal(signal.SIGTERM)  # as `kill <pid>` from the printed line
        assert proc.wait(180) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while not printed.empty():
        output.append(printed.get())
    text = "".join(output)

    run_dir = workdir / "reports" / MIGRATION / "drill" / "in-lab"
    with psycopg.connect(incident.url) as conn:  # rolled back, by the catalog
        assert conn.execute("SELECT 1 FROM information_schema.columns WHERE table_name = 'users' "
                            "AND column_name = 'passwordHash'").fetchone()
    typed = [e["evidence"]["acknowledgement"] for e in read_events(run_dir) if "acknowledgement" in e["evidence"]]
    assert len(typed) == len(person.prompts) - 1 and {(a["acknowledged_by"], a["source"]) for a in typed} == {
        ("Lab Operator", "typed")}  # each checklist item typed in JupyterLab, journaled with who and when
    state = json.loads((run_dir / "state.json").read_text())
    assert state["backup"]["path"] == str(shelf / incident.backup.name)  # found where `rollback run` looks
    assert state["approval"]["how"] == "typed at the notebook's prompt"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "succeeded" and [p["name"] for p in run["phases"]] == list(PHASES)
    assert {"report.html", "postmortem.md"} | {f"{phase}.ipynb" for phase in PHASES} <= artifacts(run_dir).keys()
    assert verify_audit(run_dir, head=run["audit"]["head"]).intact
    saved = nbformat.read(run_dir / "05_close.ipynb", as_version=4)
    assert "**Run succeeded**" in json.dumps(saved.cells[-1].outputs)  # the last cell wrote the evidence
    assert "Run succeeded (exit code 0)" in text and "not run: none" in text and str(run_dir / "report.html") in text
    html = (run_dir / "report.html").read_text()
    assert "This phase did not run" not in html and "KeyboardInterrupt" not in text

    if browser.chromium() is None and not os.environ.get("ROLLBACK_REQUIRE_CHROMIUM"):
        return  # the rest is the reader's view: Debian's chromium (.ci/run installs it)
    page = browser.open_page(run_dir / "report.html", tmp_path / "report-artifacts", "lab")
    print(f"\nlab report screenshot: {page.screenshot}\nlab report as PDF: {page.pdf}")
    assert page.console == [] and page.failed_loads == [], page.console
    assert all(url.startswith(("file://", "data:")) for url in page.requests), page.requests
    assert [row[0] for row in page.data["metricRows"]] == [m["metric"] for m in run["metrics"]]
    assert all(phase in page.data["text"] for phase in PHASES) and page.data["failedCells"] == []
