"""``report.html``: one self-contained page for the post-mortem, rendered from the executed notebooks.

First the summary (outcome and exit code, the error with its next action and escalation, RTO
and RPO against their targets, the success metrics in the seed's table, the seed's
post-rollback checklist with what the run proved ticked, the timeline), then every phase
notebook as it ran: code folded into ``<details>``, outputs and plots inline, the failed cell
highlighted and linked from the summary.

Self-contained: the cells are rendered by nbconvert's ``HTMLExporter`` with this package's
template (``templates/rollbacklib_report``: cells only, no require.js, MathJax or widget
scripts), images are embedded as data URIs, the styles are inline, and the page has no
script at all. It prints to PDF cleanly (print styles below).
"""

from __future__ import annotations

import base64
import copy
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from rollbacklib.errors import ESCALATION
from rollbacklib.report import POSTMORTEM_NAME, REPORT_NAME
from rollbacklib.report.checklist import checklist
from rollbacklib.report import plots
from rollbacklib.report.salvage_section import section as salvage_section
from rollbacklib.report.evidence import Evidence, next_actions
from rollbacklib.metrics import BAD, duration
from rollbacklib.steps import PHASES

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "rollbacklib_report"
MARK = {"pass": "&#10004;", "fail": "&#10008;", "info": "&#8505;", "not measured": "&#8211;", "for people": "&#9744;",
        "pending": "&#8987;", "proved": "&#10004;", "failed": "&#10008;", "not reached": "&#8211;",
        "acknowledged": "&#9745;"}


def e(value) -> str:
    return escape("" if value is None else str(value))


# --- the phase notebooks --------------------------------------------------------------------------

def _mark_cells(nb, phase: str, failed_step: str | None) -> str | None:
    """Give each cell its anchor and marks; drop papermill's own error banners. Returns the failed cell's anchor."""
    nb.cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
    failed_anchor = None
    for index, cell in enumerate(nb.cells):
        run = cell.metadata.get("papermill", {})
        failed = cell.cell_type == "code" and (run.get("status") == "failed" or any(
            o.get("output_type") == "error" for o in cell.get("outputs", [])))
        anchor = f"{phase}-cell-{index}"
        first_line = next((line for line in cell.source.splitlines() if line.strip() and not line.startswith("#")), "")
        cell.metadata["rollbacklib"] = {"anchor": anchor, "failed": failed, "pending": run.get("status") == "pending"
                                        and cell.cell_type == "code", "step": failed_step if failed else None,
                                        "label": first_line[:80]}
        if failed and failed_anchor is None:
            failed_anchor = anchor
    return failed_anchor


def _exporter():
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name=TEMPLATE, extra_template_basedirs=[str(TEMPLATES)])
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    exporter.embed_images = True
    return exporter


def render_notebooks(run: Evidence) -> tuple[dict[str, str], dict[str, str]]:
    """Each executed phase notebook as HTML cells, by phase; and the failed cell's anchor, by phase."""
    import nbformat

    error = run.summary.get("error") or {}
    exporter = _exporter()
    bodies, failed = {}, {}
    for phase in PHASES:
        path = run.run_dir / f"{phase}.ipynb"
        if not path.exists():
            continue
        nb = copy.deepcopy(nbformat.read(path, as_version=4))
        anchor = _mark_cells(nb, phase, error.get("step") if error.get("phase") == phase else None)
        if anchor:
            failed[phase] = anchor
        bodies[phase], _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": phase}})
    return bodies, failed


# --- the summary ----------------------------------------------------------------------------------

def _img(data: bytes, alt: str) -> str:
    return f'<img class="rb-plot" alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _status(status: str) -> str:
    return f'<span class="rb-status rb-{e(status).replace(" ", "-")}">{MARK.get(status, "")} {e(status)}</span>'


def _error_box(run: Evidence, failed_cells: dict[str, str]) -> str:
    err = run.summary.get("error")
    if not err:
        return ""
    anchor = failed_cells.get(err["phase"]) or next(iter(failed_cells.values()), None)
    where = (f'<a href="#{e(anchor)}">the failed cell in {e(anchor.split("-cell-")[0])}</a>' if anchor else
             "no notebook cell failed: the runner stopped the run (see the journal)")
    level = err.get("escalate")
    return f"""
<div class="rb-error" id="error">
  <h2>&#10008; {e(err['phase'])} / step <code>{e(err['step'])}</code>: {e(err.get('error') or run.summary['status'])}</h2>
  <pre>{e(err['message'])}</pre>
  <p><strong>Next action:</strong> {e(err.get('next_action') or '-')}</p>
  <p><strong>Escalation:</strong> {e(err.get('contact') or level + ' (' + ESCALATION.get(level, '?') + ')') if level else 'none named'}</p>
  <p><strong>Where:</strong> {where}</p>{_stands(run.summary.get("rollback_stands"))}{_services_back(run.summary)}
</div>"""


def _stands(stands: dict | None) -> str:
    """After a failure in 04/05 with the database's rollback good: said, instead of a way back (rollback_stands.py)."""
    return (f'\n  <p class="rb-stands"><strong>Database:</strong> {e(stands["line"])}</p>'
            f'\n  <p><strong>Services:</strong> {e(stands["services"])}</p>') if stands else ""


def _services_back(summary: dict) -> str:
    """What stop-services scaled down that the platform did not report back when run.json was written."""
    items = summary.get("services_way_back") or []
    if not items:
        return ""
    rows = "".join(f"<li>{e(i['service'])}: {e('?' if i['replicas'] is None else i['replicas'])} &rarr; "
                   f"{e(i['target'])} replica(s): <code>{e(i['action'])}</code></li>" for i in items)
    return (f'\n  <p class="rb-services-back"><strong>Services still down</strong> (read from the platform): bring '
            f'them back after the database, with <code>{e(summary["services_way_back_command"])}</code></p><ul>{rows}</ul>')


def _next_actions(run: Evidence) -> str:
    """After a success, in this order: the kept database and how to open it, the lost rows, the redeploy."""
    items = next_actions(run.summary, run.run_dir)
    if not items:
        return ""
    return ("<div class='rb-next' id='next-actions'><h3>Next actions</h3><ol>"
            + "".join(f"<li>{e(text)}" + (f"<br><code>{e(code)}</code>" if code else "") + "</li>" for text, code in items)
            + "</ol></div>")


def _cards(run: Evidence) -> str:
    cards = []
    for m in run.summary.get("metrics", []):
        if m["key"] in ("rto", "rpo", "rows_lost", "downtime"):
            cards.append(f'<div class="rb-card rb-{e(m["status"]).replace(" ", "-")}"><div class="rb-card-name">'
                         f'{e(m["metric"])}</div><div class="rb-card-value">{e(m["actual"])}</div>'
                         f'<div class="rb-card-target">target {e(m["target"])} · {_status(m["status"])}</div></div>')
    return f'<div class="rb-cards">{"".join(cards)}</div>'


def _metrics_table(run: Evidence) -> str:
    rows = "".join(f"<tr><td>{e(m['metric'])}</td><td>{e(m['target'])}</td><td>{e(m['actual'])}</td>"
                   f"<td>{_status(m['status'])}</td><td class='rb-evidence'>{e(m['evidence'])}</td></tr>"
                   for m in run.summary.get("metrics", []))
    return ('<table class="rb-table" id="metrics-table"><thead><tr><th>Metric</th><th>Target</th><th>Actual</th>'
            f"<th>Status</th><th>Evidence</th></tr></thead><tbody>{rows}</tbody></table>")


def _rows_lost_table(run: Evidence) -> str:
    lost = run.summary.get("rows_lost")
    if not lost:
        metric = next((m for m in run.summary.get("metrics", []) if m.get("key") == "rows_lost"), None)
        if metric and metric.get("status") == "pending":
            return ('<h3>Rows lost per table</h3><p class="rb-pending" id="rows-lost-pending">Pending: '
                    f"{e(metric['evidence'])}.</p>")
        return ""
    rows = "".join(
        f"<tr><td>{e(t)}</td><td>{e(', '.join(d['key']))}</td><td>{d['inserted']}</td><td>{d['updated']}</td>"
        f"<td>{d['deleted']}</td><td><strong>{e(d['lost'] if d['comparable'] else 'not comparable')}</strong></td>"
        f"<td class='rb-evidence'>{e(d['note'])}"
        + "".join(f"<br>{k}: {e(', '.join('(' + ', '.join(map(str, key)) + ')' for key in keys))}"
                  for k, keys in d["examples"].items()) + "</td></tr>"
        for t, d in lost["tables"].items())
    return ('<h3>Rows lost per table</h3><table class="rb-table" id="rows-lost-table"><thead><tr><th>Table</th>'
            "<th>Key</th><th>Inserted</th><th>Updated</th><th>Deleted</th><th>Lost</th><th>Note, first keys</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def _checklist(run: Evidence) -> str:
    out = []
    for group, items in checklist(run):
        lis = "".join(f'<li class="rb-check rb-check-{e(i["state"]).replace(" ", "-")}"><span class="rb-box">'
                      f'{MARK[i["state"]]}</span> {e(i["item"])}<span class="rb-evidence"> · {e(i["evidence"])}</span>'
                      "</li>" for i in items)
        out.append(f"<h3>{e(group)}</h3><ul class='rb-checklist'>{lis}</ul>")
    return "".join(out)


def _service_plot(run: Evidence, figures: dict[str, bytes]) -> str:
    """The service's error rate and p95 latency across the whole run, or one line saying why there is none."""
    if "service" in figures:
        return f"<h3 id='service'>The service across the run</h3>{_img(figures['service'], plots.ALT['service'])}"
    return f"<p class='rb-note' id='service'>No service plot: {e(plots.service_absent(run))}.</p>"


def _timeline(run: Evidence, figures: dict[str, bytes]) -> str:
    rows = "".join(f"<tr><td>{e(m['milestone'])}</td><td>&lt; {duration(m['target_seconds'])}</td>"
                   f"<td>{e(duration(m['seconds']))}</td><td>{_status(m['status'])}</td></tr>"
                   for m in run.summary.get("milestones", []))
    phases = "".join(f"<tr><td><a href='#phase-{e(p['name'])}'>{e(p['name'])}</a></td><td>{_status_word(p['status'])}"
                     f"</td><td>{e(duration(p['seconds']))}</td><td>{e((p['started_at'] or '')[11:23])}</td></tr>"
                     for p in run.summary.get("phases", []))
    plot = _img(figures["timeline"], plots.ALT["timeline"]) \
        if "timeline" in figures else ""
    return (f"{plot}<div class='rb-two'><table class='rb-table'><thead><tr><th>Drill milestone</th><th>Target</th>"
            f"<th>Reached after</th><th>Status</th></tr></thead><tbody>{rows}</tbody></table>"
            "<table class='rb-table'><thead><tr><th>Phase</th><th>Status</th><th>Time</th><th>Started (UTC)</th></tr>"
            f"</thead><tbody>{phases}</tbody></table></div>"
            "<p class='rb-note'>Times are counted from the run's first journal event; the drill counts from the "
            "incident's declaration, which the run does not know.</p>")


def _status_word(status: str) -> str:
    """A phase's status (succeeded, failed, running ...) styled like the metric it amounts to."""
    kind = {"succeeded": "pass", "running": "not reached"}.get(status, "fail" if status in BAD else "not measured")
    return f'<span class="rb-status rb-{kind.replace(" ", "-")}">{MARK[kind]} {e(status)}</span>'


def _when(ts: str | None) -> str:
    return datetime.fromisoformat(ts).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def _facts(run: Evidence) -> str:
    s = run.summary
    items = [("Backup", (s.get("backup") or {}).get("path")), ("Backup taken at", (s.get("backup") or {}).get("taken_at")),
             ("Plan digest", s.get("plan_digest")),
             ("Approval", f"{s['approval']['how']} at {s['approval']['at']}" if s.get("approval") else "none"),
             ("Kept pre-rollback database", s.get("kept_database")),
             ("To open it for inspection", s.get("open_kept_database")),
             ("Post-mortem draft", POSTMORTEM_NAME if (run.run_dir / POSTMORTEM_NAME).exists() else "not written"),
             ("Audit chain head when this report was rendered",
              f"{s['audit']['head']} ({s['audit']['events']} events): rollback verify-audit RUN_DIR --head <head>"
              if s.get("audit") else "none")]
    return "<dl class='rb-facts'>" + "".join(f"<dt>{e(k)}</dt><dd><code>{e(v or '-')}</code></dd>" for k, v in items) \
        + "</dl>"


def render(run_dir: Path) -> str:
    run = Evidence(run_dir)
    s = run.summary
    bodies, failed_cells = render_notebooks(run)
    figures = plots.all_png(run)
    phase_status = {p["name"]: p for p in s.get("phases", [])}
    sections = []
    for phase in PHASES:
        p = phase_status.get(phase, {"status": "not run", "seconds": None})
        head = (f"<h2>{e(phase)} {_status_word(p['status'])} <small>{e(duration(p['seconds']))}</small> "
                f"<a class='rb-top' href='#summary'>summary &#8593;</a></h2>")
        # A notebook prepared for a phase that never ran (rollback lab writes all five) is not evidence of it.
        body = (bodies.get(phase) if phase in phase_status else None) or (
            "<p class='rb-note'>The journal records this phase, but its executed notebook is not in the run folder."
            "</p>" if phase in phase_status else "<p class='rb-note'>This phase did not run in this run.</p>")
        sections.append(f"<section class='rb-phase' id='phase-{e(phase)}'>{head}{body}</section>")
    extra_plots = "" if (run.run_dir / "05_close.ipynb").exists() else "".join(
        _img(figures[name], plots.ALT[name]) for name in ("rows", "rows_lost") if name in figures)
    toc = "".join(f"<a href='#phase-{e(p)}'>{e(p)}</a>" for p in PHASES)
    title = f"Rollback of {s.get('migration_id')} on {s.get('environment')}: {s['status']}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<style>{_css()}</style></head>
<body class="rb-body">
<nav class="rb-toc"><a href="#summary">Summary</a><a href="#timeline">Timeline</a><a href="#metrics">Metrics</a>
<a href="#checklist">Checklist</a>{toc}</nav>
<main>
<section id="summary">
<p class="rb-production rb-production-{e(s['production']['state']).replace(' ', '-')}" id="production">
{e(s['production']['line'])}</p>
<header class="rb-header rb-outcome-{e(s['status'])}">
<h1>Rollback of <code>{e(s.get('migration_id'))}</code> on <code>{e(s.get('environment'))}</code></h1>
<p class="rb-outcome"><span class="rb-badge">{e(s['status'].upper())}</span> exit code <strong>{e(s['exit_code'])}</strong>
 · {e(s.get('outcome') or '')}
{' · <strong>DRY RUN</strong>: nothing was changed' if s.get('dry_run') else ''}
 · run <code>{e(s.get('run_id'))}</code> · started {e(_when(s.get('started_at')))} · finished {e(_when(s.get('finished_at')))}
 · {e(duration(s.get('duration_seconds')))}</p>
</header>
{_error_box(run, failed_cells)}
{_next_actions(run)}
{_cards(run)}
<h2 id="timeline">Timeline</h2>
{_timeline(run, figures)}
{_service_plot(run, figures)}
<h2 id="metrics">Success metrics</h2>
{_metrics_table(run)}
{_rows_lost_table(run)}
{salvage_section(s)}
{extra_plots}
<h2 id="checklist">Post-rollback checklist</h2>
<p class="rb-note">The seed plan's checklist: &#10004; proved by this run (evidence beside it), &#10008; failed,
&#8211; not reached, &#9744; for people to check and tick.</p>
{_checklist(run)}
<h2>Run facts</h2>
{_facts(run)}
</section>
{''.join(sections)}
</main>
<footer class="rb-footer">Rendered {e(datetime.now(timezone.utc).isoformat(timespec='seconds'))} by rollbacklib from
the executed notebooks, <code>journal.jsonl</code>, <code>state.json</code> and <code>run.json</code> in
<code>{e(run.run_dir)}</code>.</footer>
</body></html>
"""


def write(run_dir: Path, path: Path | None = None) -> Path:
    """Write the report to ``path`` (default: ``report.html`` in the run folder)."""
    path = Path(path) if path else Path(run_dir) / REPORT_NAME
    path.write_text(render(run_dir), encoding="utf-8")
    return path


def _css() -> str:
    from pygments.formatters import HtmlFormatter

    return (TEMPLATES / "report.css").read_text(encoding="utf-8") + HtmlFormatter(style="default").get_style_defs(
        ".highlight")
