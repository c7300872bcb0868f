"""The audit trail, tamper-evident: the journal's hash chain and the sha256 of every evidence file.

Each journal event carries ``seq`` (its number) and ``prev`` (the sha256 of the line before
it; ``GENESIS`` for the first): see ``rollbacklib.journal``. Changing, removing or reordering
a line breaks the chain at that line. Files join the chain as ``artifact`` events holding
their sha256: the runner records each executed notebook (and the other evidence files of the
run folder) when papermill has finished writing it, ``rollback lab`` when JupyterLab stops,
and whoever writes ``report.html`` records it with one call::

    record_artifact(run_dir, run_dir / "report.html", "report")

The last line has no successor to vouch for it: ``run.json`` keeps the chain's head (the hash
of the last event and how many events there were), the CLI prints it at the end of a run, and
``verify_audit`` checks the journal against it (or against a head kept elsewhere, which is the
stronger proof: copy it into the incident ticket). ``rollback verify-audit RUN_DIR`` names the
first altered journal line or file.
"""

from __future__ import annotations

from datetime import datetime

from pathlib import Path

from rollbacklib.journal import JOURNAL_NAME, Journal, read_events
from rollbacklib.outcome import ARTIFACT
from rollbacklib.postgres.backup import sha256_of
from rollbacklib.signing import chain_head, record_head  # noqa: F401 - chain_head: the runner's
from rollbacklib.verify import AuditResult, verify_audit  # noqa: F401 - where callers found them before

#: The one file of a run folder that is not sealed by hash: the journal is the chain itself.
NOT_SEALED = {JOURNAL_NAME}


def _relative(run_dir: Path, path: Path) -> str:
    try:
        return path.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def record_artifact(run_dir: Path, path: Path, kind: str, *, phase: str = "", secrets=None,
                    reason: str = "") -> dict:
    """Put ``path``'s sha256 into the run's journal; return the event.

    ``kind`` says what the file is (``notebook``, ``report``, ``summary``, ``evidence``); ``reason``
    why it was written (a command run after the run says so: ``rollback report``, ``resume`` ...).
    Before hashing, every secret the run knows of is masked in the file (``secrets``: the run's own,
    read from its config, when not given), so a file is sealed only once it is clean.
    """
    from rollbacklib import redaction

    run_dir = Path(run_dir)
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = run_dir / path  # a name in the run folder
    secrets = redaction.run_secrets(run_dir) if secrets is None else list(secrets)
    redaction.scrub_file(path, secrets)
    digest, stat = sha256_of(path), path.stat()
    name = _relative(run_dir, path)
    event = Journal(run_dir / JOURNAL_NAME, secrets=secrets).record(
        phase or _last_phase(run_dir), ARTIFACT, "info", f"{name} sha256 {digest[:12]}"
        + (f" ({reason})" if reason else ""), path=name, kind=kind, sha256=digest, bytes=stat.st_size,
        mtime_ns=stat.st_mtime_ns, reason=reason or f"sealed by {kind}")
    return event


def record_changed_files(run_dir: Path, *, phase: str = "", secrets=None, notebook: Path | None = None,
                         reason: str = "") -> list[dict]:
    """Seal every evidence file of the run folder that is new or changed since it was last recorded.

    ``notebook`` (the phase's executed notebook) is recorded first, as kind ``notebook``: that is a
    phase's end, so the journal's head is then signed (with the run's key), logged to syslog and
    journaled (``rollbacklib.signing.record_head``).
    """
    run_dir = Path(run_dir)
    from rollbacklib import redaction

    secrets = redaction.run_secrets(run_dir) if secrets is None else list(secrets)
    recorded = artifacts(run_dir)
    events = []
    if notebook is not None and Path(notebook).exists():
        reason = reason or f"end of phase {phase or Path(notebook).stem}"
        events.append(record_artifact(run_dir, notebook, "notebook", phase=phase, secrets=secrets, reason=reason))
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        name = _relative(run_dir, path)
        if name in NOT_SEALED or any(part.startswith(".") for part in Path(name).parts):
            continue
        if notebook is not None and path.resolve() == Path(notebook).resolve():
            continue
        last = recorded.get(name)
        if last is not None and _untouched_since(path, last):
            continue  # not written since its seal (a change is still caught: verify-audit hashes every file)
        redaction.scrub_file(path, secrets)  # compared as it will be sealed
        if last is None or last["evidence"]["sha256"] != sha256_of(path):
            kind = {".ipynb": "notebook", ".html": "report"}.get(path.suffix, "evidence")
            events.append(record_artifact(run_dir, path, kind, phase=phase, secrets=secrets,
                                          reason=reason or "new or changed since its last seal"))
    if notebook is not None:
        record_head(run_dir, f"end of phase {phase or Path(notebook).stem}", phase=phase, secrets=secrets)
    return events


def _untouched_since(path: Path, seal: dict) -> bool:
    """Same size and modification time as when it was sealed, and already quiet for a second then (a file's
    clock ticks coarsely: a rewrite in the same tick as its seal would keep the time): the copy's row hashes,
    say, are not read again at every phase end."""
    stat, sealed = path.stat(), seal["evidence"]
    quiet = datetime.fromisoformat(seal["ts"]).timestamp() * 1e9 - stat.st_mtime_ns > 1e9
    return sealed.get("mtime_ns") == stat.st_mtime_ns and sealed.get("bytes") == stat.st_size and quiet


def artifacts(run_dir: Path) -> dict[str, dict]:
    """The latest ``artifact`` event of each file, by its path in the run folder."""
    return {e["evidence"]["path"]: e for e in read_events(run_dir)
            if e.get("step") == ARTIFACT and isinstance(e.get("evidence"), dict) and "path" in e["evidence"]}


def _last_phase(run_dir: Path) -> str:
    events = read_events(run_dir)
    return events[-1]["phase"] if events else "audit"
