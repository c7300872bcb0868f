"""Phase 00, assess: sample the service's metrics and the database, evaluate the triggers, recommend.

It reads only: a metrics endpoint, ``SELECT 1`` and the configured checks (read-only SQL the
config names). Its folder is ``reports/<migration>/<env>/assessments/<run_id>/`` (not a run
folder: a rollback run is started, or not, on its recommendation), holding ``series.jsonl``,
``assessment.json``, ``triggers.png``, a hash-chained ``journal.jsonl`` and, when papermill ran
it, ``00_assess.ipynb``.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from rollbacklib.config import Config, ResolvedEnvironment, load_config
from rollbacklib.errors import AbortedError, ConfigError
from rollbacklib.files import atomic_write_json
from rollbacklib.journal import JOURNAL_NAME, Journal
from rollbacklib.prisma import validate_migration_id
from rollbacklib.run import default_reports_dir, new_run_id, run_folder
from rollbacklib.triggers.evaluate import Assessment, evaluate as evaluate_series
from rollbacklib.triggers.sampler import SERIES_NAME, Sampler
from rollbacklib.trigger_settings import ResolvedTriggers, triggers_for

PHASE = "00_assess"
ASSESSMENT_NAME = "assessment.json"
PLOT_NAME = "triggers.png"


@dataclass
class AssessContext:
    config: Config
    env: ResolvedEnvironment
    triggers: ResolvedTriggers
    migration_id: str
    run_id: str
    folder: Path
    journal: Journal
    window_seconds: float
    assessment: Assessment | None = None

    @property
    def series_path(self) -> Path:
        return self.folder / SERIES_NAME

    def record(self, step: str, status: str, message: str = "", **evidence) -> dict:
        return self.journal.record(PHASE, step, status, message, **evidence)


def assessment_folder(reports_dir: str | os.PathLike, migration_id: str, environment: str, run_id: str) -> Path:
    run_dir = run_folder(reports_dir, migration_id, environment, run_id)  # validates the ID as a folder name
    return run_dir.parent / "assessments" / run_id


def open_assessment(*, migration_id: str, environment: str, config_path: str = "", reports_dir: str = "",
                    run_id: str = "", window_seconds: float = 0, interval_seconds: float = 0) -> AssessContext:
    """Validate the parameters, resolve the environment's triggers, open the assessment's folder."""
    from rollbacklib.redaction import config_secrets, mask_in_kernel, refuse_credentials

    refuse_credentials({"migration_id": migration_id, "environment": environment, "config_path": config_path,
                        "run_id": run_id, "reports_dir": reports_dir})
    validate_migration_id(migration_id)
    config = load_config(config_path or None)
    secrets = config_secrets(config)
    mask_in_kernel(secrets)
    env = config.environment(environment)
    env.database_url()  # a missing secret is bad usage, found before sampling
    triggers = triggers_for(config, environment)
    if (interval_seconds or 0) < 0 or (window_seconds or 0) < 0:
        raise ConfigError("The window and the interval are seconds, above 0.", step="assess",
                          next_action="pass --window and --interval as positive numbers (or leave them out).")
    if interval_seconds:
        triggers.interval_seconds = float(interval_seconds)
    if not triggers.rules:
        raise ConfigError(f"No triggers are configured for {environment!r} in {config.path}.", step="assess",
                          next_action="add [[triggers.rules]] (the packaged runbook.toml has the seed plan's) or "
                          f"[[environments.{environment}.triggers.rules]]; README: Triggers: when to roll back.")
    folder = assessment_folder(reports_dir or default_reports_dir(), migration_id, environment, run_id or new_run_id())
    folder.mkdir(parents=True, exist_ok=True)
    ctx = AssessContext(config, env, triggers, migration_id, folder.name, folder,
                        Journal(folder / JOURNAL_NAME, secrets=secrets),
                        float(window_seconds or triggers.window_seconds))
    ctx.record("phase", "started", f"{PHASE} of {migration_id} on {environment}", config=str(config.path),
               metrics_url=triggers.metrics_url, window_seconds=ctx.window_seconds,
               interval_seconds=triggers.interval_seconds, pid=os.getpid())
    return ctx


def describe(ctx: AssessContext) -> str:
    src = f"`{ctx.triggers.metrics_url}`" if ctx.triggers.metrics_url else "**none configured** (metric triggers are not evaluated)"
    return (f"**Assessment** `{ctx.run_id}` · migration `{ctx.migration_id}` · environment `{ctx.env.name}` · "
            f"database `{ctx.env.parsed_database_url().display()}` (from `${ctx.env.database_url_env}`) · metrics {src} · "
            f"window {ctx.window_seconds:g} s, a sample every {ctx.triggers.interval_seconds:g} s\n\n"
            f"Folder: `{ctx.folder}`")


def sample(ctx: AssessContext, say=None) -> list[dict]:
    """Sample over the window into ``series.jsonl`` (each sample journaled in one line)."""
    sampler = Sampler(ctx.triggers, ctx.series_path, database_url=ctx.env.database_url())
    ctx.record("sample", "started", f"sampling for {ctx.window_seconds:g} s every {ctx.triggers.interval_seconds:g} s")
    try:
        series = sampler.run(ctx.window_seconds, on_sample=say)
    finally:
        sampler.close()
    ctx.record("sample", "ok", f"{len(series)} samples", samples=len(series), path=SERIES_NAME)
    return series


def evaluate(ctx: AssessContext, series: list[dict] | None = None) -> Assessment:
    """The rules over the series; ``assessment.json`` written, the outcome journaled."""
    from rollbacklib.triggers.sampler import read_series

    assessment = evaluate_series(ctx.triggers, read_series(ctx.series_path) if series is None else series)
    ctx.assessment = assessment
    atomic_write_json(ctx.folder / ASSESSMENT_NAME, {"migration_id": ctx.migration_id, "environment": ctx.env.name,
                                                     "run_id": ctx.run_id, **assessment.to_dict()})
    for r in assessment.results:
        ctx.record(f"trigger:{r.name}", "info", f"{r.status}: {r.reason}", kind=r.kind, outcome=r.status,
                   **r.evidence)
    ctx.record("recommendation", "info", assessment.recommendation, recommendation=assessment.recommendation,
               fired=[r.name for r in assessment.fired], exit_code=assessment.exit_code)
    return assessment


def table(ctx: AssessContext):
    """The rules as a table: kind, condition, status, reason."""
    import pandas as pd

    pd.set_option("display.max_colwidth", None)
    return pd.DataFrame([{"trigger": r.name, "kind": r.kind, "condition": f"{r.condition} for {r.for_seconds:g} s",
                          "status": r.status, "evidence": r.reason} for r in (ctx.assessment or evaluate(ctx)).results])


def plot(ctx: AssessContext) -> bytes:
    """``triggers.png``: each evaluated signal over the window with its thresholds."""
    from rollbacklib.report.plots import png
    from rollbacklib.triggers.plot import series_figure
    from rollbacklib.triggers.sampler import read_series

    data = png(series_figure(read_series(ctx.series_path), ctx.triggers, ctx.assessment))
    (ctx.folder / PLOT_NAME).write_bytes(data)
    return data


def show_plot(ctx: AssessContext) -> None:
    from IPython.display import display

    display({"image/png": base64.b64encode(plot(ctx)).decode(),
             "text/plain": "The sampled signals over the window, with each trigger's threshold"}, raw=True)


def recommendation(ctx: AssessContext) -> str:
    """The recommendation as markdown: what fired, and what to do."""
    a = ctx.assessment or evaluate(ctx)
    fired = "; ".join(f"**{r.name}** ({r.kind}: {r.reason})" for r in a.fired) or "none"
    todo = {"roll back now": "an automatic trigger fired: start the rollback (`rollback run --env "
                             f"{ctx.env.name} -m {ctx.migration_id}`) and declare the incident.",
            "team decision": "only manual triggers fired: the seed's decision process applies (the Lead Engineer, "
                             "with DevOps or the Product Owner as the trigger says).",
            "no rollback": "no trigger fired; rules marked not evaluated had no data: check them by other means."}
    return f"### Recommendation: {a.recommendation.upper()}\n\nFired: {fired}.\n\nNext: {todo[a.recommendation]}"


def finish(ctx: AssessContext) -> Assessment:
    a = ctx.assessment or evaluate(ctx)
    ctx.record("phase", "ok", f"{PHASE}: {a.recommendation}", recommendation=a.recommendation)
    return a


@dataclass
class AssessResult:
    folder: Path
    assessment: dict
    lines: list[str]

    @property
    def exit_code(self) -> int:
        return self.assessment["exit_code"]


def run_assessment(*, migration_id: str, environment: str, config_path: str | None = None,
                   reports_dir: str | None = None, run_id: str | None = None, window_seconds: float = 0,
                   interval_seconds: float = 0) -> AssessResult:
    """``rollback assess``: execute 00_assess.ipynb with papermill (the executed notebook is the evidence)."""
    import json

    import papermill as pm

    from rollbacklib.pipeline import notebooks_dir
    from rollbacklib.redaction import config_secrets, masked_output, refuse_credentials, scrub_file

    refuse_credentials({"migration_id": migration_id, "environment": environment, "config_path": config_path,
                        "reports_dir": reports_dir, "run_id": run_id})
    validate_migration_id(migration_id)
    config = load_config(config_path)
    env = config.environment(environment)
    env.database_url()  # a missing secret: bad usage, before a kernel starts
    if not triggers_for(config, environment).rules:
        raise ConfigError(f"No triggers are configured for {environment!r} in {config.path}.", step="assess",
                          next_action="add [[triggers.rules]] (the packaged runbook.toml has the seed plan's); "
                          "README: Triggers: when to roll back.")
    run_id = run_id or new_run_id()
    reports = Path(reports_dir or default_reports_dir()).resolve()
    folder = assessment_folder(reports, migration_id, environment, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    secrets = config_secrets(config)
    output, source = folder / f"{PHASE}.ipynb", notebooks_dir() / f"{PHASE}.ipynb"
    if not source.exists():
        raise ConfigError(f"{source} does not exist.", step="assess", next_action="point ROLLBACK_NOTEBOOKS at a folder "
                          f"holding {PHASE}.ipynb too (the package ships it), or unset it.")
    try:
        with masked_output(output, secrets) as masked:
            pm.execute_notebook(str(source), masked, kernel_name="python3",
                                progress_bar=False, log_output=False, cwd=str(folder), parameters={
                                    "migration_id": migration_id, "environment": environment,
                                    "config_path": str(config.path), "run_id": run_id, "reports_dir": str(reports),
                                    "window_seconds": float(window_seconds or 0),
                                    "interval_seconds": float(interval_seconds or 0)})
    except pm.PapermillExecutionError as err:
        error = ConfigError if err.ename == "ConfigError" else AbortedError  # assess reads only: nothing changed
        raise error(f"00_assess stopped at cell {err.exec_count}: {err.ename}: {err.evalue}", step="assess",
                    next_action=f"open {output} at cell {err.exec_count}: its message names what to fix.") from None
    finally:
        if output.exists():
            scrub_file(output, secrets)
    assessment = json.loads((folder / ASSESSMENT_NAME).read_text())
    lines = [f"Recommendation: {assessment['recommendation'].upper()} ({assessment['samples']} samples over "
             f"{assessment['seconds']:.0f} s)"]
    lines += [f"  [{r['kind']}] {r['name']}: {r['status'].upper()} ({r['condition']} for {r['for_seconds']:g} s): "
              f"{r['reason']}" for r in assessment["results"]]
    return AssessResult(folder, assessment, lines)
