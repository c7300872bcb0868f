"""The package as a user gets it: a wheel, installed in a fresh venv outside the checkout, runs the drill.

Run alone with ``pytest -m wheel``. The wheel is built with pip's build isolation (a current
setuptools from the index) from a copy of the checkout, so nothing is built or cached in the
checkout. Installing every dependency from the index would take minutes: the wheel goes in with
``--no-deps`` and the new venv sees this test environment's dependencies through a ``.pth`` file.
A ``.pth`` line only adds a folder to ``sys.path``; the ``.pth`` files inside it (this
environment's editable rollbacklib) are not run, so the checkout stays out of the new venv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import MIGRATION, REPO

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(300)]

PACKAGE = REPO / "rollbacklib"
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    "reports", "backups", ".ipynb_checkpoints")


def _run(cmd: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source") / "rollbacklib"
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_SOURCE)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--quiet", "-w", str(dist)], timeout=180)
    (built,) = dist.glob("rollbacklib-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv outside the checkout with only the wheel installed; dependencies seen through a .pth."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], timeout=60)
    python = root / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        timeout=30).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "_test_environment.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
         timeout=120)
    return root


@pytest.fixture
def user_env(venv) -> dict:
    """The environment of a user of that venv: its bin first on PATH, nothing of this test run's settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ROLLBACK_", "PYTHON", "JUPYTER", "VIRTUAL_ENV", "PG"))}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(sys.prefix)]
    env.update(PATH=os.pathsep.join([str(venv / "bin"), *path]), VIRTUAL_ENV=str(venv))
    return env


def test_the_wheel_ships_the_notebooks_the_default_config_and_the_scenarios(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    notebooks = {f"rollbacklib/notebooks/{phase}.ipynb"
                 for phase in ("01_prepare", "02_execute", "03_validate", "04_restore_service", "05_close")}
    assert notebooks <= names
    assert "rollbacklib/runbook.toml" in names
    scenario_files = {p.relative_to(REPO).as_posix() for p in (PACKAGE / "scenarios").rglob("*") if p.is_file()}
    assert "rollbacklib/scenarios/auth-platform/scenario.toml" in scenario_files
    assert scenario_files <= names
    assert any(name.endswith(".dist-info/entry_points.txt") for name in names)


def test_the_installed_wheel_runs_the_drill_outside_the_checkout(venv, user_env, tmp_path):
    python, rollback = venv / "bin" / "python", venv / "bin" / "rollback"
    workdir = tmp_path / "oncall"
    workdir.mkdir()

    # The venv imports the wheel's rollbacklib, never the checkout's, and its kernels are its own python.
    where = _run([str(python), "-c", "import rollbacklib, rollbacklib.resources as r; print(rollbacklib.__file__); "
                  "print(r.notebooks_dir()); print(r.default_config())"], timeout=60, cwd=workdir, env=user_env)
    for line in where.stdout.split():
        assert Path(line).is_relative_to(venv) and not Path(line).is_relative_to(REPO), where.stdout
    kernel = _run([str(python), "-c", "from jupyter_client.kernelspec import KernelSpecManager as K; "
                   "print(K().get_kernel_spec('python3').argv[0])"], timeout=60, cwd=workdir, env=user_env)
    assert kernel.stdout.strip() in ("python", "python3", str(python)), kernel.stdout

    helped = _run([str(rollback), "--help"], timeout=60, cwd=workdir, env=user_env)
    for command in ("run", "drill", "backup", "verify-backup"):
        assert command in helped.stdout

    installed = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    shipped_before = sorted(p for p in (installed / "rollbacklib").rglob("*") if "__pycache__" not in p.parts)
    drill = _run([str(rollback), "drill", "--users", "100"], timeout=240, cwd=workdir, env=user_env)

    assert "Rolled back: yes" in drill.stdout, drill.stdout
    run_dir = Path(re.search(r"Report folder: (\S+)", drill.stdout).group(1))
    assert run_dir.is_relative_to(workdir) and run_dir.parent == workdir / "reports" / MIGRATION / "drill"
    assert (run_dir / "run.json").exists() and (run_dir / "05_close.ipynb").exists()
    assert not (REPO / "reports" / MIGRATION / "drill" / run_dir.name).exists()
    assert sorted(p for p in (installed / "rollbacklib").rglob("*") if "__pycache__" not in p.parts) == shipped_before
    assert not list(venv.rglob("run.json"))

    # The staged incident, its detached app session (the venv's python) and --stop work from the wheel too.
    staged = _run([str(rollback), "drill", "--stage-only", "--users", "50"], timeout=120, cwd=workdir, env=user_env)
    folder = re.search(r"rollback drill --stop (\S+)", staged.stdout).group(1)
    stopped = _run([str(rollback), "drill", "--stop", folder], timeout=120, cwd=workdir, env=user_env)
    assert "Stopped the server; stopped the app session" in stopped.stdout, stopped.stdout
