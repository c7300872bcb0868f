"""How much of in-place's outage window does ``validate-in-place`` take, now that it reads one side only?

A script, not a test:

    .venv/bin/python benchmarks/in_place_window.py --users 20000 --rounds 5 --json in_place_window.json

On one embedded PostgreSQL server it stages the drill's incident with ``--users`` users (the
backup, the bad migration, the writes after it), runs phase 01 with ``--strategy in-place`` (the
safety copy planned), approves the plan and runs the window through the dispatcher up to
``validate-in-place``, exactly as a run does. The live database is then restored and blocked,
the safety copy closed, and nothing writes: round after round, in turns, on that same state:

- ``now``: validate-in-place's executor as it is (the checks against the manifest, then the
  restored database's rows hashed by key into ``copy_rows/``; the safety copy is not opened);
- ``before``: what it did before (the same checks, then ``rowdiff.diff_databases`` of the safety
  copy against the restored database, both read whole through private connections);
- ``compare``: what moved out of the window, ``compare-rows``' comparison of the safety copy
  against those hashes (it runs after ``health``; timed here for the whole picture).

It prints the min / median / max of each, the ratio of the medians and the median of the
round-by-round ratios (now / before); ``--json FILE`` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rollbacklib.dispatch import private_actions, private_session  # noqa: E402
from rollbacklib.drill import stage_incident  # noqa: E402
from rollbacklib.drill.embedded import start_server  # noqa: E402
from rollbacklib.drill.scenario import load_scenario  # noqa: E402
from rollbacklib.phases import in_place as steps  # noqa: E402
from rollbacklib.pipeline import run_phases  # noqa: E402
from rollbacklib.postgres import backup as bk  # noqa: E402
from rollbacklib.postgres import rowdiff  # noqa: E402
from rollbacklib.postgres.client import client_tools  # noqa: E402
from rollbacklib.prisma import applied_migrations  # noqa: E402
from rollbacklib.resources import scenarios_dir  # noqa: E402
from rollbacklib.run import open_run  # noqa: E402
from rollbacklib.steps import Phase, StepName  # noqa: E402
from rollbacklib.validation import against_manifest  # noqa: E402

MIGRATION = "20251202020032_update_user_schema_final"
ENV = "ROLLBACK_DRILL_DATABASE_URL"


def _before(ctx, step, safety: str) -> int:
    """validate-in-place as it was: the checks, then both databases read whole and merged (both inside the window)."""
    manifest = bk.load_manifest(Path(ctx.state().need("backup", "verify_backup").path))
    with private_session(ctx, step, ctx.database) as conn:
        checks = against_manifest(conn, manifest)
        [r["migration_name"] for r in applied_migrations(conn)]
    assert all(c.passed for c in checks)
    with private_session(ctx, step, safety) as before, private_session(ctx, step, ctx.database) as after:
        return rowdiff.diff_databases(before, after)["total"]


def _compare(ctx, step, safety: str) -> int:
    with private_session(ctx, step, safety) as kept:
        return rowdiff.diff_against_snapshot(kept, ctx.run_dir / rowdiff.SNAPSHOT_FOLDER)["total"]


def _timed(work) -> tuple[float, object]:
    started = time.monotonic()
    result = work()
    return time.monotonic() - started, result


def _spread(values: list[float]) -> dict:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def measure(users: int, rounds: int, work: Path) -> dict:
    server = start_server(work / "pgdata", delete_on_stop=True)
    try:
        name = "bench_in_place"
        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = server.url(name)
        os.environ[ENV] = url
        backup = stage_incident(url, load_scenario(scenarios_dir() / "auth-platform"), MIGRATION, users=users,
                                backup_dir=work / "backups", tools=client_tools("embedded"), say=lambda _l: None)
        with psycopg.connect(url) as conn:
            db_bytes = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        common = dict(migration_id=MIGRATION, environment="drill", config_path=str(REPO / "runbook.toml"),
                      run_id="bench", reports_dir=str(work / "reports"))
        prepared = run_phases(**common, backup=str(backup), phases=(Phase.PREPARE,), strategy="in-place")
        if prepared.summary["phases"][0]["status"] != "succeeded":
            raise SystemExit(f"phase 01 did not succeed: {prepared.summary['error']}")
        ctx = open_run(**common, phase=Phase.EXECUTE)
        ctx.approve = MIGRATION
        steps.approve(ctx)
        for act in (steps.block, steps.drain, steps.terminate, steps.take_safety_copy, steps.restore_in_place,
                    steps.validate_in_place):
            act(ctx)
        safety = steps.safety_name(ctx.database, ctx.run_id)
        step = ctx.planned(StepName.VALIDATE_IN_PLACE)
        old_step = replace(step, actions=step.actions + private_actions(safety))  # it opened the safety copy too
        compare_step = ctx.planned(StepName.COMPARE_ROWS)
        now, before, compare, pairs, totals = [], [], [], [], set()
        for i in range(rounds):
            order = [("now", lambda: steps._validate(ctx, step)), ("before", lambda: _before(ctx, old_step, safety))]
            seconds = {}
            for label, work_ in (order if i % 2 == 0 else order[::-1]):
                seconds[label], result = _timed(work_)
                if label == "before":
                    totals.add(result)
            now.append(seconds["now"])
            before.append(seconds["before"])
            pairs.append(seconds["now"] / seconds["before"])
            t, total = _timed(lambda: _compare(ctx, compare_step, safety))
            compare.append(t)
            totals.add(total)
        if len(totals) != 1:
            raise SystemExit(f"the two ways disagree on the rows lost: {sorted(totals)}")
        return {"users": users, "database_bytes": db_bytes, "rounds": rounds, "rows_lost": totals.pop(),
                "validate_in_place_now": _spread(now), "validate_in_place_before": _spread(before),
                "compare_rows_after_window": _spread(compare),
                "ratio_of_medians": round(statistics.median(now) / statistics.median(before), 3),
                "paired_ratio_median": round(statistics.median(pairs), 3)}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="in-place-window-bench-") as tmp:
        result = measure(args.users, args.rounds, Path(tmp))
    n, b, c = (result[k] for k in ("validate_in_place_now", "validate_in_place_before", "compare_rows_after_window"))
    print(f"users {result['users']:,}  database {result['database_bytes'] / 2**20:.1f} MiB  rows lost "
          f"{result['rows_lost']}  rounds {result['rounds']}")
    print(f"validate-in-place in the window, now:    {n['min']:.3f} / {n['median']:.3f} / {n['max']:.3f} s")
    print(f"validate-in-place in the window, before: {b['min']:.3f} / {b['median']:.3f} / {b['max']:.3f} s")
    print(f"compare-rows, after the window:          {c['min']:.3f} / {c['median']:.3f} / {c['max']:.3f} s")
    print(f"now / before: {result['ratio_of_medians']:.3f} (medians), {result['paired_ratio_median']:.3f} (paired)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
