"""What the phases of one run hand each other (``state.json``), as a typed model.

Notebooks run in separate kernels, so everything a later phase needs is kept here, never in
memory. A field that a phase needs and an earlier one did not produce is an error that names
the producer (``RunState.need``), never a silent ``None``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from rollbacklib.errors import AbortedError
from rollbacklib.files import atomic_write_text

STATE_NAME = "state.json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackupRef(_Model):
    path: str
    format: str
    has_manifest: bool
    taken_at: str
    sha256: str | None = None
    size_bytes: int


class Captured(_Model):
    folder: str
    row_counts: dict[str, int]
    files: dict[str, str]
    schema_fingerprint: str


class Approval(_Model):
    """Who allowed the destructive steps, how, when, and for which plan (its digest)."""

    how: str
    at: str
    plan_digest: str
    migration_id: str


class RestoredCopy(_Model):
    """The copy beside the live database, and how to recognise it without connecting to it."""

    name: str
    oid: int | None = None  # kept by a rename: the copy is the copy whatever it is named
    validated: bool = False
    marker: str | None = None  # the comment its validation gave it (pg_shdescription)
    sessions_at_close: int | None = None  # pg_stat_database.sessions once closed: any later session shows
    seconds: float | None = None
    row_counts: dict[str, int] | None = None


class Blocked(_Model):
    database: str
    previous: dict[str, Any]
    at: str


class Swap(_Model):
    live: str
    kept: str
    restored: str
    completed: bool = False


class StepRecord(_Model):
    status: Literal["ok", "skipped", "aborted", "refused", "failed", "bad-usage", "undone"]
    at: str


class RunState(_Model):
    database: str | None = None
    server: dict[str, Any] | None = None
    migration: dict[str, Any] | None = None
    migration_state: str | None = None
    backup: BackupRef | None = None
    captured: Captured | None = None
    plan_digest: str | None = None
    original_oid: int | None = None  # the live database's oid when the plan was written
    original_settings: dict[str, Any] | None = None  # its ALLOW_CONNECTIONS and CONNECTION LIMIT then
    approval: Approval | None = None
    live_properties: dict[str, Any] | None = None
    restored: RestoredCopy | None = None
    blocked: Blocked | None = None
    swap: Swap | None = None
    steps: dict[str, StepRecord] = {}
    notifications: dict[str, dict[str, Any]] = {}  # per channel, what a later send needs (Statuspage's incident id)

    def need(self, field: str, produced_by: str):
        """The value of ``field``; AbortedError naming ``produced_by`` when this run has none yet."""
        value = getattr(self, field)
        if value is None:
            raise AbortedError(f"This run has no {field!r} yet; it is produced by {produced_by}.",
                               next_action=f"run {produced_by} first in the same run (same reports folder and run_id).")
        return value

    def done(self, step: str) -> bool:
        record = self.steps.get(step)
        return record is not None and record.status == "ok"


def load_state(run_dir: Path) -> RunState:
    path = Path(run_dir) / STATE_NAME
    return RunState.model_validate_json(path.read_text()) if path.exists() else RunState()


def save_state(run_dir: Path, state: RunState) -> RunState:
    atomic_write_text(Path(run_dir) / STATE_NAME, state.model_dump_json(indent=2))
    return state
