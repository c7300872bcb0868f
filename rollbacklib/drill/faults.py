"""Fault drills: ``rollback drill --fault NAME`` stages the drill's incident, injects one real fault,
lets the runbook (and ``rollback resume`` where the fault killed it) respond, and judges the
outcome from the server: the catalog and the rows, never the run's status flags.

Each fault names the exit code the runbook must end with. For exit 0: the live name serves
the restored data, the kept ``<db>__pre_rollback_<run>`` is the original database with every
row read just before the fault, and no restored copy is left open. For 2, 3 and 4: nothing
changed (or, after a refusal past the gate, the original still serves, untouched). For 5:
the swap happened, the original is kept whole, and the way back is printed.
The drill's own exit code is 0 when that was observed, 1 when anything differed (listed).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psycopg

from rollbacklib.config import load_config
from rollbacklib.drill import StagedDrill, stage_drill
from rollbacklib.drill.app_session import start_app_session, stop_app_session
from rollbacklib.drill.services import give_test_user_password
from rollbacklib.drill.faults_catalog import FAULTS, Fault, get_fault
from rollbacklib.drill.injection import (Command, FaultUnavailable, Trigger, kill_runner_and_kernel, maintenance_url,
                                         strike_when)
from rollbacklib.drill.outcome import (Snapshot, Target, Verdict, check_original_serves, check_rolled_back,
                                       check_unchanged, snapshot)
from rollbacklib.errors import ConfigError, RollbackError
from rollbacklib.journal import JOURNAL_NAME
from rollbacklib.run import default_reports_dir, new_run_id, run_folder
from rollbacklib.summary import RUN_SUMMARY

__all__ = ["FAULTS", "Fault", "FaultDrill", "FaultDrillResult", "run_fault_drill", "list_faults"]


@dataclass
class FaultDrillResult:
    fault: Fault
    runbook_exit: int | None
    verdict: Verdict
    run_dir: Path
    workdir: Path
    rows_lost: dict | None = None
    kept: bool = False

    @property
    def passed(self) -> bool:
        return self.runbook_exit == self.fault.exit_code and not self.verdict.differences

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def differences(self) -> list[str]:
        found = list(self.verdict.differences)
        if self.runbook_exit != self.fault.exit_code:
            found.insert(0, f"the runbook ended with exit {self.runbook_exit}, the fault expects {self.fault.exit_code}")
        return found


@dataclass
class FaultDrill:
    """One staged incident with one fault: how to run the runbook on it, and what it looked like before."""

    staged: StagedDrill
    config_path: Path
    reports: Path
    run_id: str
    say: Callable[[str], None]
    users: int
    migration_columns: list = field(default_factory=list)
    evidence: dict = field(default_factory=dict)  # what a fault keeps for its own checks
    commands: list[Command] = field(default_factory=list)
    before: Snapshot | None = None
    verdict: Verdict = field(default_factory=Verdict)

    @property
    def last_output(self) -> str:
        """What the last runbook command printed (stdout and stderr)."""
        return self.commands[-1].output if self.commands else ""

    @property
    def run_dir(self) -> Path:
        return run_folder(self.reports, self.staged.migration, self.staged.environment, self.run_id)

    @property
    def journal(self) -> Path:
        return self.run_dir / JOURNAL_NAME

    @property
    def url(self) -> str:
        return self.staged.url

    @property
    def admin_url(self) -> str:
        return maintenance_url(self.staged.url)

    @property
    def database(self) -> str:
        return self.target.database

    @property
    def target(self) -> Target:
        name = psycopg.conninfo.conninfo_to_dict(self.staged.url)["dbname"]
        return Target(self.url, self.admin_url, name, self.staged.migration, self.migration_columns,
                      self.staged.backup)

    def take_reference(self) -> Snapshot:
        """The rows and catalog just before the fault: what the kept database must hold afterwards."""
        self.before = snapshot(self.url, self.admin_url, self.database)
        rows = sum(count for count, _ in self.before.tables.values())
        self.say(f"… read {rows:,} row(s) in {len(self.before.tables)} table(s) of {self.database} before the fault")
        return self.before

    # --- the runbook, as an operator runs it ------------------------------------------------------

    def command(self, argv: list[str], env: dict | None = None) -> Command:
        command = Command(argv, say=self.say, env=env)
        self.commands.append(command)
        return command

    def run_args(self, *extra: str, config: Path | None = None, environment: str | None = None,
                 reports: Path | None = None) -> list[str]:
        return ["run", "--env", environment or self.staged.environment, "-m", self.staged.migration, "--config",
                str(config or self.config_path), "--reports-dir", str(reports or self.reports), "--backup",
                str(self.staged.backup), "--run-id", self.run_id, *extra]

    def run(self, *extra: str, env: dict | None = None) -> int:
        self.say(f"$ rollback run ... --run-id {self.run_id} {' '.join(extra)}".rstrip())
        code = self.command(self.run_args(*extra), env).run()
        self.say(f"  exit {code}")
        return code

    def resume(self, *extra: str) -> int:
        self.say(f"$ rollback resume {self.run_dir} {' '.join(extra)}".rstrip())
        code = self.command(["resume", str(self.run_dir), "--config", str(self.config_path), *extra]).run()
        self.say(f"  exit {code}")
        return code

    def strike(self, trigger: Trigger, act: Callable = kill_runner_and_kernel, *extra: str) -> tuple[Command, dict]:
        """Start ``rollback run --yes``; ``act`` on it the instant ``trigger`` hits; return the command and the hit."""
        self.say(f"$ rollback run ... --run-id {self.run_id} --yes {' '.join(extra)}".rstrip())
        command = self.command(self.run_args("--yes", *extra)).start()
        hit = strike_when(command, self.journal, trigger, act)
        caught = f": {hit['program']} (pid {hit['pid']}) was running" if "program" in hit else ""
        self.say(f"  fault injected {trigger.describe()}{caught}")
        return command, hit

    def kill_then_resume(self, trigger: Trigger, act: Callable = kill_runner_and_kernel) -> int:
        command, _ = self.strike(trigger, act)
        code = command.wait()
        self.say(f"  the run ended with {'SIGKILL' if code == -9 else 'exit ' + str(code)}")
        return self.resume()

    def derived_config(self, name: str, extra: str = "", replace: tuple[str, str] | None = None) -> Path:
        """A copy of the drill's config in the drill folder (relative paths made absolute), changed as asked."""
        text = self.config_path.read_text()
        home = self.config_path.resolve().parent
        text = text.replace('"scenarios/', f'"{home}/scenarios/')
        if replace:
            if replace[0] not in text:
                raise ConfigError(f"{self.config_path} has no {replace[0]!r} to change for this fault.",
                                  next_action="run the fault drills with the packaged config or one like it.",
                                  step="fault")
            text = text.replace(*replace)
        path = self.staged.folder / name
        path.write_text(text + extra)
        return path

    def restart_app_session(self) -> None:
        stop_app_session(self.staged.app_pid, self.staged.folder)
        self.staged.app_pid = start_app_session(self.url, self.staged.folder)


def list_faults() -> list[Fault]:
    return list(FAULTS.values())


def run_fault_drill(name: str, *, config_path: str | None = None, users: int | None = None,
                    reports_dir: str | None = None, keep: bool = False,
                    say: Callable[[str], None] = print) -> FaultDrillResult:
    """Stage the drill's incident, inject the fault ``name``, let the runbook respond, and judge the outcome."""
    fault = get_fault(name)
    config = load_config(config_path)
    if config.drill is None:
        raise ConfigError(f"{config.path} has no [drill] section.",
                          next_action="add [drill] with scenario, migration and environment (see README).")
    migration = config.migration(config.drill.migration)
    reports = Path(reports_dir or default_reports_dir()).resolve()
    run_id = new_run_id()  # short: the kept database is named <db>__pre_rollback_<run_id>, 63 bytes at most
    say(f"Fault drill {fault.name}: {fault.injects} The runbook must end with exit {fault.exit_code}.")
    run_dir = run_folder(reports, config.drill.migration, config.drill.environment, run_id)
    staged = stage_drill(config_path=str(config.path), users=users, backup_dir=run_dir / "backup",
                         keep=keep, say=say, after_generate=give_test_user_password if fault.services else None)
    drill = FaultDrill(staged, config.path, reports, run_id, say, users or config.drill.users,
                       migration.expect.columns if migration else [])
    code = None
    try:
        with _environment(staged.database_url_env, staged.url):
            drill.take_reference()
            code = fault.inject(drill)
            say(f"… judging the outcome from the server (the runbook ended with exit {code})")
            _judge(fault, drill, code)
        rows_lost = _rows_lost(drill.run_dir)
        return FaultDrillResult(fault, code, drill.verdict, drill.run_dir, staged.folder, rows_lost, keep)
    except RollbackError as error:  # the drill itself could not go on: that is a difference, with its reason
        if isinstance(error, FaultUnavailable):
            raise
        drill.verdict.check(False, f"the drill could not complete: {error.message} ({error.next_action})")
        return FaultDrillResult(fault, code, drill.verdict, drill.run_dir, staged.folder, _rows_lost(drill.run_dir),
                                keep)
    finally:
        stop_app_session(staged.app_pid, staged.folder)
        if not keep:
            if staged.server is not None:
                staged.server.stop()
            shutil.rmtree(staged.folder, ignore_errors=True)


def _judge(fault: Fault, drill: FaultDrill, code: int) -> None:
    if fault.outcome == "rolled-back":
        check_rolled_back(drill.target, drill.before, drill.run_id, drill.verdict)
    elif fault.outcome == "unchanged":
        check_unchanged(drill.target, drill.before, drill.verdict)
    elif fault.outcome == "original-serves":
        check_original_serves(drill.target, drill.before, drill.verdict)
    elif fault.outcome == "swapped-not-serving":
        check_rolled_back(drill.target, drill.before, drill.run_id, drill.verdict, serving=False)
    if fault.judge is not None:
        fault.judge(drill, code)


def _rows_lost(run_dir: Path) -> dict | None:
    path = run_dir / RUN_SUMMARY
    try:
        return json.loads(path.read_text()).get("rows_lost")
    except (OSError, ValueError):
        return None


@contextmanager
def _environment(name: str, value: str):
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def describe_rows_lost(rows_lost: dict | None) -> list[str]:
    """The rows the restore discarded, as run.json's rows_lost gives them, table by table."""
    if not rows_lost:
        return ["Rows the restore discarded: not measured (run.json has no rows_lost)."]
    lines = [f"Rows the restore discarded: {rows_lost.get('total', 0)} (inserted {rows_lost.get('inserted', 0)}, "
             f"updated {rows_lost.get('updated', 0)}, deleted {rows_lost.get('deleted', 0)})"]
    for name, table in (rows_lost.get("tables") or {}).items():
        if not table.get("lost"):
            continue
        examples = "; ".join(f"{kind}: " + ", ".join("/".join(map(str, key)) for key in keys[:5])
                             for kind, keys in (table.get("examples") or {}).items())
        lines.append(f"  {name}: {table['lost']} lost ({table.get('inserted', 0)} inserted, "
                     f"{table.get('updated', 0)} updated, {table.get('deleted', 0)} deleted)"
                     + (f"; first keys {examples}" if examples else ""))
    return lines
