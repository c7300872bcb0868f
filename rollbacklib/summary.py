"""The run's summary, ``run.json``: the run's outcome (``rollbacklib.outcome``) written down, signed and sealed.

``run.json`` is evidence like the notebooks: it holds the chain head it was computed at
(``audit``, signed when the run has a signing key), and once written it is sealed into the
journal (``rollbacklib.audit``), so an edit to it is found by ``rollback verify-audit``, which
also recomputes its status, exit code and metrics from the journal and the state.
"""

from __future__ import annotations

from pathlib import Path

from rollbacklib.audit import record_artifact
from rollbacklib.files import atomic_write_json
from rollbacklib.outcome import (attempts, compute, finished_phases, first_error, phase_table,  # noqa: F401
                                 phase_word)  # the runner's
from rollbacklib.errors import ConfigError
from rollbacklib.signing import chain_head, signed_head

RUN_SUMMARY = "run.json"


def summarize(run_dir: Path) -> dict:
    """Status, timings, RTO, RPO, validation, the success metrics, production's state and the chain head."""
    try:
        audit = signed_head(Path(run_dir))
    except ConfigError as err:  # the key named but not usable: run.json says so, the head is unsigned
        audit = chain_head(Path(run_dir)) | {"not_signed": err.message}
    return compute(Path(run_dir)) | {"audit": audit}


def write_summary(run_dir: Path, *, reason: str = "the run's summary", **extra) -> dict:
    """Write ``run.json`` and seal it into the journal (``reason``: why it was written, in its seal)."""
    summary = summarize(run_dir) | extra
    atomic_write_json(Path(run_dir) / RUN_SUMMARY, summary)
    record_artifact(run_dir, Path(run_dir) / RUN_SUMMARY, "summary", reason=reason)
    return summary
