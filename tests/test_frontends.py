"""Which tool runs the kernel, found from inside a real kernel, and the advice that follows from it."""

from __future__ import annotations

import os
import subprocess
import sys

import nbformat
import papermill as pm
import pytest
from nbclient import NotebookClient

from rollbacklib import frontends

PROBE = ("from rollbacklib import frontends\n"
         "print(frontends.current(), frontends.approve_advice('M'), sep='|')")


def _probe(tmp_path):
    path = tmp_path / "probe.ipynb"
    nbformat.write(nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell('approve = ""', metadata={"tags": ["parameters"]}),
               nbformat.v4.new_code_cell(PROBE)],
        metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}}), path)
    return path


def _printed(path) -> tuple[str, str]:
    nb = nbformat.read(path, as_version=4)
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream").strip()
    frontend, advice = text.split("|", 1)
    return frontend, advice


def test_papermill_by_hand_is_told_to_pass_p_approve(tmp_path, monkeypatch):
    monkeypatch.delenv(frontends.KERNEL_ENV, raising=False)
    pm.execute_notebook(str(_probe(tmp_path)), str(tmp_path / "out.ipynb"), parameters={"approve": ""},
                        kernel_name="python3", progress_bar=False)
    frontend, advice = _printed(tmp_path / "out.ipynb")
    assert frontend == "papermill" and "-p approve M" in advice


def test_nbconvert_is_told_to_edit_the_parameters_cell(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != frontends.KERNEL_ENV}
    path = _probe(tmp_path)
    done = subprocess.run([sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute", "--inplace", str(path)],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    frontend, advice = _printed(path)
    assert frontend == "nbconvert" and 'parameters cell' in advice and 'approve = "M"' in advice
    assert "-p approve" not in advice and "--yes" not in advice


@pytest.mark.parametrize("declared, expected, says", [("lab", "lab", "in this JupyterLab"), ("cli", "cli", "--yes")])
def test_the_runners_declare_their_kernels(tmp_path, monkeypatch, declared, expected, says):
    monkeypatch.setenv(frontends.KERNEL_ENV, declared)
    path = _probe(tmp_path)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    nbformat.write(nb, path)
    frontend, advice = _printed(path)
    assert frontend == expected and says in advice


def test_each_front_end_is_told_where_to_set_the_backup():
    assert frontends.parameter_advice("backup", "B", frontends.CLI) == "run again with --backup B"
    assert "`-p backup B`" in frontends.parameter_advice("backup", "B", frontends.PAPERMILL)
    lab = frontends.parameter_advice("backup", "B", frontends.LAB)
    assert 'backup = "B" in the parameters cell' in lab and "rollback lab --backup B" in lab
    assert "rollback lab" not in frontends.parameter_advice("backup", "B", frontends.JUPYTER)
