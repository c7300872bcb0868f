"""Phase 01's step ``strategy``: every registered strategy judged against the live situation, one chosen.

The choice is the one asked for (``--strategy``, the notebook's ``strategy`` parameter, or the
environment's ``strategy`` key), else the recommended one (``auto``): the applicable strategy
that discards least, then the fastest. A strategy asked for that does not apply aborts the run
(exit 3) saying why and which one does. What each strategy would discard, the live schema
against the backup's and the migration's intended result, Prisma's logged error and what must
change before the next deploy are journaled, kept in ``state.json`` (``strategy``), shown in
the notebook and the terminal, and written into ``run.json``.
"""

from __future__ import annotations

import pandas as pd

from rollbacklib import strategies
from rollbacklib.errors import AbortedError
from rollbacklib.postgres import database as db
from rollbacklib.steps import Action, Phase, Step, StepName
from rollbacklib.strategies.situation import read_situation

SURGICAL = "surgical"


def strategy_step(ctx) -> Step:
    return Step(StepName.STRATEGY, Phase.PREPARE, ctx.database,
                "judge each strategy against the live situation (what it discards, how long it takes); choose one",
                (Action("read", ctx.database, "_prisma_migrations; the schema catalog against the backup manifest's and "
                        "the migration.sql's intended result; invalid indexes; row counts and createdAt/updatedAt "
                        "after the backup; a failed statement's condition (SELECT count(*) ... IS NULL)"),),
                requires=(StepName.MIGRATION, StepName.VERIFY_BACKUP),
                postcondition="the chosen strategy applies to the situation now")


def choose_strategy(ctx, requested: str = "") -> pd.DataFrame:
    """The step ``strategy``: returns each strategy's assessment as a table (the chosen one marked)."""
    from rollbacklib.dispatch import dispatch

    return dispatch(ctx, strategy_step(ctx), lambda c, s: _choose(c, s, requested))


def _choose(ctx, step: Step, requested: str) -> pd.DataFrame:
    with db.connect(ctx.url, step=step.name) as conn:
        situation = read_situation(ctx, conn)
    wanted = (requested or ctx.env.strategy or strategies.AUTO).strip()
    assessments = [strategies.assess(strategies.get(name), ctx, situation, wanted) for name in strategies.names()]
    best = strategies.recommend(assessments)
    reason = _reason(situation, best)
    if wanted != strategies.AUTO:
        strategies.get(wanted)  # a name that is not registered is bad config (exit 2)
    pick = best if wanted == strategies.AUTO else next(a for a in assessments if a.name == wanted)
    record = {"requested": wanted, "chosen": pick.name if pick and pick.applies else None,
              "recommended": best.name if best else None, "reason": reason,
              "assessments": [a.to_dict() for a in assessments], "situation": situation.to_dict()}
    ctx.update(strategy=record)
    ctx.record(step.name, "info", f"strategies: recommended {record['recommended']}; {reason}",
               **{k: v for k, v in record.items() if k != "situation"}, schema_diff=situation.schema_diff,
               effects=situation.effects, blockers=situation.blockers, logs=situation.logs)
    for a in assessments:
        ctx.record(step.name, "info", f"{a.name}: {'applies' if a.applies else 'does not apply'}; discards "
                   f"{a.discards}", strategy=a.name, applies=a.applies, why=a.why)
    if pick is None or not pick.applies:
        why = "; ".join(f"{a.name}: {a.why}" for a in assessments)
        if pick is None:
            raise AbortedError(f"No strategy applies to {ctx.migration_id} now ({why}).",
                               next_action="read the migration's state above; nothing was changed.", escalate="L2")
        instead = f"use --strategy {best.name} (recommended: {best.why}; discards {best.discards})" if best else \
            "no other strategy applies"
        raise AbortedError(f"Strategy {pick.name} does not apply: {pick.why}.",
                           next_action=f"{instead}. Nothing was changed.", expected=pick.name, found=situation.state,
                           escalate="L2")
    ctx.record(step.name, "info", f"chosen: {pick.name} ({'recommended' if pick is best else 'asked for'}); it "
               f"discards {pick.discards}", chosen=pick.name)
    return assessments_frame(record)


def _reason(situation, best) -> str:
    """Why the recommended strategy: for a partly applied migration, also why not surgical."""
    if best is None:
        return "no strategy applies"
    text = f"{best.name}: {best.why}"
    if situation.partly_applied and SURGICAL not in strategies.MODULES:
        text += (f"; surgical not available (not registered in this build), so {best.name} restores the backup, "
                 f"discarding {best.discards}")
    return text


def assessments_frame(record: dict) -> pd.DataFrame:
    rows = []
    for a in record["assessments"]:
        rows.append({"strategy": a["name"], "applies": "yes" if a["applies"] else "no",
                     "chosen": "◀" if a["name"] == record["chosen"] else "",
                     "recommended": "yes" if a["name"] == record["recommended"] else "",
                     "rows lost": a["rows_lost"], "updates lost": a["updates_lost"],
                     "seconds of writes lost": None if a["seconds_lost"] is None else round(a["seconds_lost"], 1),
                     "estimated seconds": None if a["estimate_seconds"] is None else round(a["estimate_seconds"], 1),
                     "why": a["why"], "discards": a["discards"], "estimate from": a["estimate_basis"]})
    return pd.DataFrame(rows)


def describe(ctx) -> str:
    """Markdown for the notebook: the choice and why, the schema differences, Prisma's error, what must change."""
    record = ctx.state().strategy
    if not record:
        return "No strategy chosen yet."
    s = record["situation"]
    lines = [f"**Strategy `{record['chosen']}`** (asked for: `{record['requested']}`; recommended: "
             f"`{record['recommended']}`). {record['reason']}."]
    chosen = next((a for a in record["assessments"] if a["name"] == record["chosen"]), None)
    if chosen:
        lines.append(f"**It discards:** {chosen['discards']}.")
    if s["logs"]:
        lines.append("**Prisma's logged error** (`_prisma_migrations.logs`):\n\n```\n" + s["logs"].strip() + "\n```")
    for b in s["blockers"]:
        lines.append(f"**Before the next deploy:** {b['must_change']}. First keys ({', '.join(b['key']) or 'ctid'}): "
                     f"{', '.join(b['first_keys']) or 'none'}. Query (read-only): `{b['query']}`")
    if s["schema_diff"]:
        lines.append("**The live schema against the backup's:**\n\n" + "\n".join(
            f"- {d['object']} `{d['name']}`: {d['change']}" for d in s["schema_diff"]))
    elif s["schema_equal"]:
        lines.append("**The live schema equals the backup's.**")
    if s["effects"]:
        lines.append("**The migration's intended changes** (" + (s["migration_sql"] or "") + "):\n\n" + "\n".join(
            f"- `{e['statement']}`: {e['status']}" for e in s["effects"]))
    lines += [f"*Note:* {n}" for n in s["notes"]]
    return "\n\n".join(lines)


def terminal_lines(record: dict | None) -> list[str]:
    """What the terminal prints before the gate: each strategy's loss and time, the recommendation, the choice."""
    if not record:
        return []
    lines = [f"Strategies (recommended: {record['recommended']}; chosen: {record['chosen']}): {record['reason']}"]
    for a in record["assessments"]:
        if a["applies"]:
            est = "?" if a["estimate_seconds"] is None else f"{a['estimate_seconds']:.1f} s"
            secs = "?" if a["seconds_lost"] is None else f"{a['seconds_lost']:.0f} s"
            lines.append(f"  {a['name']:<13} loses {a['rows_lost']} row(s), {a['updates_lost']} update(s), {secs} of "
                         f"writes; estimated {est} ({a['estimate_basis']})")
            lines.append(f"  {'':<13} discards {a['discards']}")
        else:
            lines.append(f"  {a['name']:<13} does not apply: {a['why']}")
    s = record.get("situation") or {}
    if s.get("logs"):
        lines.append("  Prisma's logged error: " + " ".join(s["logs"].split())[:400])
    for b in s.get("blockers", []):
        lines.append(f"  before the next deploy: {b['must_change']} (first: {', '.join(b['first_keys'])})")
    for d in s.get("schema_diff", []):
        lines.append(f"  live vs backup: {d['object']} {d['name']}: {d['change']}")
    for e in s.get("effects", []):
        lines.append(f"  migration.sql: {e['statement']}: {e['status']}")
    return lines
