"""The faults ``rollback drill --fault NAME`` can inject: what each does, the exit it expects, how it is staged.

Every ``inject`` function gets a ``FaultDrill`` (``rollbacklib.drill.faults``) holding the staged
incident, plays the fault and the operator's response (a resume, the way back, a second
approval), and returns the exit code the runbook ended with. Some add checks of their own
(``judge``) to those of their outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import psycopg

from rollbacklib.drill.injection import (Pool, PromptingKernel, Trigger, exclusive_lock, frozen, kill_kernel,
                                         refused_by_hba, restart_server, run_way_back, stop_server_now, swap_plan,
                                         tiny_volume, wait_gone)
from rollbacklib.drill import service_faults
from rollbacklib.drill import notify_down
from rollbacklib.errors import ConfigError
from rollbacklib.steps import Phase, StepName

# Each fault acts on a ``rollbacklib.drill.faults.FaultDrill`` (the staged incident and its run). The annotations
# name it through this alias, not an import, so that the catalog stays below the module that runs it.
FaultDrill = Any


@dataclass(frozen=True)
class Fault:
    name: str
    exit_code: int
    injects: str  # what is done, for real
    responds: str  # what the runbook must do
    operator: str  # what the operator sees and does next
    inject: Callable[["FaultDrill"], int]
    outcome: str = "rolled-back"  # rolled-back | unchanged | original-serves | swapped-not-serving
    judge: Callable[["FaultDrill", int], None] | None = None
    services: bool = False  # the drill's services run: the test user gets its password before the backup


def _kill_at(step: str, *statuses: str, phase: str = "") -> Callable[["FaultDrill"], int]:
    return lambda drill: drill.kill_then_resume(Trigger(step, statuses, phase))


# pg_restore in flight; should it come and go between two looks, the instant after it ("restored into ...").
_IN_RESTORE = Trigger(StepName.RESTORE, ("info",), program="pg_restore")


def _kernel_death(drill: "FaultDrill") -> int:
    """The kernel dies while its pg_restore runs; the orphaned pg_restore goes on to its end, as it would."""
    left = {}

    def strike(command, hit):
        with frozen(hit) as process:
            kill_kernel(command, hit)
            left["pg_restore"] = process

    command, _ = drill.strike(_IN_RESTORE, strike)
    code = command.wait()
    wait_gone(left.get("pg_restore"))
    drill.say(f"  the run ended with exit {code}; the orphaned pg_restore has ended on its own")
    return drill.resume()


def _server_stop(drill: "FaultDrill") -> int:
    server = drill.staged.server

    def strike(_command, hit):
        with frozen(hit):  # pg_restore in flight: the server stops under it
            stop_server_now(server)

    command, _ = drill.strike(_IN_RESTORE, strike)
    code = command.wait()
    drill.say(f"  the run ended with exit {code}; starting the server again (pg_ctl start) and the app session")
    restart_server(server)
    drill.restart_app_session()
    return drill.resume()


_APP_WRITES = {  # what the app writes once the original serves again, per scenario (schema after the migration)
    "auth-platform": """INSERT INTO "users" ("id", "email", "name", "authorizerId", "createdAt", "updatedAt")
        SELECT 'user_wayback_' || lpad(g::text, 4, '0'), 'wayback-' || g || '@example.com', 'Way Back',
               'auth0|wayback-' || g, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC' FROM generate_series(1, 25) g""",
}


def _way_back_then_resume(drill: "FaultDrill") -> int:
    from rollbacklib.summary import write_summary

    command, _ = drill.strike(Trigger(StepName.SWAP_KEEP, ("ok",)))
    command.wait()
    statements = write_summary(drill.run_dir).get("way_back") or []
    drill.say("  the way back (run.json): " + (" ".join(s.rstrip(";") + ";" for s in statements) or "none given"))
    if drill.verdict.check(bool(statements), "a way back is given after the live database was renamed away"):
        proc = run_way_back(statements, drill.admin_url)
        drill.verdict.check(proc.returncode == 0, "the way back ran to its end under psql ON_ERROR_STOP"
                            + ("" if proc.returncode == 0 else f": {proc.stderr.strip()}"))
    try:
        scenario = _scenario_name(drill)
        with psycopg.connect(drill.url, autocommit=True, application_name="api-gateway") as conn:
            conn.execute(_APP_WRITES.get(scenario) or "CREATE TABLE drill_writes AS SELECT generate_series(1, 25) AS n")
        drill.say("  the app wrote 25 rows to the original while it served again")
    except psycopg.Error as err:
        drill.verdict.check(False, f"the original serves again after the way back: {str(err).strip().splitlines()[0]}")
    drill.take_reference()
    return drill.resume()


def _scenario_name(drill: "FaultDrill") -> str:
    from rollbacklib.config import load_config
    from rollbacklib.drill.scenario import load_scenario

    return load_scenario(load_config(drill.config_path).drill.scenario).name


def _phases(drill: "FaultDrill", *phases: str, approve: str = "") -> int:
    from rollbacklib.pipeline import run_phases

    s = drill.staged
    result = run_phases(migration_id=s.migration, environment=s.environment, config_path=str(drill.config_path),
                        reports_dir=str(drill.reports), run_id=drill.run_id, backup=str(s.backup), approve=approve,
                        phases=phases)
    done = {p["name"]: p["status"] for p in result.summary["phases"]}
    drill.say("  " + ", ".join(f"{phase} {done.get(phase, 'not run')}" for phase in phases)
              + (f" ({result.summary['error']['step']}: {result.summary['error']['message']})"
                 if result.summary.get("error") else ""))
    return result.exit_code


def _gate_typo_then_approve(drill: "FaultDrill") -> int:
    """Phase 02 cell by cell in one kernel, as in JupyterLab: a wrong ID typed at the gate, then the right one."""
    import nbformat

    from rollbacklib.pipeline import notebooks_dir

    s = drill.staged
    _phases(drill, Phase.PREPARE)
    parameters = {"migration_id": s.migration, "environment": s.environment, "config_path": str(drill.config_path),
                  "run_id": drill.run_id, "reports_dir": str(drill.reports), "dry_run": False, "approve": "",
                  "backup": str(s.backup)}
    nb = nbformat.read(notebooks_dir() / f"{Phase.EXECUTE}.ipynb", as_version=4)
    typo = s.migration[:-1]
    drill.say(f"  02_execute cell by cell in one kernel; at the gate's prompt {typo!r} is typed")
    with PromptingKernel(drill.run_dir) as kernel:
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            source = cell.source
            if "parameters" in cell.metadata.get("tags", []):
                source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
            gate = "approve_swap" in source
            errors = kernel.run(source, typo if gate else "")
            for ename, evalue in errors:
                drill.say(f"    cell {index}: {ename}: {evalue.splitlines()[0] if evalue else ''}")
            if gate and errors:
                drill.say(f"  the gate cell run again; {s.migration!r} typed at its prompt")
                for ename, evalue in kernel.run(source, s.migration):
                    drill.say(f"    cell {index}: {ename}: {evalue.splitlines()[0] if evalue else ''}")
    return drill.resume()


def _rerun_execute_after_refusal(drill: "FaultDrill") -> int:
    refused = drill.run()  # no terminal, no --yes: the gate refuses
    drill.verdict.check(refused == 4, f"the first run was refused at the gate (exit {refused}, expected 4)")
    return drill.resume("--yes")  # 02 again, approved this time, then 03 to 05


def _superuser_pool(drill: "FaultDrill") -> int:
    with Pool(drill.url, name="superuser-pool") as pool:
        code = drill.run("--yes")
    drill.evidence["pool"] = pool
    return code


def _judge_superuser_pool(drill: "FaultDrill", _code: int) -> None:
    from datetime import datetime

    from rollbacklib.journal import read_events

    with psycopg.connect(drill.admin_url) as admin:
        row = admin.execute("SELECT oid FROM pg_database WHERE datname = %s", (drill.database,)).fetchone()
    reopened = [datetime.fromisoformat(e["ts"]) for e in read_events(drill.run_dir)
                if e["step"] == StepName.REOPEN and e["status"] == "changed"]
    if row is None or not reopened:
        drill.verdict.check(False, "the restored database was reopened (no reopen in the journal)")
        return
    early = [at for oid, at in drill.evidence['pool'].seen if oid == row[0] and at < min(reopened)]
    drill.verdict.check(not early, "the superuser pool never reached the restored database before it was reopened"
                        + (f": it did at {early[0].isoformat()}" if early else ""))
    drill.verdict.notes.append(f"the pool connected {len(drill.evidence['pool'].seen)} time(s), "
                               f"{sum(1 for oid, _ in drill.evidence['pool'].seen if oid == row[0])} of them to the restored database")


def _idle_pool(drill: "FaultDrill") -> int:
    with Pool(drill.url, name="idle-pool", size=5, idle=True):
        return drill.run("--yes")


def _judge_idle_pool(drill: "FaultDrill", _code: int) -> None:
    import json

    path = drill.run_dir / "terminated_sessions.json"
    ended = json.loads(path.read_text()) if path.exists() else []
    pool = [s for s in ended if s.get("application_name") == "idle-pool"]
    drill.verdict.check(bool(pool), f"terminate ended the idle pool's sessions ({len(pool)} in {path.name})")
    from rollbacklib.journal import read_events

    drained = [e["evidence"] for e in read_events(drill.run_dir) if e["step"] == StepName.DRAIN
               and e["status"] == "info" and "idle" in e["evidence"]]
    waited_for = [s for d in drained for s in d["active"] if s.get("application_name") == "idle-pool"]
    drill.verdict.check(bool(drained) and not waited_for, "drain did not wait for the idle pool (its sessions "
                        "listed as idle, none as active)")


def _exclusive_lock(drill: "FaultDrill") -> int:
    table = next(name for name in drill.before.tables if not name.endswith("._prisma_migrations")).split(".", 1)[1]
    with exclusive_lock(drill.url, table) as pid:
        drill.say(f"  ACCESS EXCLUSIVE on {table} held by pid {pid}, idle in its transaction")
        drill.evidence["lock_pid"] = pid
        return drill.run("--yes")


def _judge_names_pid(drill: "FaultDrill", _code: int) -> None:
    pid = drill.evidence["lock_pid"]
    drill.verdict.check(f"pid {pid}" in drill.last_output, f"the message names the session it waited on (pid {pid})")


def _second_run(drill: "FaultDrill") -> int:
    from rollbacklib.config import load_config
    from rollbacklib.postgres.locks import database_lock

    s = drill.staged
    config = drill.derived_config("runbook-second-name.toml", f'\n[environments.{s.environment}_too]\n'
                                  f'database_url_env = "{s.database_url_env}"\nbackup_dir = "backups/second"\n'
                                  f'[environments.{s.environment}_too.thresholds]\nmin_backup_bytes = 1024\n')
    with database_lock(load_config(drill.config_path).environment(s.environment), "first-run"):
        drill.say(f"  run 'first-run' holds {drill.database}; a second run starts under environment {s.environment}_too")
        command = drill.command(drill.run_args("--yes", config=config, environment=f"{s.environment}_too",
                                               reports=drill.reports / "second-name"))
        code = command.run()
    drill.verdict.check("run=first-run" in command.output, "the refusal names the run that holds the database")
    return code


def _percent_password(drill: "FaultDrill") -> int:
    import os

    secret = "drill%zz#secret"  # a '%' that is no escape (kept as written, as Prisma does) and a '#' not written %23
    url = drill.url.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@", 1)
    env = {**os.environ, drill.staged.database_url_env: url}
    command = drill.command(drill.run_args("--yes"), env)
    code = command.run()
    leaked = [p for p in (secret, "#secret") if p in command.output]
    drill.verdict.check(not leaked, "the password is not in the output" + (f": {leaked[0]!r} printed" if leaked else ""))
    return code


def _disk_full_backup(drill: "FaultDrill") -> int:
    volume = drill.staged.folder / "tiny-volume"
    with tiny_volume(volume, 8192):
        config = drill.derived_config("runbook-tiny-disk.toml", replace=('backup_dir = "backups/drill"',
                                                                         f'backup_dir = "{volume}"'))
        drill.say(f"$ rollback backup --env {drill.staged.environment} (backup_dir on an 8 KiB tmpfs)")
        command = drill.command(["backup", "--env", drill.staged.environment, "--config", str(config)])
        code = command.run()
        left = sorted(p.name for p in volume.iterdir())
    drill.verdict.check(not left, "the full disk holds no partial file" + (f": {left}" if left else ""))
    drill.verdict.check("No space left" in command.output, "the message says the disk is full")
    return code


def _migration_failed(drill: "FaultDrill") -> int:
    """Re-stage the incident with a bad migration that fails half-way (Prisma's P3009: finished_at empty)."""
    import shutil

    from rollbacklib.config import load_config
    from rollbacklib.drill import stage_incident
    from rollbacklib.drill.app_session import stop_app_session
    from rollbacklib.drill.scenario import load_scenario
    from rollbacklib.errors import FailedError
    from rollbacklib.postgres.client import client_tools

    s = drill.staged
    config = load_config(drill.config_path)
    scenario_dir = s.folder / "scenario-failing"
    shutil.copytree(load_scenario(config.drill.scenario).root, scenario_dir)
    sql_file = scenario_dir / "prisma" / "migrations" / s.migration / "migration.sql"
    sql_file.write_text(sql_file.read_text() + "\nSELECT 1 / 0;\n")  # fails as a whole: the schema is unchanged
    stop_app_session(s.app_pid, s.folder)
    with psycopg.connect(drill.admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{drill.database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{drill.database}"')
    drill.say(f"  staged again: {s.migration} fails (SELECT 1 / 0 at its end), leaving the schema unchanged")
    try:
        stage_incident(drill.url, load_scenario(scenario_dir), s.migration, users=drill.users,
                       backup_dir=s.backup.parent, tools=client_tools("embedded"), probes=config.all_queries(),
                       say=lambda line: drill.say("  " + line))
    except FailedError as err:
        drill.say(f"  prisma migrate deploy failed as intended: {err.message.splitlines()[0]}")
    else:
        raise ConfigError("The failing migration applied without error.", next_action="check the scenario copy",
                          step="fault")
    s.backup = max(s.backup.parent.glob("*.dump"), key=lambda p: p.stat().st_mtime)
    with psycopg.connect(drill.url, autocommit=True) as conn:
        conn.execute(_WRITE_AFTER_THE_BACKUP)
    drill.restart_app_session()
    drill.take_reference()
    return drill.run("--yes", "--strategy", "swap")  # swap asked for: refused (resolve-only is what applies)


# A write made after the backup, on the pre-migration schema, that a restore would lose.
_WRITE_AFTER_THE_BACKUP = "UPDATE users SET email = 'changed-after-the-backup@example.com' WHERE id = (SELECT min(id) FROM users)"


def _plan_swapped(drill: "FaultDrill") -> int:
    command, _ = drill.strike(Trigger(StepName.GATE, ("info",), phase=Phase.EXECUTE))
    command.wait()
    statement = f'DROP DATABASE "{drill.database}" WITH (FORCE)'
    digest = swap_plan(drill.run_dir, StepName.SWAP_KEEP, statement)
    drill.say(f"  plan.json edited after the approval: {StepName.SWAP_KEEP} now runs {statement}; "
              f"plan.json and state.json digests set to {digest[:12]}")
    return drill.resume()


def _health_never_passes(drill: "FaultDrill") -> int:
    with refused_by_hba(drill.staged.server, drill.admin_url, drill.database) as refuse:
        command, _ = drill.strike(Trigger(StepName.SWAP_PROMOTE, ("ok",)),
                                  lambda _command, _hit: refuse())
        drill.say(f"  pg_hba.conf now rejects every connection to {drill.database}")
        code = command.wait()
    return code


def _judge_health(drill: "FaultDrill", _code: int) -> None:
    drill.verdict.check(f"/ {StepName.HEALTH}:" in drill.last_output, "the failure names the health step")
    drill.verdict.check("the way back" in drill.last_output.lower() and "ON_ERROR_STOP=1" in drill.last_output,
                        "the way back to the original is printed, as one psql command that stops at the first error")


_K = "SIGKILL of the runner and its kernel"
_RESUME = "Run `rollback resume <run folder>` (printed): it finishes the rollback."

FAULTS: dict[str, Fault] = {f.name: f for f in [
    Fault("kill-after-gate", 0, f"{_K} right after the gate approved the plan (copy restored, validated, closed).",
          "Resume skips what holds, blocks, swaps, validates and reopens.", _RESUME,
          _kill_at(StepName.GATE, "ok", phase=Phase.EXECUTE)),
    Fault("kill-after-block", 0, f"{_K} once the live database refuses new connections.",
          "Resume finds the live database blocked and finishes the swap.", _RESUME, _kill_at(StepName.BLOCK, "changed")),
    Fault("kill-between-renames", 0, f"{_K} after the live database was renamed away, before the copy took its name.",
          "Resume finds the live name missing and the validated copy closed, and promotes it.", _RESUME,
          _kill_at(StepName.SWAP_KEEP, "changed")),
    Fault("kill-in-promote", 0, f"{_K} between the promote's rename and its state update.",
          "Resume finds the copy under the live name, closed, and reopens it.", _RESUME,
          _kill_at(StepName.SWAP_PROMOTE, "changed")),
    Fault("kill-in-close-copy", 0, f"{_K} while the restored copy is being closed.",
          "Resume closes the copy and goes on, in one attempt.", _RESUME,
          _kill_at(StepName.CLOSE_COPY, "changed", "ran")),
    Fault("kernel-death-mid-restore", 0, "SIGKILL of the phase 02 kernel alone while its pg_restore runs (held "
          "still for the instant); the orphaned pg_restore then runs to its end.",
          "The runner journals the dead kernel (exit 3); resume judges the copy from what it holds (a restore the "
          "journal never confirmed) and goes on in one attempt.", _RESUME,
          _kernel_death),
    Fault("server-stop-mid-restore", 0, "pg_ctl stop of the server while pg_restore runs (held still for the "
          "instant); then pg_ctl start.",
          "The run aborts (exit 3) naming the server; resume restores into a clean copy and goes on.",
          "Start the server, then run `rollback resume <run folder>`.", _server_stop),
    Fault("way-back-then-resume", 0, f"{_K} after the swap-keep rename; the way back run literally (psql "
          "ON_ERROR_STOP); the app writes 25 rows to the original; then resume.",
          "Resume sees the original serving again and rolls back from there; the 25 rows are kept and counted as lost.",
          "Run the way back printed, then `rollback resume` when ready.", _way_back_then_resume),
    Fault("gate-typo-then-approve", 0, "02_execute cell by cell in one kernel, as in JupyterLab: a wrong migration "
          "ID typed at the gate's prompt, the gate cell run again with the right one, the later cells; then resume.",
          "The typo changes nothing (the validated copy stays closed and ready); the right ID approves and the "
          "phase goes on; nothing unvalidated goes live.", "Read the gate's message; run 02 again from the top (or resume).", _gate_typo_then_approve),
    Fault("rerun-execute-after-refusal", 0, "`rollback run` refused at the gate (no terminal, no --yes); then "
          "`rollback resume --yes` runs 02 again.", "The re-run restores a fresh copy and finishes.",
          "Approve with --yes (or type the ID) and resume.", _rerun_execute_after_refusal),
    Fault("superuser-pool", 0, "A superuser client connects to the live name again and again during the whole run.",
          "No session reaches the restored copy before reopen-connections opens it.", "Nothing: the run succeeds.",
          _superuser_pool, judge=_judge_superuser_pool),
    Fault("idle-pool", 0, "Five idle sessions that reconnect whenever they are cut.",
          "Drain does not wait for idle sessions; terminate ends them at once (kept in terminated_sessions.json), the swap goes on.",
          "Nothing: the run succeeds.", _idle_pool, judge=_judge_idle_pool),
    Fault("exclusive-lock", 3, "A session holds ACCESS EXCLUSIVE on a table, idle in its transaction.",
          "Phase 01's capture times out (lock_timeout) and aborts, naming the pid it waited on.",
          "End or wait for the named session, then run again.", _exclusive_lock, outcome="unchanged",
          judge=_judge_names_pid),
    Fault("second-run-same-database", 4, "A run holds the database's advisory lock; a second run starts under "
          "another environment name and reports folder.", "Refused before anything runs, naming the holder.",
          "Wait for the named run (or resume it); never run two.", _second_run, outcome="unchanged"),
    Fault("percent-password", 2, "The URL's password is badly percent-encoded: a '%' that is no escape and a '#' "
          "not written %23 (which would end the URL).",
          "Refused as bad config before anything runs; the password is never printed.",
          "Percent-encode the password in the variable (e.g. % as %25) and run again.", _percent_password,
          outcome="unchanged"),
    Fault("disk-full-backup", 3, "`rollback backup` into a backup_dir on an 8 KiB tmpfs.",
          "The backup fails, its partial files are removed, it says the disk is full.",
          "Free space or point backup_dir elsewhere, then take the backup again.", _disk_full_backup,
          outcome="unchanged"),
    Fault("migration-failed", 3, "The bad migration fails as a whole (P3009: finished_at empty, schema unchanged); "
          "the run asks for --strategy swap.",
          "Refuses swap before any change (step strategy): a restore would only lose writes; it names resolve-only.",
          "Run again with --strategy resolve-only (or none: it is the recommended one); fix the data, deploy again.",
          _migration_failed,
          outcome="unchanged"),
    Fault("plan-swapped", 4, f"{_K} after the approval; plan.json's swap-keep-live becomes DROP DATABASE, its digests "
          "in plan.json and state.json recomputed; then resume.",
          "The approval in the journal does not match: every destructive step refuses (exit 4).",
          "Treat the run folder as tampered: start a new run from 01.", _plan_swapped, outcome="original-serves"),
    Fault("db-health-never-passes", 5, "pg_hba.conf rejects the live name right after the promote: health cannot "
          "connect through the application's URL.", "Health fails after its retries (exit 5), naming the health step; "
          "the validated copy keeps the live name and the original stays kept.",
          "The app cannot connect: fix its access (pg_hba, role, password); the attempts are in the journal.",
          _health_never_passes,
          outcome="swapped-not-serving", judge=_judge_health),
    Fault("health-never-passes", 5, "The drill's services run (as with --services); the run's environment gives the "
          "api-gateway a database URL naming a database that does not exist, so the gateway phase 04 starts again "
          "listens but its /health answers 503 every time.",
          "start-services waits for the gateway's health with its retries, fails with the seed's escalation (L1) "
          "naming it, and starts no other service; the database's rollback stands (exit 5).",
          "Read the gateway's logs, fix its configuration (its database URL), then `rollback resume <run folder>`: "
          "start-services starts the rest in order.",
          service_faults.health_never_passes, judge=service_faults.judge_health_never_passes),
    Fault("way-back-with-services", 0, f"The drill's services run (as with --services); {_K} after the swap-keep "
          "rename, the services down; `rollback services-back` tried first; the database's way back run literally "
          "(psql ON_ERROR_STOP); `rollback services-back`; then resume.",
          "run.json lists the services the run stopped (services_way_back); services-back refuses while the live "
          "database refuses connections, then brings each back, read back from the platform: login answers 500 "
          "again (the incident, on the original); resume then rolls back for good: login 200.",
          "Run the database's way back, then `rollback services-back <run folder>`, then `rollback resume` when "
          "ready.", service_faults.way_back_with_services, services=True),
    Fault("notify-down", 0, "Every notification endpoint down on 127.0.0.1: the Slack webhook (also the escalation "
          "channel) answers HTTP 500, the status page accepts the connection and never answers.",
          "Each send is retried a bounded few seconds, journaled, then reported; the rollback completes as usual.",
          "Nothing for the rollback: tell people by hand (the report and the terminal name each failed notification).",
          notify_down.inject, judge=notify_down.judge),
]}


def get_fault(name: str) -> Fault:
    if name not in FAULTS:
        raise ConfigError(f"Unknown fault {name!r}.", next_action="run `rollback drill --fault list` for the faults "
                          "and the exit code each expects.", step="fault")
    return FAULTS[name]
