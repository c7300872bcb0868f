"""Phase 01's ``service-snapshot``: the services as they were before anything changed, for the post-mortem.

The last ``log_lines`` (1,000) log lines of each service, read from its platform
(``platform.logs``), go into ``capture/logs/<service>.log``; a GET of the configured metrics
URL (``[environments.NAME.snapshot] metrics_url``, e.g. the gateway's ``/metrics``) goes into
``capture/metrics.prom``; ``capture/service_snapshot.json`` lists what was saved and, for
what was not (a platform that has no logs, a metrics endpoint down in the incident), why.
Nothing here stops the rollback: evidence that cannot be had is said, not hidden. The files are
sealed into the journal with the rest of the run folder when the phase ends (``rollbacklib.audit``).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pandas as pd

from rollbacklib.checks import Check
from rollbacklib.dispatch import dispatch
from rollbacklib.errors import RollbackError
from rollbacklib.files import atomic_write_json
from rollbacklib.platforms import platform_for
from rollbacklib.redaction import mask_text
from rollbacklib.run import RunContext
from rollbacklib.steps import Action, Phase, Step, StepName

LOGS = "logs"
METRICS_FILE = "metrics.prom"
INDEX_FILE = "service_snapshot.json"


def _folder(ctx: RunContext) -> Path:
    return ctx.run_dir / "capture"


def snapshot_step(ctx: RunContext) -> Step:
    platform = platform_for(ctx.env)
    settings = ctx.env.snapshot
    actions = [Action("read", s.name, f"the last {settings.log_lines} log lines of {s.name} from the {platform.name} "
                      f"platform, into capture/{LOGS}/{s.name}.log") for s in ctx.env.services]
    if settings.metrics_url:
        actions.append(Action("http", settings.metrics_url, f"GET {settings.metrics_url} into capture/{METRICS_FILE}"))
    return Step(StepName.SERVICE_SNAPSHOT, Phase.PREPARE, ctx.env.service_platform,
                "keep each service's last log lines and a metrics snapshot, for the post-mortem", tuple(actions),
                postcondition=f"every file capture/{INDEX_FILE} lists is in the run folder")


def save_service_snapshot(ctx: RunContext) -> pd.DataFrame:
    """Each service's last log lines and the metrics snapshot into ``capture/``; what could not be had, said."""
    return dispatch(ctx, snapshot_step(ctx), _snapshot, postcondition=_files_there)


def _snapshot(ctx: RunContext, step: Step) -> pd.DataFrame:
    folder = _folder(ctx)
    (folder / LOGS).mkdir(parents=True, exist_ok=True)
    rows = [_logs(ctx, step, service, folder) for service in ctx.env.services]
    rows.append(_metrics(ctx, step, folder))
    atomic_write_json(folder / INDEX_FILE, rows)
    saved = [r for r in rows if r["saved"]]
    nothing = not ctx.env.services and not ctx.env.snapshot.metrics_url
    ctx.record(step.name, "info", f"nothing to keep: environment {ctx.env.name!r} lists no services and no "
               "snapshot.metrics_url" if nothing else f"service snapshot: {len(saved)} of {len(rows)} saved",
               saved=saved, not_saved=[r for r in rows if not r["saved"]])
    return pd.DataFrame(rows)


def _logs(ctx: RunContext, step: Step, service, folder: Path) -> dict:
    platform = platform_for(ctx.env)
    lines_wanted = ctx.env.snapshot.log_lines
    try:
        lines = platform.logs(service, lines_wanted)
    except RollbackError as err:  # Unsupported (none, manual), or the platform's API not answering
        ctx.record(step.name, "info", f"{service.name}: no logs saved: {err.message}", service=service.name,
                   next_action=err.next_action)
        return {"what": "logs", "service": service.name, "saved": False, "why": err.message,
                "next_action": err.next_action}
    path = folder / LOGS / f"{service.name}.log"  # the run's secrets masked: a log may print a URL or a token
    path.write_text(mask_text("".join(line.rstrip("\n") + "\n" for line in lines), ctx.secrets()))
    return {"what": "logs", "service": service.name, "saved": True, "file": path.relative_to(ctx.run_dir).as_posix(),
            "lines": len(lines), "asked": lines_wanted}


def _metrics(ctx: RunContext, step: Step, folder: Path) -> dict:
    settings = ctx.env.snapshot
    url = settings.metrics_url
    if not url:
        return {"what": "metrics", "saved": False,
                "why": f"no metrics_url in [environments.{ctx.env.name}.snapshot]: no metrics snapshot taken"}
    try:
        response = httpx.get(url, timeout=settings.timeout_seconds)
    except httpx.HTTPError as err:
        why = f"GET {url}: no answer ({type(err).__name__}: {err})"
    else:
        if response.status_code == 200:
            path = folder / METRICS_FILE
            path.write_text(mask_text(response.text, ctx.secrets()))
            return {"what": "metrics", "url": url, "saved": True, "file": path.relative_to(ctx.run_dir).as_posix(),
                    "bytes": path.stat().st_size, "content_type": response.headers.get("content-type")}
        why = f"GET {url}: HTTP {response.status_code}"
    ctx.record(step.name, "info", f"metrics not saved: {why}", url=url)
    return {"what": "metrics", "url": url, "saved": False, "why": why}


def _files_there(ctx: RunContext, step: Step) -> Check:
    import json

    index = _folder(ctx) / INDEX_FILE
    if not index.exists():
        return Check(f"capture/{INDEX_FILE} is in the run folder", False, INDEX_FILE, None)
    listed = [r["file"] for r in json.loads(index.read_text()) if r.get("saved")]
    missing = [f for f in listed if not (ctx.run_dir / f).is_file()]
    return Check(f"every file capture/{INDEX_FILE} lists is in the run folder", not missing, listed, missing or listed)
