"""The end of a run, however it was run: ``run.json``, ``report.html`` and ``postmortem.md``, sealed.

``rollback run`` does this once its last phase ends; a run done by hand ends elsewhere: when
``rollback lab`` stops JupyterLab, and in the last cell of ``05_close`` (papermill, nbconvert,
a notebook in JupyterLab). Each writes the same three files with the same functions, whatever
the outcome, and seals the report and the post-mortem into the journal's chain. ``run.json``
says which phases ran and how each ended; a phase that did not run is not in it, and the report
shows it as not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rollbacklib.audit import chain_head
from rollbacklib.summary import write_summary


@dataclass
class Concluded:
    summary: dict
    report: Path | None  # report.html, or None when it could not be written
    report_error: str | None  # why (journaled; the run's outcome is not changed by it)


def conclude(run_dir: Path, secrets: list[str] = ()) -> Concluded:
    """Write ``run.json``, then ``report.html`` and ``postmortem.md`` (each sealed); return them."""
    from rollbacklib.pipeline import write_report

    summary = write_summary(run_dir)
    report, report_error = write_report(run_dir, secrets)
    summary["audit"] = chain_head(run_dir)  # the seals moved the head on; run.json has it too
    return Concluded(summary, report, report_error)
