"""The post-mortem draft, in the seed plan's template, filled from the run's evidence.

What the journal, the state and the capture prove is written in; what only people know (why
the migration failed, when the issue was detected, users and revenue affected, owners) is a
marked blank: ``**[TO FILL IN: ...]**``. Written as ``postmortem.md`` in the run folder at the
end of every run; ``rollback postmortem RUN_DIR --out DIR`` writes it under the seed's name,
``YYYY-MM-DD-migration-rollback-postmortem.md``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from rollbacklib.errors import ESCALATION
from rollbacklib.report import POSTMORTEM_NAME
from rollbacklib.report import communication
from rollbacklib.report.checklist import expected_found
from rollbacklib.report.evidence import Evidence
from rollbacklib.metrics import (BAD, FAIL, NOT_MEASURED, PASS, PHASE_ESTIMATES, SLOW_SHARE, duration,
                                        first_event, metric, seconds_between)
from rollbacklib.steps import StepName


def blank(what: str) -> str:
    return f"**[TO FILL IN: {what}]**"


def _hhmm(ts: str | None) -> str:
    return datetime.fromisoformat(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else blank("time")


def run_date(run: Evidence) -> str:
    started = run.summary.get("started_at")
    return (datetime.fromisoformat(started) if started else datetime.now()).strftime("%Y-%m-%d")


def file_name(run: Evidence) -> str:
    return f"{run_date(run)}-migration-rollback-postmortem.md"


def timeline(run: Evidence) -> list[tuple[str | None, str, str]]:
    """(time, event, evidence), in time order; the issue's detection is a blank for people."""
    s, events = run.summary, run.events
    rows: list[tuple[str | None, str, str]] = []
    row = run.migration_row() or {}
    where = "_prisma_migrations, captured before the restore"
    if row.get("started_at"):
        rows.append((row["started_at"], f"Migration `{s['migration_id']}` started", where))
    if row.get("finished_at"):
        rows.append((row["finished_at"], "Migration finished", where))
    rows.append((None, "Issue detected", blank("when and how the issue was detected (alert, ticket, person)")))
    if s.get("started_at"):
        rows.append((s["started_at"], f"Rollback initiated: run `{s['run_id']}` started", "journal, first event"))
    for p in s.get("phases", []):
        started = [x["ts"] for x in events if x["phase"] == p["name"] and x["step"] == "phase"
                   and x["status"] == "started" and x["ts"] >= p["started_at"]]  # the notebook's start, not the gate's
        rows.append((started[0] if started else p["started_at"], f"Phase {p['name']} started", "journal"))
        if p["finished_at"]:
            rows.append((p["finished_at"], f"Phase {p['name']} {p['status']}"
                         + (f" ({duration(p['seconds'])})" if p["seconds"] is not None else ""), "journal"))
    for step, status, text in ((StepName.BLOCK, "ok", "Connections to the live database blocked"),
                               (StepName.SWAP_PROMOTE, "ok", "Rollback completed: the restored copy is live (closed)"),
                               (StepName.VALIDATION, "ok", "Restored database validated"),
                               ("service-restored", "info", "Systems restored: the database answers through the "
                                "application's URL"),
                               (StepName.CLOSE, "ok", "Run closed")):
        event = first_event(events, step, status)
        if event:
            rows.append((event["ts"], text, f"journal, step {step}"))
    rows += communication.timeline_rows(events)  # the notifications delivered and the escalations
    if s.get("error"):
        e = s["error"]
        event = next((x for x in events if x["step"] == e["step"] and x["status"] in BAD), None)
        rows.append((event["ts"] if event else s.get("finished_at"), f"**{e['phase']} / {e['step']} "
                     f"{s['status']}**: {e['message'].splitlines()[0]}", "journal"))
    known = sorted((r for r in rows if r[0]), key=lambda r: r[0])
    detected = [r for r in rows if not r[0]]
    first_after_migration = next((i for i, r in enumerate(known) if not r[1].startswith("Migration")), len(known))
    return known[:first_after_migration] + detected + known[first_after_migration:]


def went_wrong(run: Evidence) -> list[str]:
    """Failed, refused or aborted steps; phases over the plan's estimate; slow steps; metrics that failed."""
    items = []
    for step in run.steps:
        if step["status"] in BAD:
            items.append(f"Step `{step['step']}` ({step['phase']}) {step['status']}: {step['message'].splitlines()[0]}")
    error = run.summary.get("error")
    if error and len(error["message"].strip().splitlines()) > 1:
        items.append(f"The error in full ({error['phase']} / {error['step']}): "
                     + "; ".join(line.strip(" -") for line in error["message"].splitlines() if line.strip()))
    for check in run.summary.get("failing_checks", []):
        items.append(f"✘ Check failed in step `{check['step']}`: {_cell(expected_found(check))}")
    items += communication.failed_lines(run.events)
    for p in run.summary.get("phases", []):
        estimate = PHASE_ESTIMATES.get(p["name"])
        if estimate and p["seconds"] is not None and p["seconds"] > estimate:
            items.append(f"Phase {p['name']} took {duration(p['seconds'])}, over the plan's estimate of "
                         f"{duration(estimate)}")
    for step in run.steps:
        estimate = PHASE_ESTIMATES.get(step["phase"])
        if estimate and step["seconds"] is not None and step["seconds"] > SLOW_SHARE * estimate:
            items.append(f"Step `{step['step']}` was slow: {duration(step['seconds'])}, more than half of its "
                         f"phase's estimate ({duration(estimate)})")
    for m in run.summary.get("metrics", []):
        if m["status"] == FAIL:
            items.append(f"{m['metric']}: {m['actual']} against a target of {m['target']}")
        elif m["status"] == NOT_MEASURED and run.summary.get("status") == "succeeded":
            items.append(f"{m['metric']} was not measured: {m['evidence']}")
    return items


def went_well(run: Evidence) -> list[str]:
    s = run.summary
    items = [f"{m['metric']}: {m['actual']} (target {m['target']})" for m in s.get("metrics", [])
             if m["status"] == PASS]
    if s.get("backup"):
        items.insert(0, f"The backup was verified before anything changed (`{Path(s['backup']['path']).name}`)")
    if s.get("kept_database"):
        items.append(f"The pre-rollback database was kept, closed to connections, as `{s['kept_database']}`")
    return items


def render(run: Evidence) -> str:
    s = run.summary
    rto, lost = metric(s, "rto"), s.get("rows_lost")
    row = run.migration_row() or {}
    incident = seconds_between(row.get("finished_at"), first_event(run.events, "service-restored", "info")["ts"]) \
        if row.get("finished_at") and first_event(run.events, "service-restored", "info") else None
    e = s.get("error")
    lines = [
        f"# Post-Mortem: Migration Rollback - {s['migration_id']}",
        "",
        f"**Date:** {run_date(run)}  ",
        f"**Severity:** {blank('P0 / P1 / P2')}  ",
        f"**Duration:** {duration(incident) + ' from the migration to service restored; ' if incident else ''}"
        f"rollback {rto['actual'] if rto else '-'} (RTO, run start to the database answering)  ",
        f"**Impact:** {s['production']['line']}; {_impact_line(s)}; {blank('what users saw')}  ",
        f"**Environment:** `{s['environment']}` · **Run:** `{s['run_id']}` · **Outcome:** {s['status']} "
        f"(exit {s['exit_code']}) · **Evidence:** `report.html`, `journal.jsonl`, the executed notebooks",
        "",
        "## Summary",
        "",
        _summary_sentence(s) + " " + blank("2-3 sentences: what went wrong with the migration and why it was "
                                           "rolled back"),
        "",
        "## Timeline",
        "",
        "| Time (UTC) | Event | Evidence |",
        "|------|-------|----------|",
        *[f"| {_hhmm(t) if t else blank('time')} | {_cell(event)} | {_cell(where)} |" for t, event, where in timeline(run)],
        "",
        "## Root Cause",
        "",
        blank("detailed analysis"),
        "",
        "- Why did the migration fail in production if it passed staging? " + blank("answer"),
        "- What differs between staging and production? " + blank("answer"),
        "- Which additional tests are needed? " + blank("answer"),
        "",
        "## Impact",
        "",
        f"**{s['production']['line']}**",
        "",
        *[f"- ✘ {_cell(expected_found(c))} (step `{c['step']}`)" for c in s.get("failing_checks", [])],
        f"- Users affected: {blank('count')}"
        + (f" (rows of `users` the rollback discarded: {lost['tables']['users']['lost']})"
           if lost and "users" in lost["tables"] and lost["tables"]["users"]["lost"] is not None else ""),
        f"- Failed requests: {blank('count, from the platform metrics')}",
        f"- Revenue loss: {blank('USD')}",
        f"- Customer complaints: {blank('count')}",
        "",
        "Measured by the run:",
        "",
        "| Metric | Target | Actual | Status |",
        "|--------|--------|--------|--------|",
        *[f"| {m['metric']} | {_cell(m['target'])} | {_cell(m['actual'])} | {m['status']} |"
          for m in s.get("metrics", [])],
        "",
        *_rows_lost_lines(s),
        "## What Went Well",
        "",
        *[f"- {item}" for item in went_well(run)],
        f"- {blank('what else went well')}",
        "",
        "## What Went Wrong",
        "",
        *([f"- {item}" for item in went_wrong(run)] or ["- No step failed or ran slow by the plan's estimates."]),
        f"- {blank('what else went wrong')}",
        "",
        "## Action Items",
        "",
        *[f"- [ ] {item} - Owner: {blank('name')} - Due: {blank('date')}" for item in _actions(s, e)],
        f"- [ ] {blank('action')} - Owner: {blank('name')} - Due: {blank('date')}",
        "",
        "## Prevention",
        "",
        blank("how to prevent this in the future: tests, monitoring, process changes"),
        "",
    ]
    return "\n".join(lines)


def _impact_line(s: dict) -> str:
    parts = []
    lost, downtime = metric(s, "rows_lost"), metric(s, "downtime")
    if lost and lost["value"] is not None:
        parts.append(f"{lost['actual']} lost")
    if downtime and downtime["value"] is not None:
        parts.append(f"database closed to connections for {downtime['actual']}")
    return "; ".join(parts) or "not measured"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _summary_sentence(s: dict) -> str:
    backup = s.get("backup") or {}
    text = (f"The rollback of migration `{s['migration_id']}` on `{s['environment']}` (restore the backup taken at "
            f"{_hhmm(backup.get('taken_at'))} beside the live database, validate it, swap it in) {s['status']} "
            f"(exit {s['exit_code']}).")
    if s.get("error"):
        e = s["error"]
        text += (f" It stopped at {e['phase']} / {e['step']}: {e['message'].splitlines()[0]} Next: {e.get('next_action')}"
                 + (f" (escalate to {e['escalate']}, {ESCALATION.get(e['escalate'], '?')})." if e.get("escalate")
                    else ""))
    return text


def _rows_lost_lines(s: dict) -> list[str]:
    lost = s.get("rows_lost")
    if not lost:
        return []
    lines = ["Rows written after the backup that the restore discarded (by primary key):", "",
             "| Table | Inserted | Updated | Deleted | Lost |", "|---|---|---|---|---|"]
    for table, d in lost["tables"].items():
        lines.append(f"| {table} | {d['inserted']} | {d['updated']} | {d['deleted']} | "
                     f"{d['lost'] if d['comparable'] else 'not comparable'} |")
    return lines + [""]


def _actions(s: dict, error: dict | None) -> list[str]:
    items = []
    if error:
        items.append(f"{error['phase']} / {error['step']}: {error.get('next_action')}")
    lost = s.get("rows_lost")
    if lost and lost["total"] and s.get("kept_database"):
        items.append(f"Recover or replay the {lost['total']} row(s) lost from `{s['kept_database']}` "
                     f"(open it with: `{s.get('open_kept_database')}`)")
    if s.get("status") == "succeeded":
        items.append(f"Redeploy a release without `{s['migration_id']}` (the next `prisma migrate deploy` would "
                     "apply it again)")
    return items


def write(run_dir: Path, out_dir: Path | None = None, path: Path | None = None) -> Path:
    """Write the draft: ``path``, or the seed's dated name in ``out_dir``, or ``postmortem.md`` in the run folder."""
    run = Evidence(run_dir)
    path = Path(path) if path else Path(out_dir) / file_name(run) if out_dir else Path(run_dir) / POSTMORTEM_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(run), encoding="utf-8")
    return path
