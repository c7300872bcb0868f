"""Phase 05, close: the timeline and the success metrics, measured from the journal."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from rollbacklib.journal import read_events
from rollbacklib.run import RunContext
from rollbacklib.steps import Action, Phase, Step, StepName, dispatch, finish_phase
from rollbacklib.summary import RUN_SUMMARY, summarize, write_summary

PHASE = Phase.CLOSE


def plan_steps(ctx: RunContext) -> list[Step]:
    return [Step(StepName.CLOSE, PHASE, str(ctx.run_dir), "the timeline and the success metrics, from the journal",
                 (Action("file", str(ctx.run_dir / RUN_SUMMARY), f"write {RUN_SUMMARY}"),),
                 requires=(StepName.HEALTH,), postcondition=f"{RUN_SUMMARY} written")]


def timeline(ctx: RunContext) -> pd.DataFrame:
    """Every journal event that changed something or ended a step badly, with its time."""
    events = read_events(ctx.run_dir)
    start = datetime.fromisoformat(events[0]["ts"]) if events else None
    rows = [
        {"time (UTC)": e["ts"][11:23], "elapsed s": round((datetime.fromisoformat(e["ts"]) - start).total_seconds(), 1),
         "phase": e["phase"], "step": e["step"], "status": e["status"], "message": e["message"]}
        for e in events
        if e["status"] in ("changed", "aborted", "refused", "failed") or e["step"] in ("phase", "service-restored")
    ]
    return pd.DataFrame(rows)


def metrics(ctx: RunContext) -> pd.DataFrame:
    """The plan's success metrics, each with its target and what the journal measured."""
    s = summarize(ctx.run_dir)
    t = ctx.env.thresholds
    checks = s["validation"]["checks"]
    passed = sum(1 for c in checks if c["passed"] and not c.get("skipped"))
    counted = sum(1 for c in checks if not c.get("skipped"))
    rows = [
        _metric("RTO (s)", f"< {t.rto_budget_seconds:.0f}", s["rto_seconds"],
                s["rto_seconds"] is not None and s["rto_seconds"] < t.rto_budget_seconds),
        _metric("RPO (s): backup to writes stopped", f"< {t.rpo_budget_seconds:.0f}", s["rpo_seconds"],
                s["rpo_seconds"] is not None and s["rpo_seconds"] < t.rpo_budget_seconds),
        _metric("Data integrity (checks passed)", "100%", f"{passed}/{counted}", counted > 0 and passed == counted),
        _metric("Errors during the run", 0, sum(1 for p in s["phases"] if p["status"] in ("failed", "aborted", "refused")),
                s["error"] is None),
    ]
    return pd.DataFrame(rows)


def _metric(name, target, actual, ok) -> dict:
    return {"metric": name, "target": target, "actual": actual, "status": "✅" if ok else "❌"}


def finish(ctx: RunContext) -> dict:
    """End phase 05 and write ``run.json``."""
    dispatch(ctx, ctx.planned(StepName.CLOSE), lambda c, s: None)
    finish_phase(ctx)
    return write_summary(ctx.run_dir)
