"""The report's salvage section: what the restore was about to discard, and per table what was carried or conflicted.

Read from ``run.json`` only: ``rows_lost_preview`` (step ``salvage-preview``, before the gate:
a projection) and ``salvage`` (step ``salvage-carry``, after the reopen: per table the rows
inserted, updated and deleted after the backup carried into the restored database, and those
that conflicted, with the reasons). Every number is the journal's, none is computed here.
"""

from __future__ import annotations

from html import escape

KINDS = ("inserted", "updated", "deleted")


def _e(value) -> str:
    return escape("" if value is None else str(value))


def _preview(preview: dict | None) -> str:
    if not preview:
        return ""
    counts = ", ".join(f"{preview.get(k, 0)} {k}" for k in KINDS)
    return (f'<p id="salvage-preview">Before the gate (a projection, {_e(preview.get("measured_at"))}): the restore '
            f"would discard <strong>{_e(preview.get('total'))}</strong> row(s) written after the backup ({_e(counts)})."
            "</p>")


def section(summary: dict) -> str:
    """The HTML of the salvage section, or "" when the run had neither a preview nor a carry."""
    preview, carried = summary.get("rows_lost_preview"), summary.get("salvage")
    if not preview and not carried:
        return ""
    out = ["<h3>Salvage: the rows written after the backup</h3>", _preview(preview)]
    if not carried:
        out.append('<p class="rb-note" id="salvage-off">Salvage was off: these rows were not carried over (they are '
                   "in the kept database; <code>rollback lost-rows</code> exports them).</p>")
        return "".join(out)
    lost = carried.get("rows_lost") or {}
    out.append(f'<p id="salvage-result">Carried into the restored database after the reopen: '
               f"<strong>{_e(carried.get('carried'))}</strong> row(s); conflicted (left in the kept database, listed "
               f"in <code>salvage/conflicts.jsonl</code>): <strong>{_e(carried.get('conflicts'))}</strong>; of "
               f"{_e(lost.get('total'))} counted after the window.</p>")
    rows = []
    for table, d in sorted((carried.get("tables") or {}).items()):
        cells = "".join(f"<td>{_e(d['carried'].get(k, 0))}</td><td>{_e(d['conflicts'].get(k, 0))}</td>"
                        for k in KINDS)
        reasons = "; ".join(f"{_e(reason)}: {_e(n)}" for reason, n in (d.get("reasons") or {}).items())
        rows.append(f"<tr><td>{_e(table)}</td>{cells}<td class='rb-evidence'>{reasons}</td></tr>")
    head = "".join(f"<th>{k} carried</th><th>{k} conflicted</th>" for k in KINDS)
    out.append(f'<table class="rb-table" id="salvage-table"><thead><tr><th>Table</th>{head}<th>Conflict reasons</th>'
               f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return "".join(out)
