"""Does the surgical strategy's time scale with the affected tables, not the database? (issue 15 item 2)

A script, not a test:

    .venv/bin/python benchmarks/surgical.py --users 20000 --unaffected 0 1000000 --json surgical.json

For each size of an unaffected table (``bench_events``: a bigint key and a 100-byte payload, which
the seed's migration never touches), on one embedded PostgreSQL server it stages the seed's incident
with ``--users`` users, adds that table before the backup, takes the backup (a custom ``.dump``),
applies the migration and the scenario's writes after it, then runs the surgical steps through
``dispatch`` exactly as a run does (compare in phase 01, the plan approved, side restore, reverse DDL,
backfill, after-data, bookkeeping, verify) and times each from the journal's events. For contrast it
also times the swap's heavy part on the same backup, a full ``pg_restore`` into an empty database.
It prints one row per size; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rollbacklib.drill import stage_incident  # noqa: E402
from rollbacklib.drill.embedded import start_server  # noqa: E402
from rollbacklib.drill.scenario import load_scenario  # noqa: E402
from rollbacklib.journal import read_events  # noqa: E402
from rollbacklib.postgres import database as db  # noqa: E402
from rollbacklib.postgres.client import client_tools, with_database  # noqa: E402
from rollbacklib.resources import scenarios_dir  # noqa: E402
from rollbacklib.run import open_run, record_approval  # noqa: E402
from rollbacklib.steps import Phase, Plan, StepName, write_plan  # noqa: E402
from rollbacklib.surgical import execute as surgical  # noqa: E402

MIGRATION = "20251202020032_update_user_schema_final"
ENV = "ROLLBACK_DRILL_DATABASE_URL"


def _step_seconds(run_dir: Path) -> dict[str, float]:
    started, out = {}, {}
    for e in read_events(run_dir / "journal.jsonl"):
        if e["status"] == "started" and e["step"].startswith("surgical"):
            started[e["step"]] = datetime.fromisoformat(e["ts"])
        if e["status"] == "ok" and e["step"] in started:
            out[e["step"]] = round((datetime.fromisoformat(e["ts"]) - started[e["step"]]).total_seconds(), 3)
    return out


def one(server, users: int, unaffected: int, work: Path) -> dict:
    name = f"bench_{unaffected}"
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = server.url(name)
    os.environ[ENV] = url

    def big_table(conn):
        conn.execute("CREATE TABLE bench_events (id bigint PRIMARY KEY, payload text NOT NULL)")
        conn.execute("INSERT INTO bench_events SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, %s) g",
                     (unaffected,))
        conn.commit()

    backup = stage_incident(url, load_scenario(scenarios_dir() / "auth-platform"), MIGRATION, users=users,
                            backup_dir=work / name, tools=client_tools("embedded"), say=lambda _l: None,
                            after_generate=big_table)
    with psycopg.connect(url) as conn:
        db_bytes = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    common = dict(migration_id=MIGRATION, environment="drill", config_path=str(REPO / "runbook.toml"),
                  run_id="bench", reports_dir=str(work / f"reports_{name}"))
    started = time.monotonic()
    ctx = open_run(**common, phase=Phase.PREPARE)
    surgical.compare_schemas(ctx, backup=str(backup))
    with db.connect(ctx.admin_url) as admin:
        plan = Plan(surgical.plan_steps(ctx, admin))
    write_plan(ctx.run_dir, plan)
    ctx.update(plan_digest=plan.digest)
    record_approval(ctx.run_dir, MIGRATION, "benchmark", plan.digest)
    ctx.mark_step(StepName.GATE, "ok")
    surgical.execute_all(open_run(**common, phase=Phase.EXECUTE))
    surgical.verify_tables(open_run(**common, phase=Phase.VALIDATE))
    total = time.monotonic() - started
    surgical.drop_side(open_run(**common, phase=Phase.CLOSE))
    full = f"{name}_full"
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{full}"')
    t0 = time.monotonic()
    subprocess.run([client_tools("embedded").path("pg_restore"), "--no-owner", "-j2", "-d",
                    with_database(url, full), str(backup)], check=True, capture_output=True)
    full_restore = time.monotonic() - t0
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{full}"')
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    return {"users": users, "unaffected_rows": unaffected, "database_bytes": db_bytes,
            "backup_bytes": backup.stat().st_size, "surgical_seconds": round(total, 3),
            "steps": _step_seconds(ctx.run_dir), "full_pg_restore_seconds": round(full_restore, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--unaffected", type=int, nargs="+", default=[0, 1000000])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="surgical-bench-") as tmp:
        server = start_server(Path(tmp) / "pgdata", delete_on_stop=True)
        try:
            results = [one(server, args.users, n, Path(tmp)) for n in args.unaffected]
        finally:
            server.stop()
    for r in results:
        print(f"unaffected rows {r['unaffected_rows']:>9,}  database {r['database_bytes'] / 2**20:7.1f} MiB  "
              f"surgical {r['surgical_seconds']:6.2f} s  full pg_restore {r['full_pg_restore_seconds']:6.2f} s  "
              f"steps {r['steps']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
