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

import json
from dataclasses import dataclass, field
from pathlib import Path

from rollbacklib.files import atomic_write_json
from rollbacklib.postgres.backup import sha256_of
from rollbacklib.journal import GENESIS, JOURNAL_NAME, Journal, line_hash, read_events

ARTIFACT = "artifact"  # the journal step of an event that records a file's sha256
RUN_SUMMARY = "run.json"
#: Files of a run folder that are not sealed by hash: the journal is the chain itself, run.json
#: is rewritten with each new head (and recomputed from the journal), the rest is not evidence.
NOT_SEALED = {JOURNAL_NAME, RUN_SUMMARY}


def _relative(run_dir: Path, path: Path) -> str:
    try:
        return path.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def record_artifact(run_dir: Path, path: Path, kind: str, *, phase: str = "", secrets=None) -> dict:
    """Put ``path``'s sha256 into the run's journal (and the new head into ``run.json``); return the event.

    ``kind`` says what the file is (``notebook``, ``report``, ``evidence``). Before hashing, every
    secret the run knows of is masked in the file (``secrets``: the run's own, read from its config,
    when not given), so a file is sealed only once it is clean.
    """
    from rollbacklib import redaction

    run_dir = Path(run_dir)
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = run_dir / path  # a name in the run folder
    secrets = redaction.run_secrets(run_dir) if secrets is None else list(secrets)
    redaction.scrub_file(path, secrets)
    digest, size = sha256_of(path), path.stat().st_size
    name = _relative(run_dir, path)
    event = Journal(run_dir / JOURNAL_NAME, secrets=secrets).record(
        phase or _last_phase(run_dir), ARTIFACT, "info", f"{name} sha256 {digest[:12]}", path=name, kind=kind,
        sha256=digest, bytes=size)
    update_summary_head(run_dir)
    return event


def record_changed_files(run_dir: Path, *, phase: str = "", secrets=None, notebook: Path | None = None) -> list[dict]:
    """Seal every evidence file of the run folder that is new or changed since it was last recorded.

    ``notebook`` (the phase's executed notebook) is recorded first, as kind ``notebook``.
    """
    run_dir = Path(run_dir)
    from rollbacklib import redaction

    secrets = redaction.run_secrets(run_dir) if secrets is None else list(secrets)
    recorded = artifacts(run_dir)
    events = []
    if notebook is not None and Path(notebook).exists():
        events.append(record_artifact(run_dir, notebook, "notebook", phase=phase, secrets=secrets))
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        name = _relative(run_dir, path)
        if name in NOT_SEALED or any(part.startswith(".") for part in Path(name).parts):
            continue
        if notebook is not None and path.resolve() == Path(notebook).resolve():
            continue
        redaction.scrub_file(path, secrets)  # compared as it will be sealed
        last = recorded.get(name)
        if last is None or last["evidence"]["sha256"] != sha256_of(path):
            kind = {".ipynb": "notebook", ".html": "report"}.get(path.suffix, "evidence")
            events.append(record_artifact(run_dir, path, kind, phase=phase, secrets=secrets))
    return events


def artifacts(run_dir: Path) -> dict[str, dict]:
    """The latest ``artifact`` event of each file, by its path in the run folder."""
    return {e["evidence"]["path"]: e for e in read_events(run_dir)
            if e.get("step") == ARTIFACT and isinstance(e.get("evidence"), dict) and "path" in e["evidence"]}


def _last_phase(run_dir: Path) -> str:
    events = read_events(run_dir)
    return events[-1]["phase"] if events else "audit"


# --- the head --------------------------------------------------------------------------------

def chain_head(run_dir: Path) -> dict:
    """The hash of the journal's last line and how many events it holds: what anchors the chain."""
    path = Path(run_dir) / JOURNAL_NAME
    lines = _lines(path.read_bytes()) if path.exists() else []
    events = [e for e in (_parse(line) for line in lines) if e is not None]
    head = line_hash(lines[-1]) if lines else GENESIS
    return {"algorithm": "sha256", "head": head, "events": len(events),
            "seq": events[-1].get("seq") if events else 0,
            "verify": f"rollback verify-audit {Path(run_dir)}"}


def update_summary_head(run_dir: Path) -> None:
    """Keep ``run.json``'s ``audit`` (the head) current after the journal grew; nothing else in it changes."""
    path = Path(run_dir) / RUN_SUMMARY
    if not path.exists():
        return
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    summary["audit"] = chain_head(run_dir)
    atomic_write_json(path, summary)


# --- verification ----------------------------------------------------------------------------

@dataclass
class AuditResult:
    run_dir: Path
    events: int = 0
    head: str = GENESIS
    files: dict[str, str] = field(default_factory=dict)  # path -> "ok" / what is wrong
    problems: list[str] = field(default_factory=list)  # the first is the first altered line or file
    notes: list[str] = field(default_factory=list)  # true but not a failure (a line cut by a killed writer)

    @property
    def intact(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.intact else 1


def _lines(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if line.strip()]


def _parse(line: bytes) -> dict | None:
    try:
        event = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return event if isinstance(event, dict) else None


def verify_audit(run_dir: Path, *, head: str | None = None) -> AuditResult:
    """Check the journal's chain, its head and every sealed file; name the first thing altered.

    ``head``: a chain head kept outside the run folder (the CLI prints it at the end of a run);
    without it, ``run.json``'s ``audit.head`` is used.
    """
    run_dir = Path(run_dir)
    result = AuditResult(run_dir)
    path = run_dir / JOURNAL_NAME
    if not path.exists():
        result.problems.append(f"{path} is missing: there is no journal to verify")
        return result
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    parsed = [(n, line, _parse(line)) for n, line in numbered]
    hashes = {n: line_hash(line) for n, line in numbered}

    chained = [(n, e) for n, _, e in parsed if e is not None and "prev" in e]
    if not chained:
        result.problems.append(f"{path} carries no hash chain (written before rollbacklib chained its journal): "
                               "it cannot be verified")
        return result
    first_chained = chained[0][0]
    legacy = [n for n, _, e in parsed if e is not None and "prev" not in e]
    if legacy and legacy[0] < first_chained:
        result.problems.append(f"journal lines {legacy[0]}-{first_chained - 1} predate the hash chain: they "
                               "cannot be verified")

    expected_seq = None
    previous: tuple[int, bytes] | None = None  # (line number, bytes) of the line before
    seqs = {e.get("seq"): n for n, _, e in parsed if e is not None and "prev" in e}
    index = {n: i for i, (n, _, _) in enumerate(parsed)}
    for n, line, event in parsed:
        if n < first_chained:
            previous = (n, line)
            continue
        if event is None:
            result.notes.append(f"journal line {n} is not a complete event (cut short by a killed writer?)")
            previous = (n, line)
            continue
        if "prev" not in event:
            _problem(result, f"journal line {n} carries no chain link (its seq and prev were removed)")
            break
        seq = event.get("seq")
        if expected_seq is None:
            expected_seq = seq if previous is not None else 1
        if seq != expected_seq:
            after = parsed[index[n] + 1] if index[n] + 1 < len(parsed) else None
            where = seqs.get(expected_seq)
            if where is not None and where != n:
                _problem(result, f"journal line {n} is out of order: it holds event #{seq}, and event "
                                 f"#{expected_seq} is at line {where} (lines were moved)")
            elif after is not None and after[2] is not None and after[2].get("seq") == expected_seq + 1:
                _problem(result, f"journal line {n} was altered (it holds event #{seq} where event #{expected_seq} "
                                 "belongs)")
            elif isinstance(seq, int) and seq > expected_seq:
                between = f"between line {previous[0]} and line {n}" if previous else f"before line {n}"
                _problem(result, f"journal line {n}: event #{expected_seq} is missing: a line was removed {between}")
            else:
                _problem(result, f"journal line {n} holds event #{seq} where event #{expected_seq} belongs (a line "
                                 "was moved or copied)")
            break
        want = hashes[previous[0]] if previous is not None else GENESIS
        if event["prev"] != want:
            if previous is None:
                _problem(result, f"journal line {n} was altered (the first event must chain from the genesis value)")
            else:
                # Line n-1 changed, or line n's own link did: if the line after n still chains to n,
                # line n is as written and the change is in the line before it.
                after = parsed[index[n] + 1] if index[n] + 1 < len(parsed) else None
                own_link_broken = after is not None and after[2] is not None and after[2].get("prev") != hashes[n]
                altered = n if own_link_broken else previous[0]
                _problem(result, f"journal line {altered} was altered (line {n} chains from sha256 "
                                 f"{event['prev'][:12]}, but line {previous[0]} hashes to {want[:12]})")
            break
        expected_seq = seq + 1
        previous = (n, line)

    events = [e for _, _, e in parsed if e is not None]
    result.events = len(events)
    result.head = hashes[numbered[-1][0]] if numbered else GENESIS
    if result.intact:
        _check_head(result, parsed, hashes, head)
    if result.intact:
        _check_files(result, events)
    return result


def _problem(result: AuditResult, text: str) -> None:
    result.problems.append(text)


def _check_head(result: AuditResult, parsed, hashes, head: str | None) -> None:
    """The last line has no successor: compare the chain with the head kept in run.json or given."""
    anchor, source = None, None
    if head:
        anchor, source = {"head": head.strip().lower(), "seq": None}, "the head given"
    else:
        try:
            summary = json.loads((result.run_dir / RUN_SUMMARY).read_text())
            if isinstance(summary.get("audit"), dict) and summary["audit"].get("head"):
                anchor, source = summary["audit"], "run.json's audit head"
        except (OSError, json.JSONDecodeError):
            pass
    if anchor is None:
        result.notes.append("no chain head to compare the last line with (run.json has none): the last "
                            "journal line is not vouched for")
        return
    if anchor["head"] in hashes.values():  # the journal may have grown since: the head is one of its lines
        return
    chained = [(n, e) for n, _, e in parsed if e is not None and "prev" in e]
    seq = anchor.get("seq")
    line = next((n for n, e in chained if e.get("seq") == seq), None) if seq else None
    if seq and line is None:
        _problem(result, f"the journal ends at event #{chained[-1][1].get('seq')}, but {source} is event #{seq}: "
                         "lines at its end were removed")
    elif line is not None:
        _problem(result, f"journal line {line} was altered (its sha256 is not {source}, {anchor['head'][:12]})")
    else:
        _problem(result, f"no journal line hashes to {source} ({anchor['head'][:12]}): the journal's end was "
                         "altered or removed")


def _check_files(result: AuditResult, events: list[dict]) -> None:
    latest: dict[str, tuple[int, dict]] = {}
    for number, event in enumerate(events, 1):
        if event.get("step") == ARTIFACT and isinstance(event.get("evidence"), dict) and "path" in event["evidence"]:
            latest[event["evidence"]["path"]] = (event.get("seq", number), event)
    for name, (seq, event) in latest.items():
        path = Path(name) if Path(name).is_absolute() else result.run_dir / name
        recorded = event["evidence"]["sha256"]
        if not path.exists():
            result.files[name] = "missing"
            _problem(result, f"file {name} is missing (sealed as sha256 {recorded[:12]} by event #{seq})")
            continue
        found = sha256_of(path)
        if found != recorded:
            result.files[name] = "altered"
            _problem(result, f"file {name} was altered: sha256 {found[:12]}, sealed as {recorded[:12]} by "
                             f"event #{seq}")
        else:
            result.files[name] = "ok"
    unsealed = sorted(p.name for p in result.run_dir.glob("*.ipynb") if p.name not in latest)
    if unsealed:
        result.notes.append("not sealed in the journal (a phase cut short, or JupyterLab still open): "
                            + ", ".join(unsealed))
