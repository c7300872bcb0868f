"""Phase 05, close: the timeline, the success metrics and their plots, measured from the journal; the post-mortem draft."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from rollbacklib.errors import RollbackError
from rollbacklib.journal import read_events
from rollbacklib.report import POSTMORTEM_NAME
from rollbacklib.run import RunContext
from rollbacklib.dispatch import dispatch, finish_phase
from rollbacklib.steps import PHASES, Action, Phase, Step, StepName
from rollbacklib.files import atomic_write_json
from rollbacklib.summary import RUN_SUMMARY, summarize

PHASE = Phase.CLOSE


def plan_steps(ctx: RunContext) -> list[Step]:
    return [Step(StepName.CLOSE, PHASE, str(ctx.run_dir), "the timeline and the success metrics, from the journal",
                 (Action("file", str(ctx.run_dir / RUN_SUMMARY), f"write {RUN_SUMMARY}"),
                  Action("file", str(ctx.run_dir / POSTMORTEM_NAME), f"write {POSTMORTEM_NAME}: the post-mortem "
                         "draft, the seed's template filled from the evidence, blanks marked for people")),
                 requires=(StepName.HEALTH,), postcondition=f"{RUN_SUMMARY} and {POSTMORTEM_NAME} written")]


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
    """The plan's success metrics (the seed's table: metric, target, actual, status), with their evidence."""
    from rollbacklib.report.evidence import Evidence

    return pd.DataFrame([{k: m[k] for k in ("metric", "target", "actual", "status", "evidence")}
                         for m in _evidence(ctx, Evidence).summary["metrics"]])


def _evidence(ctx: RunContext, make):
    """The run's evidence, computed once for the cells that read it while the journal does not change."""
    key = (ctx.run_dir / "journal.jsonl").stat().st_size
    cached = getattr(ctx, "_evidence_cache", None)
    if cached is None or cached[0] != key:
        cached = (key, make(ctx.run_dir))
        ctx._evidence_cache = cached
    return cached[1]


def show_plots(ctx: RunContext) -> None:
    """The timeline against the RTO budget and the drill's targets, rows per table, rows lost per table."""
    import base64

    from IPython.display import Markdown, display

    from rollbacklib.report import plots
    from rollbacklib.report.evidence import Evidence

    run = _evidence(ctx, Evidence)
    for name, draw in plots.FIGURES:
        fig = draw(run)
        if fig is not None:  # the text/plain is the image's description (its alt text in the report)
            display({"image/png": base64.b64encode(plots.png(fig)).decode(), "text/plain": plots.ALT[name]}, raw=True)
        elif name == "service":
            display(Markdown(f"*Error rate and p95 latency:* no plot: {plots.service_absent(run)}."))


def finish(ctx: RunContext) -> dict:
    """End phase 05: write ``run.json`` and the post-mortem draft (both again by the runner once the run ends).

    When an earlier step did not pass this raises, and a notebook run by papermill or nbconvert
    stops here: the run's evidence (``write_evidence``) is written first, whatever the outcome.
    """
    from rollbacklib.report import postmortem

    try:
        dispatch(ctx, ctx.planned(StepName.CLOSE), lambda c, s: None)
        finish_phase(ctx)
    except RollbackError:
        write_evidence(ctx)
        raise
    # Written, not sealed: the end of the run (the runner, 05's last cell, the lab stopping) writes it
    # again and seals it then, so the head run.json names never precedes an older seal of run.json.
    summary = summarize(ctx.run_dir)
    atomic_write_json(ctx.run_dir / RUN_SUMMARY, summary)
    postmortem.write(ctx.run_dir)
    return summary


def write_evidence(ctx: RunContext) -> str:
    """The last cell of 05: ``run.json``, ``report.html`` and ``postmortem.md``, sealed, for a run done by hand.

    Under ``rollback run`` the runner writes them once the phase's notebook is saved: not twice.
    Returns what was written, as markdown: the outcome, which phases ran and which did not.
    """
    from rollbacklib import frontends
    from rollbacklib.conclude import conclude

    if frontends.current() == frontends.CLI:
        return "`rollback run` writes `run.json`, `report.html` and `postmortem.md` once this notebook is saved."
    end = conclude(ctx.run_dir, ctx.secrets())
    s = end.summary
    ran = [p["name"] for p in s["phases"]]
    missing = [p for p in PHASES if p not in ran]
    report = f"`{end.report}`" if end.report else f"not written ({end.report_error}): run `rollback report {ctx.run_dir}`"
    return (f"**Run {s['status']}** (exit code {s['exit_code']}). Phases run: "
            + ", ".join(f"{p['name']} {p['status']}" for p in s["phases"])
            + (f"; **not run: {', '.join(missing)}**" if missing else "") + f".\n\nReport: {report}; "
            f"`run.json` and `postmortem.md` beside it. Audit chain head `{s['audit']['head']}` "
            f"({s['audit']['events']} events): `rollback verify-audit {ctx.run_dir} --head {s['audit']['head']}`")
