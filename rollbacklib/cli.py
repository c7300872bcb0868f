"""The ``rollback`` command: a thin layer over the library.

Exit codes: 0 succeeded, 2 bad usage or config, 3 aborted safely before any change,
4 refused (a gate or a lock), 5 failed after changes began (a person must act).
``assess``: 0 no rollback, 10 team decision, 11 roll back now, 2 bad usage.
``verify-audit``: 0 the audit trail is intact, 1 something in it was altered, 2 bad usage.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from rollbacklib.errors import EXIT_FAILED, ConfigError, RollbackError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Roll back a Prisma-managed PostgreSQL migration, safely, with the evidence to prove it.")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="runbook.toml (default: $ROLLBACK_CONFIG, ./runbook.toml).")
EnvOpt = typer.Option(..., "--env", "-e", help="Environment from the config: production, staging, drill, ...")
ReportsOpt = typer.Option(None, "--reports-dir", help="Where runs write their folders (default: ./reports).")
MigrationOpt = typer.Option(..., "--migration", "-m", help="The Prisma migration ID to roll back.")
BackupOpt = typer.Option(None, "--backup", help="Backup to restore (default: newest suitable one); "
                         "a relative path is relative to the working directory.")
RunIdOpt = typer.Option(None, "--run-id", help="Resume or name a run (default: a new one).")
StrategyOpt = typer.Option(None, "--strategy", help="swap, resolve-only, ... (default: the environment's strategy key; "
                           "auto: the one phase 01 recommends).")
IntervalOpt = typer.Option(None, "--interval", help="Seconds between samples (default: the environment's or "
                           "[triggers] interval_seconds).")


def _fail(error: RollbackError) -> None:
    err.print(f"[bold red]{type(error).__name__}[/] ({error.outcome}, exit {error.exit_code})")
    err.print(str(error), markup=False, highlight=False)
    raise typer.Exit(error.exit_code)


def _summary_table(summary: dict) -> Table:
    outcome = "DRY RUN" if summary.get("dry_run") and summary["status"] == "succeeded" else summary["status"].upper()
    table = Table(title=f"Run {summary['run_id']}: {outcome}", show_lines=False)
    for col in ("phase", "status", "seconds"):
        table.add_column(col)
    for p in summary["phases"]:
        status = p["status"]
        if summary.get("dry_run") and status == "succeeded" and p["name"] != summary["phases"][0]["name"]:
            status = "planned, not executed"  # a dry run's later phases only print their steps
        table.add_row(p["name"], status, f"{p['seconds']:.1f}" if p["seconds"] is not None else "-")
    return table


_MARKS = {"info": " ", "ok": "✓", "changed": "•", "skipped": "-", "aborted": "✗", "refused": "✗", "failed": "✗",
          "bad-usage": "✗"}
_step_started: dict[str, str] = {}


_bar_open = False  # a progress bar is on the terminal's last line, without its newline yet


def print_event(event: dict) -> None:
    """One journal event as a progress line (steps only; phases are printed by the runner)."""
    global _bar_open
    step, status = event["step"], event["status"]
    if status == "started":
        _step_started[step] = event["ts"]
    if step in ("phase", "plan", "artifact") or status not in _MARKS or (status == "info" and not event["message"]) \
            or event["evidence"].get("not_in_plan"):
        return
    if status == "info" and isinstance(event["evidence"].get("progress"), dict):
        _print_progress(step, event["evidence"]["progress"])
        return
    if _bar_open:
        out.file.write("\n")
        _bar_open = False
    text = f"      {_MARKS[status]} {step}"
    if status == "ok" and step in _step_started:
        from datetime import datetime

        seconds = (datetime.fromisoformat(event["ts"]) - datetime.fromisoformat(_step_started.pop(step))).total_seconds()
        text += f" ({seconds:.1f} s)"
    elif status != "ok" and event["message"]:
        text += f": {event['message'].splitlines()[0]}"
    out.print(text, markup=False, highlight=False)


def _print_progress(step: str, progress: dict) -> None:
    """A step's progress bar: redrawn in place on a terminal, one line per journaled step of it elsewhere."""
    global _bar_open
    from rollbacklib.progress import line

    text = f"      > {line(step, progress)}"
    if not out.is_terminal:
        out.print(text, markup=False, highlight=False)
        return
    out.file.write("\r" + text)
    out.file.flush()
    _bar_open = progress["done"] < progress["total"]
    if not _bar_open:
        out.file.write("\n")


def _run_with_terminal(execute, *, migration_id: str, environment: str, yes: bool, dry_run: bool = False,
                       approve: str = "", protected: bool = False):
    """Run (or resume) with the terminal's progress lines, plan and prompt; our errors become exit codes."""
    confirm = None
    if not yes and not approve and not dry_run and sys.stdin.isatty():
        def confirm(plan) -> str:
            from rollbacklib.gate import ask_at_terminal

            return ask_at_terminal(plan, environment, lambda line: out.print(line, markup=False, highlight=False),
                                   typer.prompt, protected=protected)

    def progress(phase, status, seconds):
        out.print(f"  {phase:<20} {status}" + (f" ({seconds:.1f} s)" if seconds is not None else ""))

    try:
        return execute(dry_run=dry_run, approve=approve or (migration_id if yes else ""), progress=progress,
                       on_event=print_event,
                       confirm=confirm, on_plan=print_plan)
    except RollbackError as error:
        _fail(error)


def print_plan(plan) -> None:
    """Every step after phase 01, with each statement or command exactly as it will run."""
    from rollbacklib.steps import Phase

    out.print(f"\n[bold]Plan {plan.digest[:12]}[/] (sha256 {plan.digest}); [red]![/] marks a destructive step:")
    for step in plan.steps:
        if step.phase == Phase.PREPARE:
            continue
        mark = "[red]![/]" if step.destructive else " "
        out.print(f"  {step.phase:<19} {mark} [bold]{step.name}[/]: {step.summary}", highlight=False)
        for action in step.actions:
            out.print(f"      {action.kind:<8} {action.text}", markup=False, highlight=False)
    for line in (plan.strategy or {}).get("lines") or []:  # each strategy: what it discards, its time, the choice
        out.print(line, markup=False, highlight=False)
    out.print("")


def print_run(summary: dict, run_dir: Path, report: Path | None = None, report_error: str | None = None) -> None:
    from rollbacklib.report.evidence import next_actions

    production = summary.get("production") or {}
    if production.get("line"):
        style = "bold red" if production.get("state") in ("down", "blocked") else "bold"
        out.print(f"[{style}]{production['line']}[/]", highlight=False)
    out.print(_summary_table(summary))
    choice = summary.get("strategies") or {}
    if choice.get("chosen"):
        chosen = next((a for a in choice.get("assessments", []) if a["name"] == choice["chosen"]), {})
        out.print(f"Strategy {choice['chosen']} (recommended: {choice.get('recommended')}): {choice.get('reason')}; "
                  f"it discards {chosen.get('discards')}", markup=False, highlight=False)
    if summary.get("outcome") and not summary.get("dry_run"):
        out.print(f"{summary['status'].upper()} (exit {summary['exit_code']}): {summary['outcome']}", highlight=False)
    rto, budget = summary["rto_seconds"], summary["rto_budget_seconds"]
    if rto is not None and budget:
        verdict = "[green]within[/]" if rto < budget else "[red]OVER[/]"
        out.print(f"RTO {rto:.1f} s, {verdict} the {budget / 60:.0f} min target")
    checks = [c for c in summary["validation"]["checks"] if not c.get("skipped")]
    if checks:
        passed = sum(1 for c in checks if c["passed"])
        out.print(f"Validation: {passed}/{len(checks)} checks passed")
    if summary.get("kept_database"):
        out.print(f"Pre-rollback database kept as [bold]{summary['kept_database']}[/], closed to connections"
                  + (f"; to open it for inspection: {summary['open_kept_database']}"
                     if summary.get("open_kept_database") else ""), highlight=False)
    actions = next_actions(summary, run_dir)
    if actions:
        out.print("[bold]Next actions[/]:", highlight=False)
        for number, (text, code) in enumerate(actions, 1):
            out.print(f"  {number}. {text}" + (f"\n     {code}" if code else ""), markup=False, highlight=False)
    if summary.get("way_back"):
        err.print("[bold]The way back[/] (run on the maintenance database, in order):", highlight=False)
        for statement in summary["way_back"]:
            err.print(f"  {statement};", markup=False, highlight=False)
        if summary.get("way_back_command"):
            err.print(f"  as one command that stops at the first error: {summary['way_back_command']}",
                      markup=False, highlight=False)
    if summary.get("services_way_back"):  # what stop-services scaled down, still down (services_way_back.py)
        err.print("[bold]Then the services[/]" + (" (after the database's way back)" if summary.get("way_back") else "")
                  + f": {summary['services_way_back_command']}", highlight=False)
        for item in summary["services_way_back"]:
            now = "?" if item["replicas"] is None else item["replicas"]
            err.print(f"  {item['service']}: {now} -> {item['target']} replica(s): {item['action']}"
                      + (f" ({item['error']})" if item.get("error") else ""), markup=False, highlight=False)
    if summary.get("rollback_stands"):  # a failure after the database's rollback: no way back (rollback_stands.py)
        stands = summary["rollback_stands"]
        err.print(stands["line"], style="bold", markup=False, highlight=False)
        err.print(stands["services"], markup=False, highlight=False)
    for orphan in summary.get("orphans") or []:
        err.print(f"Left on the server: {orphan['database']} ({'closed' if orphan['closed'] else 'OPEN'}, "
                  f"{'validated' if orphan['validated'] else 'not validated'}); once nobody needs it: "
                  f"{orphan['drop']};", markup=False, highlight=False)
    if summary["error"]:
        e = summary["error"]
        err.print(f"[bold red]{e['phase']} / {e['step']}[/]: {e['message']}", markup=True, highlight=False)
        if e.get("next_action"):
            err.print(f"Next: {e['next_action']}", markup=False, highlight=False)
        if e.get("escalate"):
            err.print(f"Escalate to {e.get('contact') or e['escalate']}.", markup=False, highlight=False)
        from rollbacklib.pipeline import failed_cell

        cell = failed_cell(run_dir)
        if cell:
            err.print(f"Failed cell: {cell}", markup=False)
    for n in summary.get("notifications") or []:
        if not n["delivered"]:
            err.print(f"notification {n['channel']} failed ({n['event']}): {n['error']}", markup=False, highlight=False)
    audit = summary.get("audit")
    if audit:
        out.print(f"Audit chain head: {audit['head']} ({audit['events']} events); keep it with the incident and "
                  f"check the folder with: rollback verify-audit {run_dir} --head {audit['head']}", highlight=False)
    out.print(f"Report folder: {run_dir}")
    if report is not None:
        out.print(f"Report: {report}", highlight=False)
    if report_error is not None:
        err.print(f"The report could not be written ({report_error}); the run's outcome stands. "
                  f"Try again with: rollback report {run_dir}", markup=False, highlight=False)


@app.command()
def run(
    migration: str = MigrationOpt,
    env: str = EnvOpt,
    config: Optional[Path] = ConfigOpt,
    reports_dir: Optional[Path] = ReportsOpt,
    backup: Optional[Path] = BackupOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print exactly what would run; change nothing."),
    yes: bool = typer.Option(False, "--yes", help="Pass the confirmation gate without typing the migration ID "
                             "(refused in a protected environment)."),
    run_id: Optional[str] = RunIdOpt,
    strategy: Optional[str] = StrategyOpt,
    approve: Optional[str] = typer.Option(None, "--approve", metavar="DIGEST", help="Approve the plan whose sha256 "
                                          "is DIGEST (printed by --dry-run); refused if the plan as it stands now "
                                          "differs. How a protected environment is approved without a terminal."),
    salvage: bool = typer.Option(False, "--salvage", help="Carry the rows written after the backup into the "
                                 "restored database after the reopen (swap; in the plan, so the gate approves it)."),
):
    """Run the phase notebooks (prepare, execute, validate, restore service, close) with papermill."""
    import os
    from functools import partial

    from rollbacklib.phases.salvage import SALVAGE_ENV
    from rollbacklib.pipeline import run_phases

    if yes and approve:
        _fail(ConfigError("--yes and --approve are two ways to approve: give one.",
                          next_action="use --approve DIGEST (a protected environment accepts only that)."))
    if salvage:  # the phases' kernels inherit it; phase 01 renders salvage-carry into the plan
        os.environ[SALVAGE_ENV] = "1"

    execute = partial(run_phases, migration_id=migration, environment=env, config_path=str(config) if config else None,
                      reports_dir=str(reports_dir) if reports_dir else None, run_id=run_id,
                      backup=str(backup) if backup else None, strategy=strategy or "")
    result = _run_with_terminal(execute, migration_id=migration, environment=env, yes=yes, dry_run=dry_run,
                                approve=approve or "", protected=_protected(config, env))
    print_run(result.summary, result.run_dir, result.report, result.report_error)
    if dry_run:
        out.print("Phase 01 only read; every later step was printed above and not executed.")
        out.print("[bold]DRY RUN: nothing was changed[/]" + ("" if result.exit_code == 0 else
                  f" (it stopped at the error above: exit {result.exit_code})"))
    raise typer.Exit(result.exit_code)


def _protected(config: Optional[Path], env: str) -> bool:
    """Is the environment protected (the terminal's gate then asks for the digest)? False when the config is bad:
    the run itself says what is wrong with it."""
    from rollbacklib.config import load_config

    try:
        return load_config(config).environment(env).protected
    except RollbackError:
        return False


def _run_dir(path: Path) -> Path:
    from rollbacklib.errors import ConfigError
    from rollbacklib.journal import JOURNAL_NAME

    if not (path / JOURNAL_NAME).is_file():
        raise ConfigError(f"{path} is not a run folder (it has no {JOURNAL_NAME}).",
                          next_action="pass a folder reports/<migration>/<environment>/<run_id>/ that a run wrote.")
    return path.resolve()


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run folder: reports/<migration>/<environment>/<run_id>.")):
    """Render the report again from the run's notebooks, journal, state and the live catalog.

    The run writes RUN_DIR/report.html and seals it; rendered again, the report goes to a new file
    (report-2.html, ...) sealed with its reason, and the sealed one is kept.
    """
    from rollbacklib.audit import record_artifact
    from rollbacklib.report import REPORT_NAME, html, unsealed_name

    try:
        folder = _run_dir(run_dir)
        path = html.write(folder, unsealed_name(folder, REPORT_NAME))  # a sealed report.html is kept as it is
        record_artifact(folder, path, "report", reason=f"rollback report: rendered again on request as {path.name}")
    except RollbackError as error:
        _fail(error)
    out.print(f"Report: {path}", highlight=False)


@app.command()
def postmortem(
    run_dir: Path = typer.Argument(..., help="A run folder: reports/<migration>/<environment>/<run_id>."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Write YYYY-MM-DD-migration-rollback-postmortem.md "
                                           "here (default: RUN_DIR/postmortem.md)."),
):
    """Write the post-mortem draft: the seed's template filled from the run's evidence, blanks marked for people."""
    from rollbacklib.audit import record_artifact
    from rollbacklib.redaction import run_secrets, scrub_file
    from rollbacklib.report import POSTMORTEM_NAME, postmortem as pm, unsealed_name

    try:
        folder = _run_dir(run_dir)
        path = pm.write(folder, out_dir, None if out_dir else unsealed_name(folder, POSTMORTEM_NAME))
        if out_dir is None:  # masked, then sealed with its reason; a sealed postmortem.md is kept as it is
            record_artifact(folder, path, "evidence", reason=f"rollback postmortem: written on request as {path.name}")
        else:
            scrub_file(path, run_secrets(folder))
    except RollbackError as error:
        _fail(error)
    out.print(f"Post-mortem draft: {path}", highlight=False)


@app.command("lost-rows")
def lost_rows(
    run_dir: Path = typer.Argument(..., help="A run folder: reports/<migration>/<environment>/<run_id>."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the files, one per table."),
    fmt: str = typer.Option("csv", "--format", help="csv or jsonl."),
    config: Optional[Path] = ConfigOpt,
):
    """Export the rows the restore discarded, per table, from the kept pre-rollback database (CSV or JSON Lines)."""
    from rollbacklib.lost_rows import export_lost_rows

    try:
        written = export_lost_rows(_run_dir(run_dir), out_dir, fmt, str(config) if config else None)
    except RollbackError as error:
        _fail(error)
    for table in written:
        counts = ", ".join(f"{n} {kind}" for kind, n in table.rows.items()) or "no rows lost"
        out.print(f"{table.table}: {counts}" + (f" -> {table.path}" if table.path else "")
                  + (f" ({table.note})" if table.note else ""), markup=False, highlight=False)


@app.command()
def status(
    run_dir: Path = typer.Argument(..., help="A run folder: reports/<migration>/<environment>/<run_id>."),
):
    """Where a run stands now: its outcome, production's state and the way back, read from the live catalog and
    the platform at this moment. Writes nothing, changes nothing (run.json and the report are left as they are)."""
    from rollbacklib.outcome import compute
    from rollbacklib.way_back import run_view

    try:
        folder = _run_dir(run_dir)
        now = run_view(folder)
        if now is not None:
            out.print(f"Live: {now.describe()}", markup=False, highlight=False)
        summary = compute(folder)
    except RollbackError as error:
        _fail(error)
    print_run(summary, folder)


@app.command("services-back")
def services_back(
    run_dir: Path = typer.Argument(..., help="A run folder: reports/<migration>/<environment>/<run_id>."),
    config: Optional[Path] = ConfigOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print each service still down and the call that brings "
                                 "it back; change nothing."),
):
    """The services' way back: what the run's stop-services scaled down, back to the replicas each had.

    Read from the platform now (a service someone started by hand is left alone); refused while the live
    database does not accept connections (run the database's way back first). Journaled into the run.
    """
    from rollbacklib.services_way_back import bring_back

    try:
        result = bring_back(_run_dir(run_dir), str(config) if config else None, dry_run=dry_run)
    except RollbackError as error:
        _fail(error)
    if not result["pending"]:
        out.print("No service this run stopped is down now: nothing to bring back.", highlight=False)
        return
    for item in result["pending"]:
        now = "?" if item["replicas"] is None else item["replicas"]
        out.print(f"{item['service']}: {now} -> {item['target']} replica(s): {item['action']}", markup=False,
                  highlight=False)
    if dry_run:
        out.print("Dry run: nothing was changed.", highlight=False)
        return
    for b in result["brought_back"]:
        out.print(f"{b['service']} back: the {b.get('platform')} platform reports {b.get('replicas')} replica(s)",
                  markup=False, highlight=False)
    for item in result["left"]:
        err.print(f"{item['service']} NOT brought back: {item['error']}; by hand: {item['action']}", markup=False,
                  highlight=False)
    if result["left"]:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def resume(
    run_dir: Path = typer.Argument(..., help="The run folder: reports/<migration>/<environment>/<run_id>."),
    config: Optional[Path] = ConfigOpt,
    yes: bool = typer.Option(False, "--yes", help="Pass the confirmation gate if the run has no approval yet."),
):
    """Continue a run that stopped (killed, crashed, or failed at a step someone then fixed by hand).

    Phases that finished are skipped; each step already done is skipped only if its postcondition
    still holds on the live system; a swap cut in half is finished from what the catalog shows.
    """
    from functools import partial

    from rollbacklib.pipeline import resume as resume_run

    from rollbacklib.way_back import run_view

    now = run_view(Path(run_dir).resolve(), str(config) if config else None)
    if now is not None:
        out.print(f"Live: {now.describe()}", markup=False, highlight=False)
    execute = partial(resume_run, run_dir, config_path=str(config) if config else None)
    result = _run_with_terminal(execute, migration_id=Path(run_dir).resolve().parent.parent.name,
                                environment=Path(run_dir).resolve().parent.name, yes=yes)
    print_run(result.summary, result.run_dir, result.report, result.report_error)
    raise typer.Exit(result.exit_code)


def _drill_salvage(other: bool) -> None:
    """``rollback drill --salvage`` sets what ``rollback run --salvage`` sets (the phases' kernels inherit it)."""
    import os

    from rollbacklib.phases.salvage import SALVAGE_ENV

    if other:
        raise ConfigError("--salvage goes with a plain drill (not --fault, --stop or --stage-only).",
                          next_action="run: rollback drill --salvage (after --stage-only: rollback run ... --salvage)",
                          step="drill")
    os.environ[SALVAGE_ENV] = "1"


@app.command()
def drill(
    users: Optional[int] = typer.Option(None, "--users", help="Users to generate (default: the config's drill.users)."),
    config: Optional[Path] = ConfigOpt,
    reports_dir: Optional[Path] = ReportsOpt,
    keep: bool = typer.Option(False, "--keep", help="Leave the server running and print how to connect."),
    stage_only: bool = typer.Option(False, "--stage-only", help="Stage the incident and stop there, server running "
                                    "(implies --keep); print how to practise the rollback on it."),
    stop: Optional[Path] = typer.Option(None, "--stop", metavar="DIR", help="Stop the server and the app session of "
                                        "a drill folder (as printed by --stage-only or --keep), and remove it."),
    fault: Optional[str] = typer.Option(None, "--fault", metavar="NAME", help="Inject the fault NAME for real, let the "
                                        "runbook (and a resume) respond, check the outcome from the rows and the "
                                        "catalog: exit 0 as expected, 1 if anything differed. `--fault list` lists them."),
    services: bool = typer.Option(False, "--services", help="Run the scenario's api-gateway, reports-client and "
                                  "static-report-server for real (process platform) with traffic: the runbook stops "
                                  "and starts them; login and error rate are measured before, during and after."),
    strategy: Optional[str] = StrategyOpt,
    migration_fails: bool = typer.Option(False, "--migration-fails", help="Stage the bad migration failing (the "
                                         "scenario's failing_data_sql: Prisma's P3009, the schema unchanged)."),
    partly: bool = typer.Option(False, "--partly", help="With --migration-fails: it fails part way, its statements "
                                "before the failing one applied (statement by statement, as Prisma's driver adapter)."),
    salvage: bool = typer.Option(False, "--salvage", help="As `rollback run --salvage`: carry the rows written after "
                                 "the backup into the restored database after the reopen (swap)."),
):
    """The configured scenario end to end on an embedded PostgreSQL: no server install needed."""
    from rollbacklib.drill import run_drill, stage_drill, stop_drill

    try:
        if salvage:
            _drill_salvage(fault is not None or stop is not None or stage_only)
        if fault is not None:
            from rollbacklib.drill.fault_report import fault_drill_command

            if stop is not None or stage_only:
                raise ConfigError("--fault takes neither --stop nor --stage-only.",
                                  next_action=f"run: rollback drill --fault {fault}", step="drill")
            raise typer.Exit(fault_drill_command(fault, config_path=str(config) if config else None, users=users,
                                                 reports_dir=str(reports_dir) if reports_dir else None, keep=keep,
                                                 say=lambda line: out.print(line, markup=False, highlight=False)))
        if services and (stop is not None or stage_only):
            raise ConfigError("--services goes with a plain drill (not --stop or --stage-only).",
                              next_action="run: rollback drill --services", step="drill")
        if stop is not None:
            if users or keep or stage_only:
                raise ConfigError("--stop takes no other option.", next_action=f"run: rollback drill --stop {stop}",
                                  step="drill")
            stopped = stop_drill(stop)
            out.print(("Stopped the server" if stopped.server_was_running else "The server was not running")
                      + ("; stopped the app session" if stopped.app_session_was_running else
                         "; the app session had already ended") + f"; removed {stopped.folder}.", highlight=False)
            return
        if partly and not migration_fails:
            raise ConfigError("--partly goes with --migration-fails.",
                              next_action="run: rollback drill --migration-fails --partly", step="drill")
        failing = ("partly" if partly else "whole") if migration_fails else None
        if stage_only:
            staged = stage_drill(config_path=str(config) if config else None, users=users, say=out.print,
                                 failing=failing)
            out.print("")
            out.print(staged.instructions(reports_dir), markup=False, highlight=False)
            return
        result = run_drill(config_path=str(config) if config else None, users=users,
                           reports_dir=str(reports_dir) if reports_dir else None, keep=keep, say=out.print,
                           on_event=print_event, services=services, strategy=strategy or "",
                           failing=failing)
    except RollbackError as error:
        _fail(error)
    print_run(result.run.summary, result.run.run_dir, result.run.report, result.run.report_error)
    for label, seconds in result.setup_seconds.items():
        out.print(f"  setup: {label}: {seconds:.1f} s", highlight=False)
    out.print("Rolled back: " + ("[green]yes[/]" if result.rolled_back else "[red]NO[/]"))
    if keep:
        from rollbacklib.postgres.client import client_tools

        psql = client_tools("embedded").path("psql")
        out.print(f"Server left running in {result.workdir}. Connect with:\n  {psql} '{result.url}'\n"
                  f"Stop it with:\n  rollback drill --stop {result.workdir}", highlight=False)
    raise typer.Exit(result.exit_code)


@app.command()
def backup(env: str = EnvOpt, config: Optional[Path] = ConfigOpt):
    """Take a backup (pg_dump custom format) with its manifest into the environment's backup_dir."""
    from rollbacklib.postgres.backup import take_backup
    from rollbacklib.config import load_config
    from rollbacklib.postgres.client import client_tools

    try:
        cfg = load_config(config)
        environment = cfg.environment(env)
        url = environment.parsed_database_url()
        path = take_backup(url.conninfo, environment.backup_dir,
                           client_tools(environment.client_binaries), probes=cfg.all_queries())
    except RollbackError as error:
        _fail(error)
    out.print(f"Backup: {path}\nManifest: {path}.manifest.json")
    print_url_notes(url, environment.database_url_env)


def print_url_notes(url, variable: str) -> None:
    """Which arguments of the URL were not used, or used differently, and why."""
    for name, why in {**url.translated, **url.dropped}.items():
        out.print(f"${variable}: {name}: {why}", markup=False, highlight=False)


@app.command("verify-backup")
def verify_backup(
    env: str = EnvOpt,
    config: Optional[Path] = ConfigOpt,
    backup: Optional[Path] = typer.Option(None, "--backup", help="The backup (default: newest in backup_dir)."),
    migration: str = typer.Option("", "--migration", "-m", help="Also check the backup predates this migration."),
    restore_test: bool = typer.Option(False, "--restore-test", help="Restore into a throwaway database, validate, drop it."),
):
    """Check a backup (the plan's Test 2 with --restore-test). Never touches the live database."""
    from rollbacklib.postgres.backup import find_backup
    from rollbacklib.config import load_config
    from rollbacklib.postgres.client import client_tools
    from rollbacklib.trial_restore import restore_test as do_restore_test, verify

    try:
        cfg = load_config(config)
        environment = cfg.environment(env)
        path = backup or find_backup(environment.backup_dir, None)
        tools = client_tools(environment.client_binaries)
        result = verify(path, environment, tools, migration)
        table = Table(title=f"Backup {result.path}")
        for col in ("check", "verdict", "expected", "found"):
            table.add_column(col)
        for c in result.checks:
            table.add_row(c.name, c.verdict, str(c.expected), str(c.found))
        out.print(table)
        result.raise_if_failed()
        if restore_test:
            report = do_restore_test(result, environment, tools)
            out.print(f"Restore test: {report['passed_checks']}/{report['checks']} checks passed; restored in "
                      f"{report['restore_seconds']:.1f} s, total {report['seconds']:.1f} s; throwaway database "
                      f"{report['database']} dropped.")
            if not report["passed"]:
                for line in report["failures"]:
                    err.print(line, markup=False)
                raise typer.Exit(3)
    except RollbackError as error:
        _fail(error)


@app.command("verify-audit")
def verify_audit(
    run_dir: Path = typer.Argument(..., help="The run's report folder (reports/<migration>/<env>/<run_id>)."),
    head: Optional[str] = typer.Option(None, "--head", help="The chain head kept outside the folder (default: the "
                                       "last head the run journaled)."),
    public_key: Optional[Path] = typer.Option(None, "--public-key", help="The run's Ed25519 public key (PEM): every "
                                              "signed head must verify with it."),
    strict: bool = typer.Option(False, "--strict", help="Files of the folder that were never sealed are an "
                                "alteration (exit 1), not a note."),
):
    """Check the journal's chain, every file as it was sealed at the head, run.json's figures and the signatures.

    Exit 0 when the audit trail is intact, 1 when anything in it was altered, removed or moved, 2 bad usage.
    """
    from rollbacklib.signing import load_public_key
    from rollbacklib.verify import verify_audit as verify

    if not run_dir.is_dir():
        err.print(f"{run_dir} is not a run folder.", markup=False)
        raise typer.Exit(2)
    try:
        key = load_public_key(public_key) if public_key else None
    except RollbackError as error:
        _fail(error)
    result = verify(run_dir, head=head, public_key=key, strict=strict)
    for note in result.notes:
        out.print(f"note: {note}", markup=False, highlight=False)
    for line in result.signatures:
        out.print(f"signature ok: {line}", markup=False, highlight=False)
    if result.after_head:
        out.print(f"After the head: {len(result.after_head)} event(s), not part of the evidence at the head:",
                  highlight=False)
        for line in result.after_head:
            out.print(f"  {line}", markup=False, highlight=False)
    if result.not_evidence:
        out.print("Not part of the evidence (never sealed): " + ", ".join(result.not_evidence), markup=False,
                  highlight=False)
    if result.intact:
        sealed = sum(1 for v in result.files.values() if v == "ok")
        out.print(f"Audit trail intact: {result.events} events chained, {sealed} sealed file(s) unchanged; evidence "
                  f"up to head {result.anchor} (event #{result.anchor_seq}, {result.anchor_source})", highlight=False)
        raise typer.Exit(0)
    problems = result.problems or [f"{len(result.not_evidence)} file(s) are not part of the evidence (--strict): "
                                   + ", ".join(result.not_evidence)]
    err.print(f"[bold red]ALTERED[/]: {problems[0]}", highlight=False)
    for problem in problems[1:]:
        err.print(f"  also: {problem}", markup=False, highlight=False)
    raise typer.Exit(1)


audit_app = typer.Typer(no_args_is_help=True, help="The audit trail's signing keys.")
app.add_typer(audit_app, name="audit")


@audit_app.command("keygen")
def audit_keygen(
    out_dir: Path = typer.Option(Path("."), "--out", help="Folder to write the pair into."),
    name: str = typer.Option("rollback-audit", "--name", help="File name stem: NAME.key.pem and NAME.pub.pem."),
):
    """Make an Ed25519 key pair for signing runs' chain heads (audit.signing_key_env names the private key's env var)."""
    from rollbacklib.signing import keygen

    try:
        private, public = keygen(out_dir, name)
    except RollbackError as error:
        _fail(error)
    out.print(f"Private key: {private} (mode 600: keep it off the run folders' machine if you can)\n"
              f"Public key: {public} (give it to whoever verifies: rollback verify-audit RUN_DIR --public-key "
              f"{public})\nTo sign runs: set [audit] signing_key_env = \"ROLLBACK_AUDIT_KEY\" in runbook.toml and "
              f"export ROLLBACK_AUDIT_KEY=\"$(cat {private})\"", highlight=False)


@app.command()
def assess(
    env: str = EnvOpt,
    migration: str = MigrationOpt,
    config: Optional[Path] = ConfigOpt,
    reports_dir: Optional[Path] = ReportsOpt,
    window: Optional[float] = typer.Option(None, "--window", help="Seconds to sample (default: [triggers] "
                                           "window_seconds)."),
    interval: Optional[float] = IntervalOpt,
    run_id: Optional[str] = RunIdOpt,
):
    """Should we roll back? Sample the metrics and the database, evaluate the triggers (notebook 00_assess).

    Exit 0: no rollback; 10: team decision (only manual triggers fired); 11: roll back now (an
    automatic trigger fired); 2: bad usage or config.
    """
    from rollbacklib.phases.assess import run_assessment

    try:
        result = run_assessment(migration_id=migration, environment=env, config_path=str(config) if config else None,
                                reports_dir=str(reports_dir) if reports_dir else None, run_id=run_id,
                                window_seconds=window or 0, interval_seconds=interval or 0)
    except RollbackError as error:
        _fail(error)
    for line in result.lines:
        out.print(line, markup=False, highlight=False)
    out.print(f"Assessment folder: {result.folder}", highlight=False)
    raise typer.Exit(result.exit_code)


@app.command()
def watch(
    env: str = EnvOpt,
    migration: str = MigrationOpt,
    config: Optional[Path] = ConfigOpt,
    reports_dir: Optional[Path] = ReportsOpt,
    interval: Optional[float] = IntervalOpt,
    yes: bool = typer.Option(False, "--yes", help="Approve, now, the rollback an automatic trigger would start: "
                             "only with auto_rollback = true in the environment's triggers."),
    run_id: Optional[str] = RunIdOpt,
):
    """Sample on an interval and alert when a trigger fires; with auto_rollback = true and --yes, start the runbook.

    Stops cleanly on Ctrl-C or SIGTERM (exit 0). After a rollback it started: that run's exit code.
    """
    from rollbacklib.phases.assess import open_assessment
    from rollbacklib.watch import watch as do_watch

    try:
        ctx = open_assessment(migration_id=migration, environment=env, config_path=str(config) if config else "",
                              reports_dir=str(reports_dir) if reports_dir else "", run_id=run_id or "",
                              interval_seconds=interval or 0)
        result = do_watch(ctx, approve=migration if yes else "",
                          say=lambda line: out.print(line, markup=False, highlight=False))
    except RollbackError as error:
        _fail(error)
    out.print(f"Stopped ({result.stopped_by}) after {result.samples} samples, {len(result.alerts)} alert(s); "
              f"folder: {result.folder}", highlight=False)
    if result.run is not None:
        print_run(result.run.summary, result.run.run_dir, result.run.report, result.run.report_error)
    raise typer.Exit(result.exit_code)


@app.command()
def lab(
    migration: str = MigrationOpt,
    env: str = EnvOpt,
    config: Optional[Path] = ConfigOpt,
    reports_dir: Optional[Path] = ReportsOpt,
    run_id: Optional[str] = RunIdOpt,
    backup: Optional[Path] = BackupOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Notebooks that only print what they would run."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Do not open a browser: print the URL (with its token)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port on 127.0.0.1 (default: a free one)."),
):
    """JupyterLab on a run folder holding the five phase notebooks, parameterized for this run."""
    from rollbacklib.lab import prepare_lab, serve_lab

    try:
        prepared = prepare_lab(migration_id=migration, environment=env, config_path=str(config) if config else None,
                               reports_dir=str(reports_dir) if reports_dir else None, run_id=run_id,
                               backup=str(backup) if backup else None, dry_run=dry_run)
        for path in prepared.kept:
            out.print(f"kept as it was: {path}", markup=False)
        out.print(f"Run folder: {prepared.run_dir}\nOpen {prepared.notebooks[0].name} first and run its cells in "
                  "order; each section says what good looks like and what to do if a step does not pass.",
                  highlight=False)
        code = serve_lab(prepared, port=port, open_browser=not no_browser,
                         say=lambda line: out.print(line, markup=False, highlight=False))
    except RollbackError as error:
        _fail(error)
    raise typer.Exit(code)


def main() -> None:
    try:
        app()
    except RollbackError as error:  # pragma: no cover - commands catch their own
        err.print(str(error))
        sys.exit(error.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()

