"""The end of a run, however it was run: ``run.json``, ``report.html`` and ``postmortem.md``, sealed.

``rollback run`` does this once its last phase ends; a run done by hand ends elsewhere: when
``rollback lab`` stops JupyterLab, and in the last cell of ``05_close`` (papermill, nbconvert,
a notebook in JupyterLab). Each writes the same three files with the same functions, whatever
the outcome, and seals the report and the post-mortem into the journal's chain. ``run.json``
says which phases ran and how each ended; a phase that did not run is not in it, and the report
shows it as not run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from rollbacklib import completion
from rollbacklib.audit import record_artifact, record_head
from rollbacklib.journal import JOURNAL_NAME, Journal
from rollbacklib.summary import write_summary


@dataclass
class Concluded:
    summary: dict
    report: Path | None  # report.html, or None when it could not be written
    report_error: str | None  # why (journaled; the run's outcome is not changed by it)


def conclude(run_dir: Path, secrets: list[str] = ()) -> Concluded:
    """Write ``run.json``, then ``report.html`` and ``postmortem.md`` (each sealed); return them.

    A run concluded already, with nothing journaled since but seals and heads (05's last cell,
    then JupyterLab stopping), keeps the evidence it has: rewriting it would move what was true
    at the head the person was given.
    """
    already = _concluded_already(Path(run_dir))
    if already is not None:
        return already
    summary = write_summary(run_dir)
    report, report_error = write_report(run_dir, secrets)
    summary["audit"] = record_head(run_dir, "end of the run", secrets=secrets)  # signed, to syslog
    # then the completion notification, carrying that head: a copy of it outside the run folder (never raising)
    summary["notifications"] = summary.get("notifications", []) + completion.send(run_dir, summary, summary["audit"],
                                                                                  secrets)
    return Concluded(summary, report, report_error)


def _concluded_already(run_dir: Path) -> Concluded | None:
    import json

    from rollbacklib.journal import read_events
    from rollbacklib.outcome import NOT_STEPS

    events = read_events(run_dir)
    last_step = max((i for i, e in enumerate(events) if e["step"] not in NOT_STEPS), default=-1)
    sealed = max((i for i, e in enumerate(events) if e["step"] in NOT_STEPS
                  and e["evidence"].get("path") == "run.json"), default=-1)
    report = run_dir / "report.html"
    if sealed < last_step or not (run_dir / "run.json").exists() or not report.exists():
        return None
    return Concluded(json.loads((run_dir / "run.json").read_text()), report, None)


def import_report_ahead() -> threading.Thread:
    """Import what rendering the report takes (nbconvert, matplotlib: 1-2 s) in the background while the phases
    run, so the end of the run does not wait for it. The report is still rendered here, in this process."""

    def load() -> None:
        try:
            import nbconvert.exporters.html  # noqa: F401

            import rollbacklib.report.html  # noqa: F401 - and matplotlib, through the plots
        except Exception:  # noqa: BLE001 - write_report imports them again and journals what fails
            pass

    thread = threading.Thread(target=load, name="import-report", daemon=True)
    thread.start()
    return thread


def write_report(run_dir: Path, secrets: list[str] = ()) -> tuple[Path | None, str | None]:
    """``report.html`` and ``postmortem.md`` for every run, whatever its outcome, each sealed into the journal.

    A failure here is journaled and returned, never raised: it must not change the run's outcome
    or exit code (``run.json`` is already written), and ``rollback report RUN_DIR`` can try again.
    """
    try:
        from rollbacklib.report import write_all

        paths = write_all(run_dir)
        record_artifact(run_dir, paths["postmortem"], "evidence", phase="run", secrets=secrets)
        record_artifact(run_dir, paths["report"], "report", phase="run", secrets=secrets)
    except Exception as err:  # noqa: BLE001 - whatever broke the report, the run's outcome stands
        message = f"{type(err).__name__}: {err}".splitlines()[0]
        Journal(run_dir / JOURNAL_NAME, secrets=secrets).record(
            "run", "report", "info", f"the report could not be written: {message}", error=type(err).__name__,
            next_action=f"run `rollback report {run_dir}` again; the run's outcome is in run.json")
        return None, message
    return paths["report"], None
