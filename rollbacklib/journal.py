"""The run's journal: one JSON line per event (time, phase, step, status, evidence).

Resume, the timeline, the metrics and the post-mortem all read it. Every event passes through
``redact`` first, so no secret the run knows of can reach the file.

The journal is a hash chain (``rollbacklib.audit`` verifies it): each event carries ``seq``,
its number in the journal (1, 2, ...), and ``prev``, the sha256 of the previous line's bytes
as written (without its newline; the first event's ``prev`` is ``GENESIS``). Several
processes write one journal (each phase's kernel, the runner), so reading the last line and
appending the next happen under an exclusive ``flock`` on the journal file. Journals written
before the chain existed have neither field and are read as before.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Iterable

JOURNAL_NAME = "journal.jsonl"
GENESIS = "0" * 64  # the ``prev`` of a journal's first event


def line_hash(line: bytes) -> str:
    """The sha256 that the next event's ``prev`` names: of a line's bytes, without its newline."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()

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
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
            prefix, seq, prev = _chain_tail(fh)
            event = {"seq": seq, "prev": prev, **event}  # after redaction: a hash is never rewritten
            fh.write(prefix + json.dumps(event, default=str).encode() + b"\n")
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
            continue  # a line cut short by a killed writer: the events around it stand
    return events


def _chain_tail(fh) -> tuple[bytes, int, str]:
    """What the next event needs from the journal's end: a newline to write first (after a line cut
    short by a killed writer), its ``seq`` and its ``prev``. Called with the journal locked."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    if size == 0:
        return b"", 1, GENESIS
    data, pos, block = b"", size, 8192
    while True:  # read back from the end until the last complete event (or the start) is in hand
        step, block = min(block, pos), block * 2
        pos -= step
        fh.seek(pos)
        data = fh.read(step) + data
        lines = data.split(b"\n")
        if pos > 0:
            lines = lines[1:]  # the first piece may be the end of a longer line
        seq = _last_seq(lines)
        if seq is not None or pos == 0:
            break
    prefix = b"" if data.endswith(b"\n") else b"\n"
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    if seq is None:  # no event carries a number yet: a journal from before the chain
        seq = sum(1 for line in data.split(b"\n") if line.strip())
    return prefix, seq + 1, line_hash(last)


def _last_seq(lines: list[bytes]) -> int | None:
    """The ``seq`` of the last complete event among ``lines``; None if it has none (or there is none)."""
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index].strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("seq"), int):
            return event["seq"]
        return None
    return None
