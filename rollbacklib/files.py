"""Writing a file so that a reader never sees half of it, even if the writer is killed."""

from __future__ import annotations

import json
import os
from pathlib import Path


def atomic_write_text(path: Path, text: str, *, durable: bool = True) -> Path:
    """Write ``text`` to ``path`` through a temporary file beside it, flushed, then renamed over it.

    ``durable=False`` leaves out the fsync: for a file written again and again (papermill saves the
    notebook after every cell) whose last version is made durable by ``fsync_file`` once.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def fsync_file(path: Path) -> None:
    """Make ``path`` as it is now durable (written without fsync, before it is sealed)."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def atomic_write_json(path: Path, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
