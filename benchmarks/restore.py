"""How fast the runbook restores and how long production is down, against the ways around it (issue 13 item 6).

A script, not a test:

    .venv/bin/python benchmarks/restore.py --users 1000000 --rounds 3 --json restore.json
    .venv/bin/python benchmarks/restore.py --users 100000 1000000 3000000   # downtime against size

For each size it starts an embedded PostgreSQL server, stages the drill's scenario (the
migrations before the bad one, the generated data), takes the backup both ways (the
runbook's ``rollback backup``, a custom ``.dump`` with its manifest, and the seed plan's
``pg_dump | gzip``, a ``.sql.gz`` of the same state), applies the bad migration and the
writes after it, and keeps that incident as a template database. Then, round after round,
with the order of the methods turned by one each round so they share the machine's noise:

- ``seed``: the seed's ``gunzip -c FILE | psql`` into an empty database;
- ``pg_restore -j1`` and ``pg_restore -jN`` (N: what the runbook would use) of the ``.dump``;
- ``file_copy``: ``CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY`` of a restored
  database, the physical floor;
- ``runbook``: the runbook's restore step (``rollbacklib.postgres.restore``: the table count,
  the restore with its progress, ANALYZE) into an empty database, and ``runbook_sql_gz``, the
  same on the ``.sql.gz`` (psql in one transaction);
- ``rollback``: the whole runbook (``rollbacklib.pipeline.run_phases``, the gate approved) on
  a fresh copy of the incident with the drill's idle app session connected: ``downtime``
  from ``run.json`` (block-connections to the database answering through the app URL) and
  ``machinery``, the run's wall time less the time spent inside its steps (from the
  journal: ``run.json`` has no such figure).

It prints the min / median / max of each and the ratios of the medians; ``--json FILE``
writes them (the medians of the last size at the top, every size under ``sizes``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from rollbacklib.config import load_config
from rollbacklib.drill.app_session import start_app_session, stop_app_session
from rollbacklib.drill.embedded import start_server
from rollbacklib.drill.prisma_migrate import apply_migration
from rollbacklib.drill.scenario import generate_data, load_scenario, prepare_until, write_after_migration
from rollbacklib.journal import read_events
from rollbacklib.metrics import step_table
from rollbacklib.pipeline import run_phases
from rollbacklib.postgres.backup import take_backup
from rollbacklib.postgres.client import ClientTools, client_tools, libpq_env, with_database
from rollbacklib.postgres import restore as rs
from rollbacklib.resources import default_config

METHODS = ("seed", "pg_restore_j1", "pg_restore_jN", "file_copy", "runbook", "runbook_sql_gz", "rollback")
TEMPLATE = "bench_incident"  # the incident as staged: each whole rollback starts from a copy of it
FLOOR = "bench_restored"  # a restored database: FILE_COPY's source
SCRATCH = "bench_target"
RTO_BUDGET = 900.0  # the seed's 15 minutes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1_000_000], help="one size or several")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=0, help="pg_restore -j N (0: as the runbook chooses)")
    parser.add_argument("--drain-wait", type=float, default=30,
                        help="drain_wait_seconds of the whole rollback (default: production's 30)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--workdir", type=Path, help="where servers and files go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep each size's folder (backups, the runs' reports)")
    args = parser.parse_args(argv)

    results = []
    for users in args.users:
        folder = Path(tempfile.mkdtemp(prefix=f"bench-restore-{users}-", dir=args.workdir))
        try:
            results.append(bench_size(users, args, folder))
        finally:
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    if len(results) > 1:
        print("\nDowntime against size (medians)")
        print(f"{'users':>10} {'database':>10} {'downtime s':>11} {'RTO s':>8} {'runbook restore s':>18} "
              f"{'rollback s':>11}")
        for r in results:
            print(f"{r['users']:>10,} {r['database_bytes'] / 1e6:>8.0f}MB {r['downtime_seconds']:>11.2f} "
                  f"{r['rto_seconds']:>8.2f} {r['methods']['runbook']['median']:>18.2f} "
                  f"{r['methods']['rollback']['median']:>11.2f}")
    fit = rto_fit(results)
    if fit:
        print(f"\nRTO = {fit['fixed_seconds']:.1f} s + {fit['seconds_per_gb']:.1f} s/GB of database: the "
              f"{RTO_BUDGET:.0f} s budget is reached at about {fit['gb_at_rto_budget']:.1f} GB (a straight line "
              "through the medians; the restore and the copy's row hashes are what grows)")
    if args.json:
        top = {k: results[-1][k] for k in ("users", "runbook_restore_over_raw", "seed_over_runbook",
                                           "downtime_seconds", "machinery_seconds")}
        args.json.write_text(json.dumps({**top, "rto_fit": fit, "sizes": results}, indent=2) + "\n")
        print(f"\nwritten: {args.json}")
    return 0


def rto_fit(results: list[dict]) -> dict | None:
    """Least squares of the median RTO against the database's size: where a logical restore stops fitting."""
    points = [(r["database_bytes"] / 1e9, r["rto_seconds"]) for r in results if r["rto_seconds"] is not None]
    if len({x for x, _ in points}) < 2:
        return None
    mean_x, mean_y = statistics.fmean(x for x, _ in points), statistics.fmean(y for _, y in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    fixed = mean_y - slope * mean_x
    return {"fixed_seconds": fixed, "seconds_per_gb": slope,
            "gb_at_rto_budget": (RTO_BUDGET - fixed) / slope if slope > 0 else None}


# --- one size ----------------------------------------------------------------------------------

def bench_size(users: int, args, folder: Path) -> dict:
    say(f"== {users:,} users, {args.rounds} round(s), in {folder}")
    config_path = _config(folder, args.drain_wait)
    config = load_config(config_path)
    drill, tools = config.drill, client_tools("embedded")
    scenario = load_scenario(drill.scenario)
    server = start_server(folder / "pgdata", delete_on_stop=True)
    try:
        live_url = server.url(scenario.database)
        dump, sql_gz = _stage(server, scenario, drill.migration, users, folder, tools, config)
        jobs = args.jobs or rs.restore_jobs(live_url, None)[0]
        _admin(server, f'CREATE DATABASE "{FLOOR}"')
        rs.restore_into(dump, live_url, FLOOR, tools, jobs=jobs)
        database_bytes = _scalar(server, "SELECT pg_database_size(%s)", FLOOR)
        say(f"  .dump {dump.stat().st_size / 1e6:.1f} MB, .sql.gz {sql_gz.stat().st_size / 1e6:.1f} MB, "
            f"restored database {database_bytes / 1e6:.0f} MB; pg_restore -j{jobs}")
        runs = {
            "seed": lambda: _timed_into(server, lambda target: _shell(
                f"gunzip -c {shlex.quote(str(sql_gz))} | {shlex.quote(tools.path('psql'))} -X -q "
                f"-v ON_ERROR_STOP=1 --dbname={target}", server.url())),
            "pg_restore_j1": lambda: _timed_into(server, lambda target: _pg_restore(tools, dump, target, 1, server)),
            "pg_restore_jN": lambda: _timed_into(server, lambda target: _pg_restore(tools, dump, target, jobs, server)),
            "file_copy": lambda: _file_copy(server),
            "runbook": lambda: _timed_into(server, lambda t: analyzed.append(_runbook_restore(dump, server, t, tools,
                                                                                            jobs))),
            "runbook_sql_gz": lambda: _timed_into(server, lambda t: _runbook_restore(sql_gz, server, t, tools, jobs)),
            "rollback": None,
        }
        samples: dict[str, list[float]] = {m: [] for m in METHODS}
        analyzed = samples["runbook_analyze"] = []  # the ANALYZE within each "runbook" sample
        rollbacks = []
        for round_no in range(args.rounds):
            order = METHODS[round_no % len(METHODS):] + METHODS[:round_no % len(METHODS)]
            for method in order:
                if method == "rollback":
                    run = _rollback(server, scenario, drill, config_path, dump, folder, f"bench-{users}-{round_no}")
                    rollbacks.append(run)
                    samples[method].append(run["wall_seconds"])
                else:
                    samples[method].append(runs[method]())
                extra = (f" (downtime {rollbacks[-1]['downtime_seconds']} s, machinery "
                         f"{rollbacks[-1]['machinery_seconds']} s)" if method == "rollback" else "")
                say(f"  round {round_no + 1}: {method:<15} {samples[method][-1]:8.2f} s{extra}")
    finally:
        server.stop()
    return _figures(users, dump, sql_gz, database_bytes, jobs, samples, rollbacks)


def _figures(users, dump, sql_gz, database_bytes, jobs, samples, rollbacks) -> dict:
    methods = {m: {"min": min(v), "median": statistics.median(v), "max": max(v), "samples": v}
               for m, v in samples.items() if v}
    med = {m: s["median"] for m, s in methods.items()}
    downtime = _median([r["downtime_seconds"] for r in rollbacks])
    machinery = _median([r["machinery_seconds"] for r in rollbacks])
    figures = {
        "users": users, "jobs": jobs, "dump_bytes": dump.stat().st_size, "sql_gz_bytes": sql_gz.stat().st_size,
        "database_bytes": database_bytes, "methods": methods,
        # the restore step alone (restore_copy); its ANALYZE is the next step (analyze-copy), timed apart
        "runbook_restore_over_raw": (med["runbook"] - med["runbook_analyze"]) / med["pg_restore_jN"],
        "runbook_restore_and_analyze_over_raw": med["runbook"] / med["pg_restore_jN"],
        # the same ratios round by round (the methods of a round share the machine's noise), then their median
        "runbook_restore_over_raw_paired": _median([(r - a) / j for r, a, j in zip(
            samples["runbook"], samples["runbook_analyze"], samples["pg_restore_jN"])]),
        "seed_over_runbook_paired": _median([s / (r - a) for s, r, a in zip(
            samples["seed"], samples["runbook"], samples["runbook_analyze"])]),
        # like for like: neither the seed's psql nor raw pg_restore analyzes; with the analyze-copy step, below
        "seed_over_runbook": med["seed"] / (med["runbook"] - med["runbook_analyze"]),
        "seed_over_runbook_and_analyze": med["seed"] / med["runbook"],
        "j1_over_jN": med["pg_restore_j1"] / med["pg_restore_jN"],
        "runbook_over_file_copy": med["runbook"] / med["file_copy"],
        "runbook_sql_gz_over_seed": med["runbook_sql_gz"] / med["seed"],
        "downtime_seconds": downtime, "machinery_seconds": machinery,
        "rto_seconds": _median([r["rto_seconds"] for r in rollbacks]),
        "machinery_from": "wall time of run_phases (the report's rendering included) less the sum of its steps' times "
                          "from the journal; run.json's own machinery_seconds stops before the report",
        "restore_mb_per_second": database_bytes / 1e6 / med["runbook"],
        "rollbacks": rollbacks,
    }
    _print(figures)
    return figures


def _print(f: dict) -> None:
    print(f"\n{f['users']:,} users: database {f['database_bytes'] / 1e6:.0f} MB, .dump {f['dump_bytes'] / 1e6:.1f} MB,"
          f" .sql.gz {f['sql_gz_bytes'] / 1e6:.1f} MB, -j{f['jobs']}")
    print(f"{'method':<16} {'min s':>8} {'median s':>9} {'max s':>8}")
    for name, s in f["methods"].items():
        print(f"{name:<16} {s['min']:>8.2f} {s['median']:>9.2f} {s['max']:>8.2f}")
    print(f"runbook restore step / raw pg_restore -j{f['jobs']}: {f['runbook_restore_over_raw']:.3f} "
          f"({f['runbook_restore_and_analyze_over_raw']:.3f} with the analyze-copy step)   "
          f"seed / runbook restore step: {f['seed_over_runbook']:.2f} ({f['seed_over_runbook_and_analyze']:.2f} with "
          f"analyze-copy)   paired by round: {f['runbook_restore_over_raw_paired']:.3f} and "
          f"{f['seed_over_runbook_paired']:.2f}   -j1 / -j{f['jobs']}: {f['j1_over_jN']:.2f}   "
          f"runbook / FILE_COPY: {f['runbook_over_file_copy']:.1f}   runbook .sql.gz / seed: "
          f"{f['runbook_sql_gz_over_seed']:.2f}")
    print(f"downtime {f['downtime_seconds']} s, machinery {f['machinery_seconds']} s, RTO {f['rto_seconds']} s "
          "(medians of the whole rollbacks), "
          f"restore {f['restore_mb_per_second']:.1f} MB/s of database")


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


# --- staging -----------------------------------------------------------------------------------

def _config(folder: Path, drain_wait: float) -> Path:
    """The packaged config, its relative paths made absolute, the drill's drain_wait_seconds set (production's 30 by default)."""
    source = default_config()
    text = source.read_text()
    for old in ('scenario = "scenarios/', 'migrations_dir = "scenarios/'):
        assert old in text, old
        text = text.replace(old, old.replace('"scenarios/', f'"{source.parent}/scenarios/'))
    header = "[environments.drill.thresholds]\n"
    assert header in text and "drain_wait_seconds" not in text.split(header, 1)[1].split("[", 1)[0]
    text = text.replace(header, f"{header}drain_wait_seconds = {drain_wait}\n")
    path = folder / "runbook.toml"
    path.write_text(text)
    return path


def _stage(server, scenario, migration: str, users: int, folder: Path, tools, config) -> tuple[Path, Path]:
    """The incident, staged as the drill stages it, with the backup taken both ways of the same state."""
    _admin(server, f'CREATE DATABASE "{scenario.database}"')
    url = server.url(scenario.database)
    started = time.monotonic()
    with psycopg.connect(url) as conn:
        prepare_until(conn, scenario, migration)
        generate_data(conn, scenario, users)
    say(f"  data generated in {time.monotonic() - started:.0f} s")
    dump = take_backup(url, folder / "backups", tools, probes=config.all_queries())
    sql_gz = folder / "backups" / f"backup_prod_pre_migration_{users}.sql.gz"
    _shell(f"{shlex.quote(tools.path('pg_dump'))} --dbname={scenario.database} | gzip > {shlex.quote(str(sql_gz))}",
           url)
    with psycopg.connect(url) as conn:
        apply_migration(conn, scenario.migrations_dir, migration)
        write_after_migration(conn, scenario)
    _admin(server, f'CREATE DATABASE "{TEMPLATE}" TEMPLATE "{scenario.database}" STRATEGY FILE_COPY')
    return dump, sql_gz


# --- the methods -------------------------------------------------------------------------------

def _timed_into(server, restore) -> float:
    """Seconds ``restore(target)`` takes into a new empty database (created and dropped outside the time)."""
    with _scratch(server) as target:
        started = time.monotonic()
        restore(target)
        return time.monotonic() - started


@contextmanager
def _scratch(server):
    _admin(server, f'DROP DATABASE IF EXISTS "{SCRATCH}"')
    _admin(server, f'CREATE DATABASE "{SCRATCH}"')
    try:
        yield SCRATCH
    finally:
        _admin(server, f'DROP DATABASE IF EXISTS "{SCRATCH}"')


def _pg_restore(tools, dump: Path, target: str, jobs: int, server) -> None:
    _run([tools.path("pg_restore"), "--exit-on-error", f"--jobs={jobs}", f"--dbname={target}", str(dump)], server.url())


def _runbook_restore(backup: Path, server, target: str, tools, jobs: int) -> float:
    """What the restore and analyze-copy steps do (``restored_copy._restore``, ``_analyze``), without a run around
    them; returns the seconds of the analyze."""
    listing = rs.list_command(backup, tools)
    tables = rs.tables_to_restore(listing) if listing else None
    rs.run_restore(rs.restore_command(backup, target, tools, True, jobs), backup, server.url(target),
                   total_tables=tables, on_progress=lambda _progress: None)
    started = time.monotonic()
    ClientTools.run_argv(rs.analyze_command(target, tools, jobs), url=server.url(target), step="analyze-copy")
    return time.monotonic() - started


def _file_copy(server) -> float:
    _admin(server, f'DROP DATABASE IF EXISTS "{SCRATCH}"')
    started = time.monotonic()
    _admin(server, f'CREATE DATABASE "{SCRATCH}" TEMPLATE "{FLOOR}" STRATEGY FILE_COPY')
    seconds = time.monotonic() - started
    _admin(server, f'DROP DATABASE "{SCRATCH}"')
    return seconds


def _rollback(server, scenario, drill, config_path: Path, dump: Path, folder: Path, run_id: str) -> dict:
    """The whole runbook on a fresh copy of the incident, an idle app session connected, the gate approved."""
    live = scenario.database
    with psycopg.connect(server.url(), autocommit=True) as admin:
        leftovers = [r[0] for r in admin.execute(
            "SELECT datname FROM pg_database WHERE datname = %s OR datname LIKE %s", (live, f"{live}\\_\\_%"))]
        for name in leftovers:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
            sql.Identifier(live), sql.Identifier(TEMPLATE)))
    url = server.url(live)
    app_pid = start_app_session(url, folder)
    env = load_config(config_path).environment(drill.environment)
    os.environ[env.database_url_env] = url
    try:
        started = time.monotonic()
        result = run_phases(migration_id=drill.migration, environment=drill.environment, config_path=str(config_path),
                            reports_dir=str(folder / "reports"), run_id=run_id, approve=drill.migration,
                            backup=str(dump))
        wall = time.monotonic() - started
    finally:
        stop_app_session(app_pid, folder)
    summary = result.summary
    if summary["status"] != "succeeded":
        raise SystemExit(f"the rollback {run_id} ended {summary['status']}: {summary.get('error')}")
    in_steps = sum(s["seconds"] or 0 for s in step_table(read_events(result.run_dir)))
    return {"run_id": run_id, "wall_seconds": round(wall, 3), "downtime_seconds": summary.get("downtime_seconds"),
            "rto_seconds": summary.get("rto_seconds"), "steps_seconds": round(in_steps, 3),
            "machinery_seconds": round(wall - in_steps, 3),
            "machinery_in_run_json": summary.get("machinery_seconds"), "run_dir": str(result.run_dir)}


# --- plumbing ----------------------------------------------------------------------------------

def _admin(server, statement: str) -> None:
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(statement)


def _scalar(server, query: str, *params):
    with psycopg.connect(server.url(), autocommit=True) as admin:
        return admin.execute(query, params).fetchone()[0]


def _run(cmd: list[str], url: str) -> None:
    proc = subprocess.run(cmd, env=libpq_env(url), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} exited with {proc.returncode}: {proc.stderr[-2000:]}")


def _shell(script: str, url: str) -> None:
    _run(["bash", "-o", "pipefail", "-c", script], with_database(url, "postgres"))


def say(text: str) -> None:
    print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
