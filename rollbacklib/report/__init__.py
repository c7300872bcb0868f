"""The evidence of a run, for people: the HTML report, the success metrics, the plots, the post-mortem draft.

``write_all(run_dir)`` writes ``report.html`` and ``postmortem.md`` into a run folder from what
the run left there (the executed notebooks, ``journal.jsonl``, ``state.json``, ``run.json``).
"""

from __future__ import annotations

from pathlib import Path

REPORT_NAME = "report.html"
POSTMORTEM_NAME = "postmortem.md"


def write_all(run_dir: Path) -> dict[str, Path]:
    """Write the report and the post-mortem draft of ``run_dir``; return their paths."""
    from rollbacklib.report import html, postmortem

    run_dir = Path(run_dir)
    return {"postmortem": postmortem.write(run_dir), "report": html.write(run_dir)}
