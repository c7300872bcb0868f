"""The rules over a sampled series: which fired, with their evidence, and the recommendation.

Each rule ends in one of:

* ``fired``: its condition held on every sample for at least ``for_seconds`` (uptime: the share
  of answering samples over the trailing ``for_seconds`` was below the threshold);
* ``breaching``: it holds on the latest samples, for less time than it needs;
* ``not fired``: measured, and it did not hold long enough anywhere in the series;
* ``not evaluated``: no source for its data (no metrics URL, a metric the service does not
  export, a check not configured or that never answered) or a series shorter than
  ``for_seconds``. Never reported as passing.

The recommendation: ``roll back now`` when an automatic rule fired, ``team decision`` when only
manual ones did, ``no rollback`` otherwise; ``rollback assess`` exits 11, 10 and 0 for them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from rollbacklib.trigger_settings import METRIC_SIGNALS, ResolvedTriggers, Rule

FIRED, BREACHING, NOT_FIRED, NOT_EVALUATED = "fired", "breaching", "not fired", "not evaluated"
ROLL_BACK_NOW, TEAM_DECISION, NO_ROLLBACK = "roll back now", "team decision", "no rollback"
EXIT_CODES = {NO_ROLLBACK: 0, TEAM_DECISION: 10, ROLL_BACK_NOW: 11}


@dataclass
class RuleResult:
    name: str
    kind: str
    signal: str
    condition: str
    for_seconds: float
    status: str
    reason: str
    evidence: dict = field(default_factory=dict)


@dataclass
class Assessment:
    recommendation: str
    results: list[RuleResult]
    samples: int
    seconds: float
    started_at: str | None
    ended_at: str | None

    @property
    def fired(self) -> list[RuleResult]:
        return [r for r in self.results if r.status == FIRED]

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.recommendation]

    def to_dict(self) -> dict:
        return {"recommendation": self.recommendation, "exit_code": self.exit_code, "samples": self.samples,
                "seconds": self.seconds, "started_at": self.started_at, "ended_at": self.ended_at,
                "fired": [r.name for r in self.fired], "results": [asdict(r) for r in self.results]}

    def lines(self) -> list[str]:
        """What a person reads: the recommendation, then each rule with its evidence."""
        out = [f"Recommendation: {self.recommendation.upper()} ({self.samples} samples over {self.seconds:.0f} s)"]
        for r in self.results:
            out.append(f"  [{r.kind}] {r.name}: {r.status.upper()} ({r.condition} for {r.for_seconds:g} s): {r.reason}")
        return out


def signal_value(sample: dict, signal: str) -> float | None:
    if signal == "database_up":
        db = sample.get("database")
        return None if db is None else (1.0 if db["up"] else 0.0)
    if signal.startswith("check:"):
        check = (sample.get("checks") or {}).get(signal[6:])
        return None if check is None else check.get("value")
    return (sample.get("derived") or {}).get(signal)


def _source(rule: Rule, triggers: ResolvedTriggers, series: list[dict]) -> str | None:
    """Why the rule has no data source (None when it has one)."""
    if rule.signal in METRIC_SIGNALS and not triggers.metrics_url:
        return "no source: this environment has no triggers.metrics_url"
    if rule.signal == "database_up" and not any(s.get("database") for s in series):
        return "no source: the database was not sampled"
    if rule.signal.startswith("check:"):
        name = rule.signal[6:]
        if name not in triggers.checks:
            return f"no source: no check {name!r} is configured ([triggers.checks])"
        errors = [(s.get("checks") or {}).get(name, {}).get("error") for s in series]
        if series and all(errors):
            return f"no source: check {name!r} never answered ({errors[-1]})"
    if rule.signal == "memory_growth_percent_per_minute" and triggers.metrics_url and series and not any(
            (s.get("metrics") or {}).get("memory_bytes") is not None for s in series):
        return f"no source: {triggers.metrics.memory} is not exported by {triggers.metrics_url}"
    if rule.signal in ("error_rate_percent", "p95_latency_seconds") and series and all(
            signal_value(s, rule.signal) is None for s in series[1:]):
        what = "requests" if rule.signal == "error_rate_percent" else "latency histogram"
        return f"no data: no interval with {what} in {triggers.metrics_url}'s metrics"
    return None


def evaluate(triggers: ResolvedTriggers, series: list[dict]) -> Assessment:
    results = [evaluate_rule(rule, triggers, series) for rule in triggers.rules]
    if any(r.status == FIRED and r.kind == "automatic" for r in results):
        recommendation = ROLL_BACK_NOW
    elif any(r.status == FIRED for r in results):
        recommendation = TEAM_DECISION
    else:
        recommendation = NO_ROLLBACK
    seconds = round(series[-1]["t"] - series[0]["t"], 3) if series else 0.0
    return Assessment(recommendation, results, len(series), seconds, series[0]["ts"] if series else None,
                      series[-1]["ts"] if series else None)


def evaluate_rule(rule: Rule, triggers: ResolvedTriggers, series: list[dict]) -> RuleResult:
    def result(status: str, reason: str, **evidence) -> RuleResult:
        return RuleResult(rule.name, rule.kind, rule.signal, rule.condition(), rule.for_seconds, status, reason,
                          evidence)

    missing = _source(rule, triggers, series)
    if missing or not series:
        return result(NOT_EVALUATED, missing or "no samples")
    if rule.signal == "uptime_percent":
        return _uptime(rule, series, result)
    streaks, streak = [], None  # (start t, end t, peak) of each run of samples where the condition held
    for i, s in enumerate(series):
        value = signal_value(s, rule.signal)
        if rule.holds(value):
            begin = series[i - 1]["t"] if i and rule.signal not in ("database_up",) and not rule.signal.startswith(
                "check:") else s["t"]  # a rate covers the interval ending at its sample
            if streak is None:
                streak = [begin, s["t"], value, s["ts"]]
            else:
                streak[1] = s["t"]
                streak[2] = _peak(rule, streak[2], value)
        elif streak is not None:
            streaks.append(streak)
            streak = None
    open_streak = streak
    if streak is not None:
        streaks.append(streak)
    values = [v for v in (signal_value(s, rule.signal) for s in series) if v is not None]
    latest = values[-1] if values else None
    longest = max(streaks, key=lambda s: s[1] - s[0], default=None)
    if longest is not None and longest[1] - longest[0] >= rule.for_seconds:
        return result(FIRED, f"held for {longest[1] - longest[0]:.0f} s from {longest[3]} (needs {rule.for_seconds:g} s), "
                      f"peak {_fmt(longest[2])}", held_seconds=round(longest[1] - longest[0], 3), since=longest[3],
                      peak=longest[2], latest=latest)
    span = series[-1]["t"] - series[0]["t"]
    if open_streak is not None:
        return result(BREACHING, f"holding for {open_streak[1] - open_streak[0]:.0f} s of the {rule.for_seconds:g} s "
                      f"it needs; latest {_fmt(latest)}", held_seconds=round(open_streak[1] - open_streak[0], 3),
                      since=open_streak[3], peak=open_streak[2], latest=latest)
    if span < rule.for_seconds:
        return result(NOT_EVALUATED, f"the series covers {span:.0f} s, shorter than the {rule.for_seconds:g} s this "
                      f"trigger needs; latest {_fmt(latest)}", latest=latest, series_seconds=round(span, 3))
    return result(NOT_FIRED, f"latest {_fmt(latest)}, worst {_fmt(_worst(rule, values))} over {span:.0f} s",
                  latest=latest, worst=_worst(rule, values), series_seconds=round(span, 3))


def _uptime(rule: Rule, series: list[dict], result) -> RuleResult:
    last = series[-1]["t"]
    window = [s for s in series if s["t"] > last - rule.for_seconds] if rule.for_seconds else series[-1:]
    up = sum(1 for s in window if (s.get("metrics") or {}).get("up"))
    share = round(100 * up / len(window), 2)
    span = last - series[0]["t"]
    evidence = {"uptime_percent": share, "samples": len(window), "answered": up, "window_seconds": rule.for_seconds}
    if span < rule.for_seconds:
        status = BREACHING if share < rule.below else NOT_EVALUATED
        return result(status, f"{share}% of {len(window)} samples answered, but the series covers {span:.0f} s of "
                      f"the {rule.for_seconds:g} s this trigger needs", series_seconds=round(span, 3), **evidence)
    if share < rule.below:
        return result(FIRED, f"{share}% of the {len(window)} samples of the last {rule.for_seconds:g} s answered",
                      **evidence)
    return result(NOT_FIRED, f"{share}% of the {len(window)} samples of the last {rule.for_seconds:g} s answered",
                  **evidence)


def _peak(rule: Rule, a: float, b: float) -> float:
    return min(a, b) if rule.above is None else max(a, b)


def _worst(rule: Rule, values: list[float]) -> float | None:
    if not values:
        return None
    return min(values) if rule.above is None else max(values)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
