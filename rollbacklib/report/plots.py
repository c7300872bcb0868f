"""The run's plots, drawn with matplotlib's Agg canvas (no display, no pyplot state) as PNG bytes.

The 05_close notebook shows them (so they are in the executed notebook and the report), and
the report draws the timeline itself too, so a run that stopped before 05_close has one.

Error rate and p95 latency of the service across the run come from its ``/metrics``, sampled
beside the run (``rollbacklib.triggers.background``): ``service_figure`` draws them.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from rollbacklib.report.evidence import Evidence
from rollbacklib.metrics import BAD, DRILL_TARGETS, seconds_between

PHASE_COLORS = {"01_prepare": "#4c78a8", "02_execute": "#f58518", "03_validate": "#54a24b",
                "04_restore_service": "#b279a2", "05_close": "#9d755d"}
OK, BAD_COLOR, TARGET = "#2e7d32", "#c62828", "#616161"


def png(fig: Figure, dpi: int = 100) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def timeline_figure(run: Evidence) -> Figure:
    """Top: each step on the run's clock, by phase. Bottom: the drill's milestones against their targets."""
    events, summary = run.events, run.summary
    start = events[0]["ts"] if events else None
    steps = [s for s in run.steps if s["started_at"]]
    fig = Figure(figsize=(10, 4 + 0.2 * len(steps)), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[max(len(steps), 4), 8])

    for row, s in enumerate(steps):
        begin = seconds_between(start, s["started_at"])
        end = seconds_between(start, s["finished_at"]) if s["finished_at"] else seconds_between(start, events[-1]["ts"])
        failed = s["status"] in BAD
        top.barh(row, max(end - begin, 0.02), left=begin, color=BAD_COLOR if failed else PHASE_COLORS.get(s["phase"],
                 "#888"), hatch="//" if failed else None, edgecolor="black" if failed else "none", height=0.7)
    top.set_yticks(range(len(steps)), [f"{s['step']}" + (f" ({s['status']})" if s["status"] in BAD else "")
                                       for s in steps], fontsize=8)
    top.invert_yaxis()
    rto = summary.get("rto_seconds")
    if rto is not None:
        top.axvline(rto, color=OK, linestyle="-", linewidth=1.5, label=f"database answers again (RTO {rto:.1f} s)")
    blocked = run.state.blocked.at if run.state.blocked else None
    if blocked:
        top.axvline(seconds_between(start, blocked), color=BAD_COLOR, linestyle=":", linewidth=1.5,
                    label="connections blocked")
    handles, labels = top.get_legend_handles_labels()
    for p in summary.get("phases", []):
        if p["started_at"]:
            end = p["finished_at"] or (events[-1]["ts"] if events else p["started_at"])
            top.axvspan(seconds_between(start, p["started_at"]), seconds_between(start, end), alpha=0.08,
                        color=PHASE_COLORS.get(p["name"], "#888"))
            handles.append(Patch(color=PHASE_COLORS.get(p["name"], "#888"), label=f"{p['name']} ({p['status']})"))
    top.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    top.set_xlabel("seconds since the run started")
    top.set_title(f"Steps of run {summary.get('run_id')} ({summary.get('status')})", fontsize=10, loc="left")
    top.grid(axis="x", alpha=0.3)
    _milestones(bottom, summary)
    return fig


def _milestones(ax, summary: dict) -> None:
    """The drill's milestones against their targets: in seconds (a log scale, so the targets stay in view)
    when everything the run reached came in under two minutes, else in minutes."""
    rows = summary.get("milestones") or []
    budget = summary.get("rto_budget_seconds")
    rto = summary.get("rto_seconds")
    names = [m["milestone"] for m in rows] + ["service restored (RTO)"]
    reached = [m["seconds"] for m in rows if m["seconds"] is not None] + ([rto] if rto is not None else [])
    short = not reached or max(reached) < 120
    unit, scale = ("seconds", 1) if short else ("minutes", 60)
    for i, m in enumerate(rows):
        ax.plot(m["target_seconds"] / scale, i, marker="|", markersize=16, color=TARGET, mew=2)
        if m["seconds"] is not None:
            ax.plot(max(m["seconds"], 0.1) / scale, i, "o", color=OK if m["status"] == "pass" else BAD_COLOR)
            ax.annotate(f"{m['seconds']:.1f} s" if short else f"{m['seconds'] / 60:.1f} min",
                        (max(m["seconds"], 0.1) / scale, i), xytext=(6, 6), textcoords="offset points", fontsize=7)
        else:
            ax.annotate("for people" if m["status"] == "for people" else "not reached",
                        (m["target_seconds"] / scale, i), xytext=(8, 0), textcoords="offset points", fontsize=7,
                        va="center", color=TARGET)
    i = len(rows)
    if budget:
        ax.plot(budget / scale, i, marker="|", markersize=16, color=TARGET, mew=2)
        ax.axvline(budget / scale, color=BAD_COLOR, linewidth=1, alpha=0.6, label=f"RTO budget {budget / 60:g} min")
    if rto is not None:
        ax.plot(max(rto, 0.1) / scale, i, "o", color=OK if not budget or rto < budget else BAD_COLOR)
    ax.plot([], [], marker="|", color=TARGET, linestyle="none", mew=2, label="target (drill checklist)")
    ax.plot([], [], "o", color=OK, linestyle="none", label="reached in time")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    right = max([t for _, t, _ in DRILL_TARGETS] + [budget or 0] + [(rto or 0)]) / scale
    if short:
        ax.set_xscale("log")
        ax.set_xlim(max(min(reached, default=1), 0.1) * 0.5, right * 1.3)
    else:
        ax.set_xlim(0, right * 1.05)
    ax.set_xlabel(f"{unit} since the run started" + (" (log scale)" if short else ""))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="x", alpha=0.3)


def rows_figure(run: Evidence) -> Figure | None:
    """Rows per table before the migration, at the rollback and after it."""
    series = run.row_counts()
    if not series:
        return None
    tables = sorted({t for counts in series.values() for t in counts})
    fig = Figure(figsize=(10, 1.2 + 0.22 * len(tables) * len(series)), layout="constrained")
    ax = fig.subplots()
    height = 0.8 / len(series)
    for i, (label, counts) in enumerate(series.items()):
        ys = [row + i * height for row in range(len(tables))]
        bars = ax.barh(ys, [counts.get(t, float("nan")) for t in tables], height=height, label=label)
        ax.bar_label(bars, labels=[str(counts[t]) if t in counts else "" for t in tables], fontsize=7, padding=2)
    ax.set_yticks([row + height * (len(series) - 1) / 2 for row in range(len(tables))], tables, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    ax.set_title("Rows per table", fontsize=10, loc="left")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.margins(x=0.12)
    return fig


def rows_lost_figure(run: Evidence) -> Figure | None:
    """Rows lost per table: inserted, updated and deleted after the backup, discarded by the restore."""
    lost = run.summary.get("rows_lost")
    if not lost:
        return None
    tables = list(lost["tables"])
    fig = Figure(figsize=(10, 1.2 + 0.35 * len(tables)), layout="constrained")
    ax = fig.subplots()
    left = [0] * len(tables)
    for kind, color in (("inserted", "#f58518"), ("updated", "#4c78a8"), ("deleted", "#e45756")):
        values = [lost["tables"][t][kind] for t in tables]
        ax.barh(tables, values, left=left, color=color, label=kind)
        left = [a + b for a, b in zip(left, values)]
    for row, t in enumerate(tables):
        d = lost["tables"][t]
        ax.annotate(str(d["lost"]) if d["comparable"] else "not comparable", (left[row], row), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("rows written after the backup that the restore discarded")
    ax.set_title(f"Rows lost per table: {lost['total']} in all", fontsize=10, loc="left")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.margins(x=0.15)
    return fig


def service_figure(run: Evidence) -> Figure | None:
    """Error rate and p95 latency of the service across the run, the outage window shaded, the triggers'
    thresholds drawn (``rollbacklib.triggers``); None when the run sampled no metrics (``service_absent`` says why)."""
    from rollbacklib.triggers.background import run_service_figure

    return run_service_figure(run.run_dir, run.events)


def service_absent(run: Evidence) -> str | None:
    """Why the run has no service plot, in one line (None when it has one)."""
    from rollbacklib.triggers.background import absent_reason

    return absent_reason(run.run_dir, run.events)


FIGURES = (("timeline", timeline_figure), ("rows", rows_figure), ("rows_lost", rows_lost_figure),
           ("service", service_figure))
ALT = {"timeline": "The run's steps on its clock, and the drill's milestones against their targets and the RTO budget",
       "rows": "Rows per table before the migration, at the rollback and after it",
       "rows_lost": "Rows lost per table: inserted, updated and deleted after the backup",
       "service": "The service's error rate and p95 latency across the run (its /metrics), the outage window shaded, "
                      "the triggers' thresholds drawn"}


def all_png(run: Evidence) -> dict[str, bytes]:
    """Every plot the run has evidence for, as PNG bytes, by name."""
    out = {}
    for name, draw in FIGURES:
        fig = draw(run)
        if fig is not None:
            out[name] = png(fig)
    return out
