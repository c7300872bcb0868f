"""What a run left in its folder, read once for the report, the plots, the checklist and the post-mortem.

The outcome, the metrics and production's state come from ``rollbacklib.outcome.compute``
(the journal, the state and the live catalog): the same result ``run.json`` holds, never
``run.json`` itself, so an edited ``run.json`` cannot change what a report says.
"""

from __future__ import annotations

import json
from pathlib import Path

from rollbacklib.journal import read_events
from rollbacklib.outcome import compute
from rollbacklib.metrics import step_table
from rollbacklib.state import load_state


class Evidence:
    """A run folder's journal, state and outcome."""

    def __init__(self, run_dir, *, live: bool = True):
        self.run_dir = Path(run_dir)
        self.events = read_events(self.run_dir)
        self.state = load_state(self.run_dir)
        self.summary = compute(self.run_dir, events=self.events, state=self.state, live=live)

    @property
    def steps(self) -> list[dict]:
        return step_table(self.events)

    def manifest(self) -> dict | None:
        from rollbacklib.postgres import backup as bk

        if self.state.backup is None or not self.state.backup.has_manifest:
            return None
        try:
            return bk.load_manifest(Path(self.state.backup.path))
        except Exception:  # a manifest gone or damaged since: the report still renders
            return None

    def row_counts(self) -> dict[str, dict[str, int]]:
        """Rows per table, each series named for the database it was counted in."""
        series = {}
        manifest = self.manifest()
        if manifest and manifest.get("row_counts"):
            series["the backup (before the migration)"] = manifest["row_counts"]
        if self.state.captured:
            name = self.state.database or "the live database"
            series[f"{name} at the rollback (capture)"] = self.state.captured.row_counts
        after = dict(self.state.restored.row_counts or {}) if self.state.restored else {}
        lost = self.summary.get("rows_lost")
        for table, d in (lost or {}).get("tables", {}).items():
            if d.get("restored_rows") is not None:
                after[table] = d["restored_rows"]
        if after:
            copy = self.state.restored.name if self.state.restored else "the restored copy"
            live = self.state.swap is not None and self.state.swap.completed
            series[f"restored copy {copy}" + (" (now live)" if live else " (closed, not live)")] = after
        return series

    def migration_row(self) -> dict | None:
        """The migration's ``_prisma_migrations`` row as captured before the restore (phase 01)."""
        captured = self.state.captured
        if captured and "migrations" in captured.files:
            path = Path(captured.folder) / captured.files["migrations"]
            if path.exists():
                rows = json.loads(path.read_text())
                row = next((r for r in rows if r.get("migration_name") == self.summary.get("migration_id")), None)
                if row:
                    return row
        return self.state.migration


def next_actions(summary: dict, run_dir: Path) -> list[tuple[str, str | None]]:
    """After a success, what people do next, in order: (what, the command or SQL for it)."""
    if summary.get("status") != "succeeded" or summary.get("dry_run"):
        return []
    items: list[tuple[str, str | None]] = []
    if summary.get("kept_database"):
        items.append((f"The pre-rollback database is kept as {summary['kept_database']}, closed to connections. "
                      "To open it for inspection (on the maintenance database):", summary.get("open_kept_database")))
    lost = summary.get("rows_lost") or {}
    if lost.get("total"):
        items.append((f"{lost['total']} row(s) written after the backup were discarded by the restore. Export them "
                      "from the kept database, one file per table:", f"rollback lost-rows {run_dir} --out DIR"))
    choice = summary.get("strategies") or {}
    if choice.get("chosen") == "resolve-only":
        for blocker in (choice.get("situation") or {}).get("blockers") or []:
            items.append((f"Before the next deploy: {blocker['must_change']} (first: "
                          f"{', '.join(blocker['first_keys'])}). They are found by:", blocker["query"]))
        items.append((f"{summary.get('migration_id')} is marked rolled back: the next `prisma migrate deploy` applies "
                      "it again. Fix the data (above) or the migration first.", None))
        return items
    items.append((f"Redeploy a release without {summary.get('migration_id')}: the next `prisma migrate deploy` "
                  "would apply it again.", None))
    return items
