"""The service's metrics sampled beside ``rollback run``, from its start to the end of 05_close.

A thread of the runner scrapes the environment's ``triggers.metrics_url`` every
``run_interval_seconds`` into ``service_metrics.jsonl`` in the run folder. It reads the
metrics endpoint only, never the database: inside the outage window the live database must
be free of sessions (its rename needs that), and the window's own health step measures it.
Stopped before the run's evidence is concluded, the file is sealed into the journal whole.
The report and 05_close plot it: error rate and p95 latency before, during and after the
window (``rollbacklib.triggers.plot.service_figure``).
"""

from __future__ import annotations

import threading
from pathlib import Path

from rollbacklib.files import atomic_write_json
from rollbacklib.triggers.sampler import Sampler, read_series

SERVICE_SERIES = "service_metrics.jsonl"
SERVICE_TRIGGERS = "service_triggers.json"


class RunSampler(threading.Thread):
    def __init__(self, sampler: Sampler, interval: float):
        super().__init__(daemon=True, name="service-metrics")
        self.sampler, self.interval = sampler, interval
        self.stopping = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        while True:
            try:
                self.sampler.sample()
            except Exception as err:  # the run never depends on its plot: note it, keep going
                self.errors.append(f"{type(err).__name__}: {err}")
            if self.stopping.wait(self.interval):
                return

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.sampler.close()


def start_service_sampling(config, environment: str, run_dir: Path, *, dry_run: bool = False) -> RunSampler | None:
    """Start sampling the service's metrics into the run folder; None when not configured (or a dry run)."""
    from rollbacklib.trigger_settings import triggers_for

    triggers = triggers_for(config, environment)
    if dry_run or not triggers.metrics_url or not triggers.sample_during_run:
        return None
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(run_dir) / SERVICE_TRIGGERS, {  # the thresholds the plot draws, as the run had them
        "metrics_url": triggers.metrics_url, "rules": [r.model_dump() for r in triggers.rules]})
    sampler = Sampler(triggers, Path(run_dir) / SERVICE_SERIES, database=False, checks=False)
    thread = RunSampler(sampler, triggers.run_interval_seconds)
    thread.start()
    return thread


def stop_service_sampling(thread: RunSampler | None, run_dir: Path, secrets=()) -> None:
    """Stop the sampler and seal its file (masked first, like every evidence file)."""
    if thread is None:
        return
    thread.stop()
    from rollbacklib.audit import record_artifact

    path = Path(run_dir) / SERVICE_SERIES
    if path.exists():
        record_artifact(run_dir, path, "evidence", phase="run", secrets=list(secrets),
                        reason=f"the service's metrics sampled during the run ({len(read_series(path))} samples"
                        + (f"; {len(thread.errors)} sampling errors: {thread.errors[-1]}" if thread.errors else "") + ")")


def _run_triggers(run_dir: Path, events: list[dict]):
    """The run's triggers: as the sampler wrote them at the start, else from the config its phases recorded."""
    import json

    from rollbacklib.config import load_config
    from rollbacklib.trigger_settings import EnvironmentTriggers, ResolvedTriggers, TriggerSettings, triggers_for

    written = Path(run_dir) / SERVICE_TRIGGERS
    if written.exists():
        data = json.loads(written.read_text())
        return ResolvedTriggers(TriggerSettings(rules=data["rules"]), EnvironmentTriggers(metrics_url=data["metrics_url"]))

    config = next((e["evidence"].get("config") for e in events if e["step"] == "phase" and e["status"] == "started"),
                  None)
    try:
        return triggers_for(load_config(config), Path(run_dir).parent.name) if config else None
    except Exception:
        return None


def absent_reason(run_dir: Path, events: list[dict]) -> str | None:
    """Why the run has no service plot (None when it has one)."""
    path = Path(run_dir) / SERVICE_SERIES
    if path.exists() and len(read_series(path)) >= 2:
        return None
    if path.exists():
        return f"{SERVICE_SERIES} holds fewer than two samples: no rate can be computed"
    triggers = _run_triggers(run_dir, events)
    if triggers is None or not triggers.metrics_url:
        return (f"no metrics configured: environment {Path(run_dir).parent.name!r} has no triggers.metrics_url, so the "
                "service's error rate and latency were not sampled during this run")
    if not triggers.sample_during_run:
        return "sampling during the run is off for this environment (triggers.sample_during_run = false)"
    return "the service's metrics were not sampled in this run (a dry run, or a run before the sampler existed)"


def run_service_figure(run_dir: Path, events: list[dict]):
    """The run's service plot, or None (``absent_reason`` says why)."""
    from rollbacklib.triggers.plot import service_figure

    if absent_reason(run_dir, events) is not None:
        return None
    return service_figure(read_series(Path(run_dir) / SERVICE_SERIES), events, _run_triggers(run_dir, events))
