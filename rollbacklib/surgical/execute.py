"""The surgical steps run: one executor ``(ctx, step) -> evidence`` per step, each through ``dispatch``.

Every executor reads ``surgical.json`` and refuses unless its sha256 is the one its step names (so
what runs is what the approved plan showed), runs the step's own rendered statements, journals
each (``changed`` on the live database) and returns its evidence; the postconditions are read from
the live catalog. One public function per notebook cell: ``compare_schemas`` (01), ``restore_side``,
``reverse_ddl``, ``backfill_values``, ``after_data_ddl``, ``fix_bookkeeping`` (02),
``verify_tables`` (03), ``drop_side`` (05); ``execute_all`` runs the 02 ones in order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from psycopg import sql

from rollbacklib.checks import Check
from rollbacklib.config import SurgicalSettings
from rollbacklib.dispatch import dispatch
from rollbacklib.errors import RefusedError, ValidationFailed
from rollbacklib.files import atomic_write_json
from rollbacklib.postgres import database as db
from rollbacklib.postgres.client import with_database
from rollbacklib.prisma import applied_migrations, migration_state
from rollbacklib.run import RunContext
from rollbacklib.steps import Action, Phase, Step, StepName
from rollbacklib.surgical import apply, backfill, bookkeeping, plan as sp, side, verify

BEFORE_FILE = "surgical_before.json"
VERIFY_FILE = "surgical_verify.json"


# --- phase 01 -------------------------------------------------------------------------------------

def _backup(ctx: RunContext, backup: str | None) -> Path:
    return Path(backup) if backup else Path(ctx.state().need("backup", "verify_backup (01_prepare)").path)


def compare_step(ctx: RunContext, backup: Path) -> Step:
    scratch = side.scratch_name(ctx.database, ctx.run_id)
    return Step(StepName.SURGICAL_SCHEMA, Phase.PREPARE, ctx.database,
                "compare the live schema with the backup's; render the reverse DDL into surgical.json",
                tuple(Action("command", scratch, side.shown(a), tuple(a))
                      for a in side.schema_commands(backup, scratch, ctx.tools))
                + (Action("read", ctx.database, "the live catalog: tables, columns, keys, constraints, indexes, "
                          "enums, sequences"), Action("file", sp.SURGICAL_FILE, str(ctx.run_dir / sp.SURGICAL_FILE))),
                postcondition="surgical.json written; nothing the reversal cannot undo")


def _migration_sql(ctx: RunContext, migrations_dir: str | None) -> Path | None:
    """The migration's ``migration.sql``: in ``migrations_dir``, else in the release's migrations folder."""
    folder = Path(migrations_dir) if migrations_dir else (ctx.env.release.migrations_dir if ctx.env.release else None)
    path = Path(folder) / ctx.migration_id / "migration.sql" if folder else None
    return path if path is not None and path.is_file() else None


def compare_schemas(ctx: RunContext, backup: str | None = None, migrations_dir: str | None = None) -> pd.DataFrame:
    """Phase 01: what the migration changed and how each change is undone; refused when one cannot be.

    The live schema is compared with the backup's and, when the migration's ``migration.sql`` is found,
    with the migration's intended result (``intended_frame``: which of its changes the live database has).
    """
    path = _backup(ctx, backup)
    return dispatch(ctx, compare_step(ctx, path), lambda c, s: _compare(c, s, path, _migration_sql(c, migrations_dir)))


def _compare(ctx: RunContext, step: Step, backup: Path, migration_sql: Path | None) -> pd.DataFrame:
    plan = sp.compare(ctx.url, ctx.admin_url, backup, ctx.tools, ctx.run_id, ctx.migration_id,
                      migration_sql=migration_sql)
    plan.settings = ctx.env.surgical.model_dump()
    sp.write(ctx.run_dir, plan)
    applied = [c for c in plan.intended if c["live"] == "applied"] if isinstance(plan.intended, list) else None
    meant = [c for c in plan.intended if c["live"] != "not in the migration"] if isinstance(plan.intended, list) else None
    ctx.record(step.name, "info", f"{len(plan.reversal.changes)} schema change(s), "
               f"{len(plan.reversal.irreversible)} irreversible; affected tables: "
               f"{', '.join(f'{s}.{t}' for s, t in plan.tables) or 'none'}"
               + (f"; the migration's changes applied: {len(applied)} of {len(meant)}" if meant is not None else "")
               + f"; it discards {sum(d['rows'] for d in plan.discards)} row(s) written since (values a type changed "
               "back cannot hold), nothing else", discards=plan.discards,
               changes=plan.to_dict()["reversal"]["changes"], intended=plan.intended,
               measured=plan.measured, surgical_sha256=plan.digest)
    sp.refuse_irreversible(plan)
    return sp.changes_frame(plan)


def compute(ctx: RunContext) -> sp.SurgicalPlan:
    """The reversal computed now into ``surgical.json`` (journaled under the step asking: ``strategy``).

    ``RefusedError`` when a change cannot be reversed (``surgical.json`` still names it)."""
    step = Step(StepName.STRATEGY, Phase.PREPARE, ctx.database, "")
    _compare(ctx, step, _backup(ctx, None), _migration_sql(ctx, None))
    return sp.read(ctx.run_dir)


def plan_steps(ctx: RunContext, admin=None) -> list[Step]:
    """The surgical steps of this run (for ``build_plan``), from the run's ``surgical.json``."""
    return sp.plan_steps(sp.read(ctx.run_dir), live=ctx.database, admin_conn=admin)


# --- the executors --------------------------------------------------------------------------------

def _load(ctx: RunContext, step: Step) -> sp.SurgicalPlan:
    plan = sp.read(ctx.run_dir, step.name)
    bound = next((a.text for a in step.actions if a.kind == "file" and a.target == sp.SURGICAL_FILE), "")
    if not bound.endswith(plan.digest):
        raise RefusedError(f"{sp.SURGICAL_FILE} is not the one the approved plan names: refused, nothing changed.",
                           next_action="run 01_prepare again and approve the new plan.", step=step.name,
                           expected=bound.rsplit(" ", 1)[-1], found=plan.digest)
    return plan


def _statements(step: Step) -> list[str]:
    return [a.text for a in step.actions if a.kind == "sql"]


def _side(ctx: RunContext, step: Step) -> dict:
    plan = _load(ctx, step)
    with db.connect(ctx.admin_url, step=step.name) as admin:
        for text in _statements(step):
            admin.execute(text.encode())
            ctx.record(step.name, "ran", text, kind="sql", target=plan.side)
    seconds = 0.0
    for action in step.actions:
        if action.kind == "command":
            seconds += side.run_command(list(action.argv), with_database(ctx.url, plan.side), step.name)
            ctx.record(step.name, "ran", action.text, kind="command", target=plan.side)
    with db.connect(with_database(ctx.url, plan.side), step=step.name) as conn:
        rows = {f"{s}.{t}": conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(s, t))).fetchone()[0]
                for s, t in plan.tables}
    return {"side": plan.side, "seconds": round(seconds, 3), "rows": rows}


def _settings(plan: sp.SurgicalPlan) -> SurgicalSettings:
    """The settings the approved plan was rendered with (not the config as it may be now)."""
    return SurgicalSettings(**plan.settings)


def _transaction(ctx: RunContext, step: Step, plan: sp.SurgicalPlan,
                 fingerprints: dict[str, str] | None = None) -> dict:
    s = _settings(plan)
    return apply.run_transaction(
        ctx.url, _statements(step), lock_timeout_seconds=s.lock_timeout_seconds, attempts=s.attempts,
        pause_seconds=s.retry_pause_seconds, step=step.name, fingerprints=fingerprints,
        on_attempt=lambda n, why: ctx.record(step.name, "info", f"attempt {n} of {s.attempts}: {why}; rolled back, "
                                             "nothing changed", attempt=n),
        on_statement=lambda text: ctx.record(step.name, "changed", text, kind="sql", target=ctx.database))


def _ddl(ctx: RunContext, step: Step) -> dict:
    plan = _load(ctx, step)
    evidence = _transaction(ctx, step, plan, plan.fingerprints)
    atomic_write_json(ctx.run_dir / BEFORE_FILE, evidence["fingerprints"])
    return evidence


def _columns_back(ctx: RunContext, step: Step) -> Check:
    plan = sp.read(ctx.run_dir, step.name)
    missing = []
    with db.connect(ctx.url, step=step.name) as conn:
        for table, columns in plan.backup_columns.items():
            nsp, name = table.split(".", 1)
            have = dict(conn.execute("SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                                     "WHERE a.attrelid = to_regclass(format('%%I.%%I', %s::text, %s::text)) "
                                     "AND a.attnum > 0 AND NOT a.attisdropped", (nsp, name)).fetchall())
            missing += [f"{table}.{c} {t}" for c, t in columns.items() if have.get(c) != t]
    return Check("every column of the backup is back with its type", not missing, expected=[], found=missing)


def _backfill(ctx: RunContext, step: Step) -> list[dict]:
    plan = _load(ctx, step)
    batch = _settings(plan).batch_rows
    results = []
    for fill in plan.reversal.backfills:
        texts = plan.backfill_sql[fill.qualified]
        with db.connect(ctx.url, autocommit=False, step=step.name) as live, \
                db.connect(with_database(ctx.url, plan.side), autocommit=False, step=step.name) as copy:
            result = backfill.run(fill, texts, live, copy, batch_rows=batch, on_progress=lambda label, done, total:
                                  ctx.record(step.name, "info", f"{label}: {done}/{total} rows", table=label,
                                             done=done, total=total))
        for name, text in texts.items():
            ctx.record(step.name, "ran" if name == "copy_out" else "changed", text, kind="sql",
                       target=plan.side if name == "copy_out" else ctx.database)
        ctx.record(step.name, "info", f"{fill.qualified}: {result.get('updated', result.get('copied'))} row(s) "
                   "restored", **result)
        results.append(result)
    return results


def _after_data(ctx: RunContext, step: Step) -> dict:
    return _transaction(ctx, step, _load(ctx, step))


def _objects_back(ctx: RunContext, step: Step) -> Check:
    """Every constraint and index the after-data step creates is in the live catalog."""
    plan = sp.read(ctx.run_dir, step.name)
    missing = []
    with db.connect(ctx.url, step=step.name) as conn:
        for obj in plan.reversal.restored_objects:
            if len(obj) == 3:
                found = conn.execute("SELECT 1 FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN "
                                     "pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND "
                                     "c.relname = %s AND k.conname = %s", obj).fetchone()
            else:
                found = conn.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", obj).fetchone()[0]
            missing += [] if found else [".".join(obj)]
    return Check("every constraint and index of the backup is back", not missing, expected=[], found=missing)


def _bookkeeping(ctx: RunContext, step: Step) -> dict:
    plan = _load(ctx, step)
    planned = [b for b in plan.bookkeeping if b["sql"] in _statements(step)]
    with db.connect(ctx.url, autocommit=False, step=step.name) as conn:
        result = bookkeeping.apply(conn, planned, step.name)
    for b in planned:
        ctx.record(step.name, "changed", b["sql"], kind="sql", target=ctx.database)
    return result


def _not_applied(ctx: RunContext, step: Step) -> Check:
    with db.connect(ctx.url, step=step.name) as conn:
        state = migration_state(applied_migrations(conn), ctx.migration_id)
    return Check(f"{ctx.migration_id} is not applied", state in ("absent", "rolled-back"),
                 expected="absent or rolled-back", found=state)


def verify_plan(url: str, plan: sp.SurgicalPlan, before: dict, services: str = "drain") -> dict:
    """The verification of every affected table (see ``verify``); ``ok`` False names what failed."""
    tables, problems = [], []
    with db.connect(url, autocommit=False) as live, \
            db.connect(with_database(url, plan.side), autocommit=False) as copy:
        for fill in plan.reversal.backfills:
            result = verify.values_restored(fill, plan.verify_sql[fill.qualified], live, copy)
            if result["values_differ"]:
                problems.append(f"{fill.qualified}: {result['values_differ']} row(s) whose restored values differ "
                                "from the backup's")
            if fill.whole_table and result["matched"] != result["backup_rows"]:
                problems.append(f"{fill.qualified}: {result['matched']} of {result['backup_rows']} rows copied back")
            tables.append(result)
        for name, query in plan.fingerprints.items():
            result = verify.nothing_lost(name, query, before.get(name), live)
            if not result["same"]:
                (problems if services == "drain" else []).append(
                    f"{name}: the rows and kept columns differ from before the reversal")
                result["note"] = ("other sessions wrote meanwhile (services up)" if services != "drain" else
                                  "rows changed while the services were drained")
            tables.append(result)
    return {"ok": not problems, "problems": problems, "tables": tables,
            "rows_lost": sum(t.get("values_differ", 0) for t in tables)}


def _verify(ctx: RunContext, step: Step) -> dict:
    plan = _load(ctx, step)
    before = json.loads((ctx.run_dir / BEFORE_FILE).read_text())
    result = verify_plan(ctx.url, plan, before, _settings(plan).services)
    atomic_write_json(ctx.run_dir / VERIFY_FILE, result)
    ctx.record(step.name, "info", "verified" if result["ok"] else "; ".join(result["problems"]),
               **{**result, "rows_lost": _rows_lost(result)}, passed=result["ok"], checks=_checks(result))
    if not result["ok"]:
        raise ValidationFailed("The surgical reversal does not verify: " + "; ".join(result["problems"]),
                               next_action=f"keep the side database {plan.side} (do not run 05_close); compare by "
                               "hand, escalate.", step=step.name, found=result["problems"], escalate="L3")
    return result


def _checks(result: dict) -> list[dict]:
    """The verification as checks (what ``run.json``'s ``validation`` holds): one per table, then the problems."""
    from rollbacklib.checks import Check

    checks = [Check(f"{t['table']}: " + ("values restored" if "matched" in t else "rows and kept columns"),
                    not any(p.startswith(f"{t['table']}:") for p in result["problems"]), found=t).to_dict()
              for t in result["tables"]]
    named = {t["table"] for t in result["tables"]}
    return checks + [Check(p, False).to_dict() for p in result["problems"] if p.split(":")[0] not in named]


def _rows_lost(result: dict) -> dict:
    """The verification's count in the shape of ``rowdiff.totals`` (what ``run.json``'s ``rows_lost`` holds)."""
    from rollbacklib.postgres.rowdiff import TableDiff, totals

    lost = totals([TableDiff(t["table"], updated=t["values_differ"], kept_rows=t.get("matched"),
                             restored_rows=t.get("backup_rows"), note="surgical: backfilled values against the backup's")
                   for t in result["tables"] if "values_differ" in t], [])
    lost["basis"] = ("surgical: nothing was restored over the live database; the backfilled values were compared with "
                     "the backup's, and every row and kept column with before the reversal")
    return lost


def _drop_side(ctx: RunContext, step: Step) -> dict:
    with db.connect(ctx.admin_url, step=step.name) as admin:
        for text in _statements(step):
            admin.execute(text.encode())
            ctx.record(step.name, "ran", text, kind="sql", target=step.target)
    return {"dropped": step.target}


# --- one function per notebook cell ---------------------------------------------------------------

def restore_side(ctx: RunContext):
    return dispatch(ctx, StepName.SURGICAL_SIDE, _side)


def reverse_ddl(ctx: RunContext):
    return dispatch(ctx, StepName.SURGICAL_DDL, _ddl, postcondition=_columns_back)


def backfill_values(ctx: RunContext):
    return dispatch(ctx, StepName.SURGICAL_BACKFILL, _backfill)


def after_data_ddl(ctx: RunContext):
    if StepName.SURGICAL_AFTER_DATA not in [s.name for s in ctx.plan().steps]:
        return None  # nothing needs the data first
    return dispatch(ctx, StepName.SURGICAL_AFTER_DATA, _after_data, postcondition=_objects_back)


def fix_bookkeeping(ctx: RunContext):
    return dispatch(ctx, StepName.SURGICAL_BOOKKEEPING, _bookkeeping, postcondition=_not_applied)


def verify_tables(ctx: RunContext):
    return dispatch(ctx, StepName.SURGICAL_VERIFY, _verify)


def drop_side(ctx: RunContext):
    return dispatch(ctx, StepName.SURGICAL_DROP_SIDE, _drop_side)


def execute_all(ctx: RunContext) -> list:
    """Phase 02 of the surgical strategy, in order (after the gate)."""
    return [restore_side(ctx), reverse_ddl(ctx), backfill_values(ctx), after_data_ddl(ctx), fix_bookkeeping(ctx)]
