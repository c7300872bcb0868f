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


def unsealed_name(run_dir: Path, name: str) -> Path:
    """``name`` in ``run_dir``, or, once that file is sealed into the journal, the first ``stem-N.suffix`` free.

    A report rendered again after the run goes to a new file: the one sealed stays as it was sealed.
    """
    from rollbacklib.audit import artifacts

    run_dir = Path(run_dir)
    sealed = artifacts(run_dir)
    path, number = run_dir / name, 1
    while path.name in sealed or (number > 1 and path.exists()):
        number += 1
        path = run_dir / f"{Path(name).stem}-{number}{Path(name).suffix}"
    return path
