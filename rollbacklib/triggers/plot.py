"""Plots of a sampled series: the assessment's signals with their thresholds, and the run's service
plot (item 8 of the platform issue): the gateway's error rate and p95 latency across the whole run,
the outage window (block-connections .. health, from the journal) shaded, the thresholds drawn."""

from __future__ import annotations

from datetime import datetime

from matplotlib.figure import Figure

from rollbacklib.triggers.evaluate import signal_value
from rollbacklib.trigger_settings import ResolvedTriggers

AUTOMATIC, MANUAL, LINE = "#c62828", "#ef6c00", "#1f4e79"
PANELS = (("error_rate_percent", "error rate (%)"), ("p95_latency_seconds", "p95 latency (s)"),
          ("database_up", "database answers SELECT 1"), ("memory_growth_percent_per_minute", "memory growth (%/min)"))


def _thresholds(ax, triggers: ResolvedTriggers, signal: str) -> None:
    for rule in triggers.rules:
        if rule.signal != signal:
            continue
        color = AUTOMATIC if rule.kind == "automatic" else MANUAL
        label = f"{rule.name} ({rule.kind}, {rule.condition()} for {rule.for_seconds:g} s)"
        for value in (v for v in (rule.above, rule.below) if v is not None):
            ax.axhline(value, color=color, linestyle="--", linewidth=1, label=label)
            label = "_nolegend_"  # a band's second line


def series_figure(series: list[dict], triggers: ResolvedTriggers, assessment=None) -> Figure:
    """One panel per signal that has data (and one per check), each with its rules' thresholds."""
    start = series[0]["t"] if series else 0
    panels = [(s, label) for s, label in PANELS if any(signal_value(x, s) is not None for x in series)]
    panels += [(f"check:{name}", f"check {name}") for name in triggers.checks
               if any(signal_value(x, f"check:{name}") is not None for x in series)]
    fig = Figure(figsize=(10, 1.2 + 2.0 * max(len(panels), 1)), layout="constrained")
    axes = fig.subplots(max(len(panels), 1), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (signal, label) in zip(axes, panels):
        points = [(x["t"] - start, signal_value(x, signal)) for x in series]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, color=LINE, label=label)
        _thresholds(ax, triggers, signal)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    if not panels:
        axes[0].text(0.5, 0.5, "no signal had data in this window", ha="center", va="center")
    axes[-1].set_xlabel("seconds since the first sample")
    title = "Triggers"
    if assessment is not None:
        title += f": {assessment.recommendation.upper()}" + (
            f" (fired: {', '.join(r.name for r in assessment.fired)})" if assessment.fired else "")
    axes[0].set_title(title, fontsize=10, loc="left")
    return fig


def run_window(events: list[dict]) -> tuple[str | None, str | None]:
    """The outage window from the journal: block-connections started .. health ok (None where not reached)."""
    begin = next((e["ts"] for e in events if e["step"] == "block-connections" and e["status"] == "started"), None)
    end = next((e["ts"] for e in events if e["step"] == "health" and e["status"] == "ok"
                and (begin is None or e["ts"] >= begin)), None)
    return begin, end


def service_figure(series: list[dict], events: list[dict], triggers: ResolvedTriggers | None) -> Figure:
    """Error rate and p95 latency of the service across the run, the outage window shaded, thresholds drawn."""
    start = datetime.fromisoformat(events[0]["ts"]).timestamp() if events else series[0]["t"]
    begin, end = run_window(events)
    fig = Figure(figsize=(10, 5), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    for ax, (signal, label) in zip(axes, PANELS[:2]):
        xs = [x["t"] - start for x in series]
        ax.plot(xs, [signal_value(x, signal) for x in series], marker="o", markersize=3, color=LINE, label=label)
        down = [x["t"] - start for x in series if not (x.get("metrics") or {}).get("up")]
        if down:
            ax.plot(down, [0] * len(down), "x", color=AUTOMATIC, label="no answer from the metrics endpoint")
        if begin:
            b = datetime.fromisoformat(begin).timestamp() - start
            e = (datetime.fromisoformat(end).timestamp() - start) if end else xs[-1] if xs else b
            ax.axvspan(b, e, color="#9e9e9e", alpha=0.25,
                       label="outage window (block-connections .. health)" + ("" if end else ", not closed"))
        if triggers is not None:
            _thresholds(ax, triggers, signal)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    axes[0].set_title("The service across the run: error rate and p95 latency from its /metrics", fontsize=10,
                      loc="left")
    axes[-1].set_xlabel("seconds since the run started")
    return fig
