"""Running the surgical steps the way a run does (plan.json, an approval, dispatch), without the notebooks."""

from __future__ import annotations

import subprocess

import psycopg

from rollbacklib.postgres import database as db
from rollbacklib.postgres.client import client_tools, with_database
from rollbacklib.run import open_run, record_approval
from rollbacklib.steps import Phase, Plan, StepName, write_plan
from rollbacklib.surgical import execute as surgical


def ctx_for(incident, run_id: str, phase: str, migration_id: str | None = None):
    return open_run(migration_id=migration_id or incident.migration_id, environment="drill",
                    config_path=str(incident.config), run_id=run_id, reports_dir=str(incident.reports), phase=phase)


def plan_and_approve(incident, run_id: str, backup=None, migration_id: str | None = None):
    """Phase 01's surgical cell, the plan written and approved as the gate does; returns the comparison."""
    ctx = ctx_for(incident, run_id, Phase.PREPARE, migration_id)
    frame = surgical.compare_schemas(ctx, backup=str(backup or incident.backup))
    with db.connect(ctx.admin_url) as admin:
        plan = Plan(surgical.plan_steps(ctx, admin))
    write_plan(ctx.run_dir, plan)
    ctx.update(plan_digest=plan.digest)
    record_approval(ctx.run_dir, ctx.migration_id, "test", plan.digest)
    ctx.mark_step(StepName.GATE, "ok")
    return frame, plan


def run_surgical(incident, run_id: str = "surgical1", backup=None, migration_id: str | None = None) -> dict:
    """Plan, approve, phase 02, verify (03), drop the side database (05); returns the verification."""
    plan_and_approve(incident, run_id, backup, migration_id)
    surgical.execute_all(ctx_for(incident, run_id, Phase.EXECUTE, migration_id))
    result = surgical.verify_tables(ctx_for(incident, run_id, Phase.VALIDATE, migration_id))
    surgical.drop_side(ctx_for(incident, run_id, Phase.CLOSE, migration_id))
    return result


def restored_oracle(incident, name: str, backup=None) -> str:
    """The backup restored whole into its own database by plain pg_restore: what the values were."""
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([client_tools("embedded").path("pg_restore"), "--no-owner", "-d", with_database(incident.url, name),
                    str(backup or incident.backup)], check=True, capture_output=True)
    return with_database(incident.url, name)


def rows(url: str, query: str) -> dict:
    """``{first column: the rest}`` of ``query``."""
    with psycopg.connect(url) as conn:
        return {r[0]: tuple(r[1:]) for r in conn.execute(query).fetchall()}


def prisma_rows(url: str) -> dict:
    return rows(url, "SELECT id, t::text FROM _prisma_migrations t")
