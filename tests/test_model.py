"""A model-based test of the notebooks: real kernels driven through the cells of 02–04 in any order.

Hypothesis's ``RuleBasedStateMachine`` picks the next action: a cell of a phase notebook run
in that phase's kernel (re-runs and skipped cells included), the gate answered wrong or
right at its ``input()`` prompt, a kernel SIGKILLed between two cells, ``rollback resume``,
or the way back run literally with ``psql -v ON_ERROR_STOP=1``. A pool of application
connections writes rows through the application's URL the whole time. After every action
the catalog is checked, never a flag:

- the live name exists, or the run is between the two renames with the validated copy
  present and closed;
- no database but the original or the validated, unchanged copy ever has the live name;
- no refusal or failure says "nothing was changed" after a change;
- the way back, run literally, brings the original back to serve (checked whenever it runs).

At the end of each example a resume with the approval must bring production back on the
restored data, and no row the pool committed may be lost: each is in the database serving
the live name or in the kept one.

``ROLLBACK_MODEL_EXAMPLES`` (default 25) and ``ROLLBACK_MODEL_SEED`` (default: random,
printed) tune it; ``pytest -m model`` runs it (``.ci/run`` does). Failures it finds are kept
as regular tests in ``tests/test_live_truth.py``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import nbformat
import psycopg
import pytest
from hypothesis import HealthCheck, settings, seed as hypothesis_seed, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from jupyter_client.manager import KernelManager
from typer.testing import CliRunner

from rollbacklib.cli import app
from rollbacklib.config import load_config
from rollbacklib.drill import stage_incident
from rollbacklib.drill.scenario import load_scenario
from rollbacklib.journal import read_events
from rollbacklib.live import Situation
from rollbacklib.pipeline import run_phases
from rollbacklib.postgres.client import client_tools, database_name, with_database
from rollbacklib.resources import notebooks_dir, scenarios_dir
from rollbacklib.steps import Phase
from rollbacklib.way_back import previous_settings, run_view

from conftest import CONFIG, DRILL_URL_ENV, MIGRATION

pytestmark = pytest.mark.model

EXAMPLES = int(os.environ.get("ROLLBACK_MODEL_EXAMPLES", "25"))
SEED = int(os.environ.get("ROLLBACK_MODEL_SEED") or random.SystemRandom().randrange(2**32))
PHASES = (Phase.EXECUTE, Phase.VALIDATE, Phase.RESTORE_SERVICE)
runner = CliRunner()


def _step_cells(phase: str) -> list[str]:
    """The code cells of a phase notebook after its opening cell (the steps, the finish)."""
    nb = nbformat.read(notebooks_dir() / f"{phase}.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]
    return code[1:]


CELLS = {phase: _step_cells(phase) for phase in PHASES}
GATE = next(i for i, source in enumerate(CELLS[Phase.EXECUTE]) if "approve_swap" in source)


class AppPool(threading.Thread):
    """The application: writes a row through its URL every few milliseconds, reconnecting when refused."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.committed, self.stopped = url, [], threading.Event()

    def run(self) -> None:
        n, conn = 0, None
        while not self.stopped.is_set():
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = psycopg.connect(self.url, autocommit=True, connect_timeout=2,
                                           application_name="api-gateway")
                n += 1
                key = f"wf_pool_{n:05d}"
                conn.execute('INSERT INTO workflows (id, name, "userId", "updatedAt") '
                             "SELECT %s, 'pool', id, now() FROM users ORDER BY id LIMIT 1", (key,))
                self.committed.append(key)
            except psycopg.Error:
                conn = None
                time.sleep(0.05)
            time.sleep(0.02)
        if conn is not None and not conn.closed:
            conn.close()


class Kernel:
    """One phase notebook's kernel in the run folder, its parameters and opening cell run once."""

    def __init__(self, phase: str, run_dir: Path, parameters: dict):
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(run_dir), extra_arguments=["--IPKernelApp.log_level=ERROR"])
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        nb = nbformat.read(notebooks_dir() / f"{phase}.ipynb", as_version=4)
        opening = [c.source for c in nb.cells if c.cell_type == "code"][1]
        self.run("\n".join(f"{k} = {v!r}" for k, v in parameters.items()) + f"\n{opening}")

    def run(self, code: str, answer: str | None = None) -> dict:
        outputs = []
        reply = self.kc.execute_interactive(
            code, allow_stdin=True, timeout=180, output_hook=outputs.append,
            stdin_hook=lambda msg: self.kc.input(answer if answer is not None else ""))
        errors = [o["content"] for o in outputs if o["msg_type"] == "error"]
        return {"status": reply["content"]["status"], "errors": errors}

    def kill(self) -> None:
        pid = self.km.provisioner.process.pid if self.km.provisioner else None
        if pid:
            os.kill(pid, signal.SIGKILL)
        self.close()

    def close(self) -> None:
        try:
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=True)
        except Exception:  # noqa: BLE001 - a killed kernel is already gone
            pass


class NotebookModel(RuleBasedStateMachine):
    pg_server = None  # set by the test
    workdir: Path = None

    @initialize()
    def stage(self):
        self.number = getattr(NotebookModel, "_n", 0) + 1
        NotebookModel._n = self.number
        name = f"model_{os.getpid()}_{self.number}"
        with psycopg.connect(self.pg_server.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        self.url = self.pg_server.url(name)
        os.environ[DRILL_URL_ENV] = self.url
        folder = self.workdir / name
        backup = stage_incident(self.url, load_scenario(scenarios_dir() / "auth-platform"), MIGRATION, users=100,
                                backup_dir=folder / "backups", tools=client_tools("embedded"),
                                probes=load_config(CONFIG).all_queries(), say=lambda _line: None)
        self.database, self.admin_url = database_name(self.url), with_database(self.url, "postgres")
        self.reports, self.run_id, self.backup = folder / "reports", "model", str(backup)
        self.run_dir = self.reports.resolve() / MIGRATION / "drill" / self.run_id
        prepared = run_phases(migration_id=MIGRATION, environment="drill", config_path=str(CONFIG),
                              reports_dir=str(self.reports), run_id=self.run_id, backup=self.backup,
                              phases=(Phase.PREPARE,))
        assert prepared.summary["error"] is None and prepared.summary["phases"][0]["status"] == "succeeded"
        self.parameters = dict(migration_id=MIGRATION, environment="drill", config_path=str(CONFIG),
                               run_id=self.run_id, reports_dir=str(self.reports), dry_run=False, approve="",
                               backup=self.backup)
        self.kernels: dict[str, Kernel] = {}
        self.pool = AppPool(self.url)
        self.pool.start()
        self.trace: list[str] = []

    def teardown(self):
        if not hasattr(self, "pool"):
            return
        try:
            for kernel in self.kernels.values():
                kernel.close()
            self.kernels = {}
            result = runner.invoke(app, ["resume", str(self.run_dir), "--config", str(CONFIG), "--yes"])
            if result.exit_code != 0:  # a second resume may finish what the first found half done
                result = runner.invoke(app, ["resume", str(self.run_dir), "--config", str(CONFIG), "--yes"])
            assert result.exit_code == 0, "\n".join(self.trace) + "\n" + result.output
            self._check_restored_serves()
        finally:
            self.pool.stopped.set()
            self.pool.join(timeout=10)
        self._check_no_row_lost()

    # --- actions ---
    def _kernel(self, phase: str) -> Kernel:
        if phase not in self.kernels:
            self.kernels[phase] = Kernel(phase, self.run_dir, self.parameters)
        return self.kernels[phase]

    @rule(phase=st.sampled_from(PHASES), data=st.data())
    def run_cell(self, phase, data):
        index = data.draw(st.integers(0, len(CELLS[phase]) - 1), label="cell")
        answer = MIGRATION if phase == Phase.EXECUTE and index == GATE else None
        self.trace.append(f"cell {phase}[{index}]")
        self._kernel(phase).run(CELLS[phase][index], answer=answer)

    @rule(right=st.booleans())
    def answer_gate(self, right):
        self.trace.append(f"gate {'right' if right else 'wrong'}")
        self._kernel(Phase.EXECUTE).run(CELLS[Phase.EXECUTE][GATE], answer=MIGRATION if right else "nope")

    @rule(phase=st.sampled_from(PHASES))
    def kill_kernel(self, phase):
        if phase in self.kernels:
            self.trace.append(f"kill {phase}")
            self.kernels.pop(phase).kill()

    @rule(yes=st.booleans())
    def resume(self, yes):
        self.trace.append(f"resume{' --yes' if yes else ''}")
        for kernel in self.kernels.values():  # a person closes the notebooks before resuming headless
            kernel.close()
        self.kernels = {}
        args = ["resume", str(self.run_dir), "--config", str(CONFIG)] + (["--yes"] if yes else [])
        runner.invoke(app, args)

    @rule()
    def way_back(self):
        now = run_view(self.run_dir, str(CONFIG))
        statements = now.way_back(previous_settings(self.run_dir)) if now else []
        if not statements:
            return
        self.trace.append("way back: " + "; ".join(statements))
        script = " ".join(s if s.endswith(";") else s + ";" for s in statements)
        done = subprocess.run([client_tools("embedded").path("psql"), "-X", "-v", "ON_ERROR_STOP=1",
                               "-d", self.admin_url, "-c", script], capture_output=True, text=True)
        assert done.returncode == 0, "\n".join(self.trace) + "\n" + done.stderr
        after = run_view(self.run_dir, str(CONFIG))
        assert after.situation is Situation.SERVING_ORIGINAL_AGAIN, "\n".join(self.trace) + "\n" + after.describe()
        with psycopg.connect(self.url, connect_timeout=5) as conn:  # the original serves through the app URL
            assert conn.execute("SELECT 1").fetchone()[0] == 1

    # --- invariants, after every action ---
    @invariant()
    def the_live_name_is_held_by_the_original_or_the_validated_copy(self):
        if not hasattr(self, "run_dir"):
            return
        now = run_view(self.run_dir, str(CONFIG))
        where = "\n".join(self.trace) + "\n" + now.describe()
        live = now.named(self.database)
        if live is None:
            copy = now.the_copy
            assert now.situation is Situation.BETWEEN_RENAMES, where
            assert copy is not None and copy.closed and now.copy_validated, where
            return
        original, copy = now.original, now.the_copy
        assert (original is not None and live.oid == original.oid) or (
            copy is not None and live.oid == copy.oid and now.copy_validated), where

    @invariant()
    def no_message_says_nothing_changed_after_a_change(self):
        if not hasattr(self, "run_dir") or not self.run_dir.exists():
            return
        changed = False
        for event in read_events(self.run_dir):
            if event["status"] == "changed":
                changed = True
            elif changed and event["status"] in ("refused", "aborted", "failed"):
                text = (event["message"] + " " + str(event["evidence"].get("next_action", ""))).lower()
                for claim in ("nothing was changed.", "nothing was changed;", "nothing was changed:"):
                    assert claim not in text, "\n".join(self.trace) + "\n" + event["message"]

    # --- the end ---
    def _check_restored_serves(self):
        with psycopg.connect(self.url) as conn:
            assert conn.execute("SELECT count(*) FROM _prisma_migrations WHERE migration_name = %s",
                                (MIGRATION,)).fetchone()[0] == 0, "\n".join(self.trace)

    def _check_no_row_lost(self):
        kept = f"{self.database}__pre_rollback_{self.run_id}"
        found = set()
        with psycopg.connect(self.url) as conn:
            found |= {r[0] for r in conn.execute("SELECT id FROM workflows WHERE id LIKE 'wf_pool_%'")}
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (kept,)).fetchone()
            if exists:
                admin.execute(f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS true')
        if exists:
            try:
                with psycopg.connect(with_database(self.url, kept)) as conn:
                    found |= {r[0] for r in conn.execute("SELECT id FROM workflows WHERE id LIKE 'wf_pool_%'")}
            finally:
                with psycopg.connect(self.admin_url, autocommit=True) as admin:
                    admin.execute(f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS false')
        lost = [key for key in self.pool.committed if key not in found]
        assert not lost, "\n".join(self.trace) + f"\nrows the pool committed and nobody has: {lost[:10]}"


def test_any_order_of_cells_kills_resumes_and_way_backs_keeps_production_and_every_row(pg_server, tmp_path):
    print(f"\nmodel-based test: {EXAMPLES} examples, seed {SEED} (ROLLBACK_MODEL_SEED={SEED} repeats it)")
    NotebookModel.pg_server, NotebookModel.workdir = pg_server, tmp_path
    previous = os.environ.get(DRILL_URL_ENV)
    try:
        run_state_machine_as_test(
            hypothesis_seed(SEED)(NotebookModel), settings=settings(max_examples=EXAMPLES, stateful_step_count=12, deadline=None,
                                             derandomize=False, database=None,
                                             suppress_health_check=list(HealthCheck)))
    finally:
        if previous is None:
            os.environ.pop(DRILL_URL_ENV, None)
        else:
            os.environ[DRILL_URL_ENV] = previous
