"""The run's journal: one JSON line per event (time, phase, step, status, evidence).

Resume, the timeline, the metrics and the post-mortem all read it. Every event passes through
``redact`` first, so no secret the run knows of can reach the file.
"""

from __future__ import annotations

import json
import os
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Iterable

JOURNAL_NAME = "journal.jsonl"

# started/ok: a step's life; planned: what a dry run would do; ran: an action executed; changed: a change to a live
# database took effect; aborted/refused/failed: how a step ended badly; skipped/info: notes.
STATUSES = {"started", "ok", "planned", "ran", "changed", "skipped", "info", "aborted", "refused", "failed", "bad-usage"}


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def redact(value, secrets: Iterable[str]):
    """``value`` with every occurrence of each secret replaced by ***, recursively."""
    secrets = [s for s in secrets if s and len(s) >= 4]
    if not secrets:
        return _plain(value)

    def walk(v):
        if isinstance(v, str):
            for secret in secrets:
                v = v.replace(secret, "***")
            return v
        if isinstance(v, dict):
            return {walk(str(k)): walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return _plain(v)

    return walk(value)


def _plain(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class Journal:
    def __init__(self, path: Path, secrets: Iterable[str] = ()):
        self.path = Path(path)
        self.secrets = list(secrets)

    def record(self, phase: str, step: str, status: str, message: str = "", **evidence) -> dict:
        if status not in STATUSES:
            raise ValueError(f"unknown journal status {status!r}")
        event = redact(
            {"ts": utc_now(), "phase": phase, "step": step, "status": status, "message": message, "evidence": evidence},
            self.secrets,
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(event, default=str) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        return event

    def events(self) -> list[dict]:
        return read_events(self.path)


def changes_made(events: list[dict]) -> bool:
    """Did any event record a change to a live database (the line between exit 3 and exit 5)?"""
    return any(e["status"] == "changed" for e in events)


def read_events(path: Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / JOURNAL_NAME
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a killed writer: everything before it stands
    return events
