"""Run the phase notebooks in order with papermill; the executed notebooks are the audit trail."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import papermill as pm

from rollbacklib import frontends
from rollbacklib.audit import record_changed_files
from rollbacklib.config import WORKDIR_ENV, load_config, working_directory
from rollbacklib.errors import ConfigError, RefusedError, RollbackError
from rollbacklib.files import fsync_file
from rollbacklib.conclude import conclude, import_report_ahead, write_report  # noqa: F401 - write_report: where callers found it
from rollbacklib.journal import JOURNAL_NAME, Journal, changes_made, read_events
from rollbacklib.prisma import validate_migration_id
from rollbacklib.redaction import config_secrets, masked_output, refuse_credentials, scrub_file
from rollbacklib.resources import notebooks_dir as packaged_notebooks
from rollbacklib.run import default_reports_dir, new_run_id, run_folder
from rollbacklib.run import record_approval
from rollbacklib.steps import PHASES, Phase, Plan, StepName, read_plan
from rollbacklib.state import load_state
from rollbacklib.engine import engine_name
from rollbacklib.kernels import KERNEL_ARGUMENTS, KERNEL_MANAGER, KernelPool, StartedKernel, warm_modules
from rollbacklib.summary import finished_phases, first_error, phase_table, phase_word
from rollbacklib.live import Situation
from rollbacklib.way_back import run_view
from rollbacklib.postgres.locks import database_lock
from rollbacklib.triggers.background import start_service_sampling, stop_service_sampling

PREPARE = Phase.PREPARE

GATED_PHASE = Phase.EXECUTE
# Kernels started ahead: a kernel boots and warms in 1-2 s, longer than a short phase (03, 04) takes.
AHEAD = 1  # kernels started during phase 01; from 02 on, all the rest


def notebooks_dir() -> Path:
    """The phase notebooks: $ROLLBACK_NOTEBOOKS, or the ones shipped in the package."""
    folder = Path(os.environ.get("ROLLBACK_NOTEBOOKS") or packaged_notebooks())
    if not (folder / f"{PHASES[0]}.ipynb").exists():
        raise ConfigError(f"The phase notebooks are not in {folder}.",
                          next_action="reinstall rollbacklib (its wheel ships them), or set ROLLBACK_NOTEBOOKS "
                          "to a folder holding 01_prepare.ipynb ... 05_close.ipynb.")
    return folder


class JournalFollower(threading.Thread):
    """Hands each new journal event to ``on_event`` while a notebook runs: live progress."""

    def __init__(self, path: Path, on_event: Callable[[dict], None], interval: float = 0.25):
        super().__init__(daemon=True)
        self.path, self.on_event, self.interval = path, on_event, interval
        self.offset = path.stat().st_size if path.exists() else 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.drain()

    def drain(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            try:
                self.on_event(json.loads(line))
            except json.JSONDecodeError:
                continue

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.drain()


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    report: Path | None = None  # report.html, written at the end of every run
    report_error: str | None = None  # why it could not be written (the run's outcome is not changed by it)

    @property
    def exit_code(self) -> int:
        return self.summary["exit_code"]


@contextmanager
def environment_lock(reports_dir: Path, environment: str):
    """One run per environment at a time (per reports folder)."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / f".lock-{environment}"
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another run"
        fh.close()
        raise RefusedError(f"Another rollback is running on {environment!r} ({holder}).",
                           next_action=f"wait for it to finish, or remove {path} if no runbook process holds it.",
                           step="lock") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    fh.flush()
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def run_phases(*, migration_id: str, environment: str, config_path: str | None = None, reports_dir: str | None = None,
               run_id: str | None = None, dry_run: bool = False, approve: str = "", backup: str | None = None,
               phases: tuple[str, ...] = PHASES, progress: Callable[[str, str, float | None], None] | None = None,
               on_event: Callable[[dict], None] | None = None, confirm: Callable[[Plan], str] | None = None,
               on_plan: Callable[[Plan], None] | None = None) -> RunResult:
    """Execute the phase notebooks into ``reports/<migration>/<env>/<run_id>/``; stop at the first failure.

    On an existing run folder this is a resume: phases that finished in an earlier attempt are
    skipped, and within a phase each step already done whose postcondition still holds on the
    live system is skipped. ``run.json`` is written whatever happens.

    ``progress`` hears of each phase starting and ending (with its time from the journal);
    ``on_event`` of each journal event as it is written (the step-by-step progress of a long
    phase); ``on_plan`` of the plan once phase 01 has written it. ``confirm``, when the run
    has no approval, is shown the plan and asked for the migration ID before phase 02; the
    approval it gives is recorded against the plan's digest.
    A relative ``backup`` is the caller's: it is resolved here, against the caller's working
    directory, because the notebooks run in the run folder.

    Parameters carry names, IDs and paths only: one that looks like a credential is refused
    before anything runs. Each executed notebook is written with every secret masked and,
    once papermill is done with it, sealed into the journal's hash chain (``rollbacklib.audit``).
    """
    refuse_credentials({"migration_id": migration_id, "environment": environment, "config_path": config_path,
                        "reports_dir": reports_dir, "run_id": run_id, "approve": approve, "backup": backup})
    validate_migration_id(migration_id)
    backup = str(Path(backup).expanduser().resolve()) if backup else None
    config = load_config(config_path)
    env = config.environment(environment)
    env.database_url()  # fail on a missing secret before anything runs
    secrets = config_secrets(config)
    run_id = run_id or new_run_id()
    reports = Path(reports_dir or default_reports_dir()).resolve()
    run_dir = run_folder(reports, migration_id, environment, run_id)
    folder = notebooks_dir()
    with environment_lock(reports, environment), database_lock(env, run_id), \
            _kernel_environment({WORKDIR_ENV: str(working_directory()), frontends.KERNEL_ENV: frontends.CLI}), \
            KernelPool(run_dir, dict(os.environ)) as kernels:
        run_dir.mkdir(parents=True, exist_ok=True)
        journal = Journal(run_dir / JOURNAL_NAME, secrets=secrets)
        earlier = read_events(run_dir)
        number = 1 + sum(1 for e in earlier if e["step"] == "attempt")
        journal.record("run", "attempt", "info", f"attempt {number} of run {run_id}", attempt=number,
                       dry_run=dry_run, pid=os.getpid())
        finished = set() if dry_run else finished_phases(earlier)
        if earlier and not dry_run:
            finished -= _phases_to_redo(run_dir, journal, str(config.path))
        to_run = [p for p in phases if p not in finished]
        sampling = start_service_sampling(config, environment, run_dir, dry_run=dry_run)  # /metrics only, to 05's end
        try:
            _start_ahead(kernels, folder, to_run[:1])  # alone: the first phase waits for it
            for phase in phases:
                if phase in finished:
                    journal.record(phase, "phase", "skipped", f"{phase} finished in an earlier attempt")
                    if progress:
                        progress(phase, "done earlier", None)
                    continue
                if phase == GATED_PHASE and not dry_run and \
                        not _approve(run_dir, migration_id, approve, confirm, secrets):
                    break
                if progress:
                    progress(phase, "started", None)
                kernel = _take_kernel(kernels, phase, journal)
                # they boot while it runs: the next one during 01 (short, and it has the machine to itself), every
                # other one from 02 on (03, 04 and the window's end are too short to boot a kernel in)
                ahead = AHEAD if to_run.index(phase) == 0 else len(to_run)
                _start_ahead(kernels, folder, to_run[:to_run.index(phase) + 1 + ahead])
                if to_run.index(phase) == 1:
                    import_report_ahead()  # needed only at the end; here it keeps off the first kernels' start
                follower = JournalFollower(run_dir / JOURNAL_NAME, on_event) if on_event else None
                if follower:
                    follower.start()
                try:
                    ok = _execute(folder / f"{phase}.ipynb", run_dir / f"{phase}.ipynb", {
                        "migration_id": migration_id, "environment": environment, "config_path": str(config.path),
                        "run_id": run_id, "reports_dir": str(reports), "dry_run": dry_run, "approve": approve,
                        "backup": backup or "",
                    }, run_dir, timeout=env.thresholds.cell_timeout_seconds, secrets=secrets, kernel=kernel)
                finally:
                    kernels.retire(kernel)
                    if follower:
                        follower.stop()
                if progress:
                    progress(phase, "ok" if ok else phase_word(read_events(run_dir), phase),
                             phase_seconds(run_dir, phase))
                if ok and phase == PREPARE and on_plan is not None and read_plan(run_dir) is not None:
                    on_plan(read_plan(run_dir))
                if not ok:
                    break
        finally:
            stop_service_sampling(sampling, run_dir, secrets)
            end = conclude(run_dir, secrets)
    return RunResult(run_dir, end.summary, end.report, end.report_error)


# Where each situation (read from the catalog) sends a resumed run back to: every step of those
# phases whose postcondition holds now is skipped, the rest acts from what the catalog shows.
_REDO_FROM = {Situation.NOT_STARTED: Phase.EXECUTE, Situation.COPY_PREPARING: Phase.EXECUTE,
              Situation.COPY_READY: Phase.EXECUTE, Situation.LIVE_BLOCKED: Phase.EXECUTE,
              Situation.BETWEEN_RENAMES: Phase.EXECUTE, Situation.SERVING_ORIGINAL_AGAIN: Phase.EXECUTE,
              Situation.PROMOTED_CLOSED: Phase.EXECUTE}


def _phases_to_redo(run_dir: Path, journal: Journal, config_path: str) -> set[str]:
    """A resume starts from the catalog: it names the situation and reopens the phases it calls for."""
    now = run_view(run_dir, config_path)
    if now is None:
        return set()
    start = _REDO_FROM.get(now.situation)
    if now.situation is Situation.NOT_STARTED and load_state(run_dir).plan_digest is None:
        start = None  # phase 01 has not written its plan: nothing past it to redo
    redo = {p for p in PHASES if start is not None and p >= start}
    journal.record("run", "live", "info", f"resume: {now.describe()}", situation=now.to_dict(),
                   redo=sorted(redo))
    return redo


def resume(run_dir: str | Path, **options) -> RunResult:
    """Continue the run in ``run_dir`` (``reports/<migration>/<env>/<run_id>``) where it stopped."""
    run_dir = Path(run_dir).resolve()
    events = read_events(run_dir)
    if not events:
        raise ConfigError(f"{run_dir} is not a run folder (it has no {JOURNAL_NAME}).",
                          next_action="pass the folder a run wrote: reports/<migration>/<environment>/<run_id>.")
    config = next((e["evidence"].get("config") for e in events if e["step"] == "phase" and e["status"] == "started"),
                  None)
    state = load_state(run_dir)
    return run_phases(migration_id=run_dir.parent.parent.name, environment=run_dir.parent.name,
                      run_id=run_dir.name, reports_dir=str(run_dir.parent.parent.parent),
                      config_path=options.pop("config_path", None) or config,
                      backup=options.pop("backup", None) or (state.backup.path if state.backup else None), **options)


def _approve(run_dir: Path, migration_id: str, approve: str, confirm: Callable[[Plan], str] | None,
             secrets: list[str] = ()) -> bool:
    """Before phase 02: record the approval given on the command line (or typed), bound to the plan's digest."""
    journal = Journal(run_dir / JOURNAL_NAME, secrets=secrets)
    try:
        plan = read_plan(run_dir)
    except RollbackError as err:
        journal.record(GATED_PHASE, StepName.GATE, err.outcome, err.message, next_action=err.next_action)
        return False
    if plan is None or (approve != migration_id and confirm is None):
        return True  # the gate step in the notebook decides (and refuses without a plan or an approval)
    from rollbacklib.dispatch import approval_event

    earlier = approval_event(run_dir)
    if earlier is not None and earlier["evidence"]["approval"]["plan_digest"] != plan.digest:
        journal.record(GATED_PHASE, StepName.GATE, "refused",
                       f"plan.json is not the plan approved earlier in this run ({plan.digest[:12]}, approved "
                       f"{earlier['evidence']['approval']['plan_digest'][:12]}): plan.json was changed after its "
                       "approval; nothing was changed by this attempt.",
                       next_action="do not approve it again: find out who changed plan.json (rollback verify-audit "
                       "names it); start a new run from 01_prepare and approve its plan.")
        return False
    if earlier is not None:
        return True  # approved earlier in this run, for this very plan
    how = "--yes / approve given to the runner"
    if approve != migration_id:
        typed = confirm(plan).strip()
        if typed != migration_id:
            journal.record(GATED_PHASE, StepName.GATE, "refused", f"typed {typed!r}, not the migration ID",
                           next_action=f"this answer changed nothing; {frontends.approve_advice(migration_id, frontends.CLI)}.")
            return False
        how = "typed at the terminal"
    record_approval(run_dir, migration_id, how, plan.digest)
    return True


def _start_ahead(kernels: KernelPool, folder: Path, phases: list[str]) -> None:
    for phase in phases:
        kernels.start(phase, warm_modules(folder / f"{phase}.ipynb", phase))


def _take_kernel(kernels: KernelPool, phase: str, journal: Journal) -> StartedKernel | None:
    """The kernel started ahead for ``phase``, journaled (its pid, when it started, how long the phase waited)."""
    kernel = kernels.take(phase)
    if kernel is None:
        return None
    if kernel.failure:
        # Journaled: a kernel that dies while idle says something about the machine (memory, a kill) worth keeping.
        journal.record(phase, "kernel", "info", f"{kernel.failure}; the phase starts a fresh kernel",
                       ahead=False, **kernel.evidence())
    else:
        journal.record(phase, "kernel", "info", f"kernel pid {kernel.pid}, started ahead of {phase}",
                       ahead=True, **kernel.evidence())
    return kernel


def phase_seconds(run_dir: Path, phase: str) -> float | None:
    """A phase's time as the journal measured it: the same figure the summary shows."""
    return next((p["seconds"] for p in phase_table(read_events(run_dir)) if p["name"] == phase), None)


@contextmanager
def _kernel_environment(values: dict[str, str]):
    """Variables for the notebook kernels, which papermill starts with this process's environment."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _execute(source: Path, output: Path, parameters: dict, run_dir: Path, timeout: float | None = None,
             secrets: list[str] = (), kernel: StartedKernel | None = None) -> bool:
    """Run one phase notebook (in ``kernel`` when one was started ahead of it); every save of ``output`` is
    masked; when papermill is done, seal it."""
    try:
        with masked_output(output, secrets) as masked:
            pm.execute_notebook(str(source), masked, parameters=parameters, kernel_name="python3",
                                progress_bar=False, log_output=False, cwd=str(run_dir), execution_timeout=timeout,
                                extra_arguments=list(KERNEL_ARGUMENTS), kernel_manager_class=KERNEL_MANAGER,
                                engine_name=engine_name(), kernel=kernel)
        return True
    except Exception as err:  # a failed cell, a dead kernel, a cell over its timeout: all end the phase
        events = read_events(run_dir)
        started = max((i for i, e in enumerate(events) if e["phase"] == output.stem and e["step"] == "phase"
                       and e["status"] == "started"), default=len(events))
        if first_error(events[started:]) is None:
            # The failure came from outside the library's steps (a kernel death, a timeout, a notebook
            # edit): journal it so the summary names it, with the outcome the run has reached.
            if isinstance(err, pm.PapermillExecutionError):
                what = f"cell {err.exec_count} raised {err.ename}: {err.evalue}"
                where = f"open {output} at cell {err.exec_count}"
            else:
                what = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                where = f"the kernel running {output.name} stopped ({type(err).__name__}); `rollback resume {run_dir}` " \
                        "continues from what the live system shows"
            outcome = "failed" if changes_made(events) else "aborted"
            Journal(run_dir / JOURNAL_NAME, secrets=secrets).record(
                output.stem, "notebook", outcome, what, error=type(err).__name__,
                next_action=f"{where}; escalate to L1.")
        return False
    finally:
        # papermill has written the notebook for the last time: one more masking pass, then its
        # sha256 (and that of every other new or changed evidence file) goes into the journal.
        if output.exists():
            scrub_file(output, secrets)
            fsync_file(output)  # papermill's saves were not: the version sealed is on disk
            record_changed_files(run_dir, phase=output.stem, secrets=secrets, notebook=output)


def failed_cell(run_dir: Path) -> str | None:
    """Which executed notebook and cell failed, as papermill marked it."""
    import nbformat

    for phase in PHASES:
        path = Path(run_dir) / f"{phase}.ipynb"
        if not path.exists():
            continue
        nb = nbformat.read(path, as_version=4)
        for index, cell in enumerate(nb.cells):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    return f"{path} cell {index} ({out.get('ename')})"
    return None
