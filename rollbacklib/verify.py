"""``rollback verify-audit``: what was true at the head stays checkable.

The events up to the head (given with ``--head``, or the last head signed by the key given with
``--public-key``, or the last head the run journaled) are the evidence. Every file sealed at or
before the head must still have the sha256 it had there, whatever was appended since: a later
seal never turns a changed file into intact, and the event that re-sealed it is named. Events
after the head are listed apart (what they did, which files they re-sealed); one that no later
command wrote (it gives no reason) is an alteration. ``run.json`` is sealed like any file, and its
status, exit code and metrics are recomputed from the journal and the state
(``rollbacklib.outcome``). Files of the folder that were never sealed are "not part of the
evidence" (an alteration with ``strict``). With a public key every ``head`` signature is checked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rollbacklib.journal import GENESIS, JOURNAL_NAME, line_hash
from rollbacklib.outcome import ARTIFACT, HEAD, NOTIFIED, compute
from rollbacklib.postgres.backup import sha256_of
from rollbacklib.signing import check as check_signature, key_id
from rollbacklib.state import load_state

RUN_SUMMARY = "run.json"
#: After the head, the events a later command writes, each saying why: a seal, a head, a report note, the
#: completion notification (which carries the head).
LATER_COMMAND_STEPS = {ARTIFACT, HEAD, "report", NOTIFIED}
#: The fields of run.json recomputed from the journal and the state.
RECOMPUTED = ("status", "exit_code", "changes_made", "rto_seconds", "rpo_seconds", "downtime_seconds",
              "duration_seconds")


@dataclass
class AuditResult:
    run_dir: Path
    events: int = 0
    head: str = GENESIS  # the journal's last line now
    anchor: str | None = None  # the head the evidence ends at
    anchor_seq: int | None = None
    anchor_source: str = ""
    files: dict[str, str] = field(default_factory=dict)  # path -> "ok" / what is wrong
    problems: list[str] = field(default_factory=list)  # the first is the first altered line or file
    notes: list[str] = field(default_factory=list)  # true but not a failure (a line cut by a killed writer)
    after_head: list[str] = field(default_factory=list)  # events after the head, what each did
    not_evidence: list[str] = field(default_factory=list)  # files of the folder never sealed
    signatures: list[str] = field(default_factory=list)  # heads whose signature was checked
    verified_heads: set[int] = field(default_factory=set)  # journal lines of the head events whose signature holds
    strict: bool = False

    @property
    def intact(self) -> bool:
        return not self.problems and not (self.strict and self.not_evidence)

    @property
    def exit_code(self) -> int:
        return 0 if self.intact else 1


def _parse(line: bytes) -> dict | None:
    try:
        event = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return event if isinstance(event, dict) else None


def verify_audit(run_dir: Path, *, head: str | None = None, public_key=None, strict: bool = False) -> AuditResult:
    """Check the chain, the head, every sealed file as it was at the head, run.json's figures and the signatures.

    ``head``: a chain head kept outside the run folder (the CLI prints it at the end of a run).
    ``public_key``: an Ed25519 public key (``signing.load_public_key``): every signed head must verify
    with it, and without ``head`` the last head it signed is where the evidence ends.
    ``strict``: files of the folder that were never sealed are an alteration, not a note.
    """
    run_dir = Path(run_dir)
    result = AuditResult(run_dir, strict=strict)
    path = run_dir / JOURNAL_NAME
    if not path.exists():
        result.problems.append(f"{path} is missing: there is no journal to verify")
        return result
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    parsed = [(n, line, _parse(line)) for n, line in numbered]
    hashes = {n: line_hash(line) for n, line in numbered}
    events = [e for _, _, e in parsed if e is not None]
    result.events = len(events)
    result.head = hashes[numbered[-1][0]] if numbered else GENESIS

    chained = [(n, e) for n, _, e in parsed if e is not None and "prev" in e]
    if not chained:
        result.problems.append(f"{path} carries no hash chain (written before rollbacklib chained its journal): "
                               "it cannot be verified")
        return result
    _check_chain(result, parsed, hashes, chained[0][0])
    if result.problems:
        return result
    if public_key is not None:
        _check_signatures(result, parsed, hashes, public_key)
    anchor_line = _anchor(result, parsed, hashes, head, public_key)
    if anchor_line is None:
        return result
    before = [e for n, _, e in parsed if e is not None and n <= anchor_line]
    after = [e for n, _, e in parsed if e is not None and n > anchor_line]
    _check_files(result, before, after)
    _list_after(result, after)
    _check_summary(result, events, public_key)
    _not_evidence(result, events)
    return result


def _check_chain(result: AuditResult, parsed, hashes, first_chained: int) -> None:
    """Each line's seq follows the one before and its prev is that line's sha256; name the first break."""
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
            result.problems.append(f"journal line {n} carries no chain link (its seq and prev were removed)")
            break
        seq = event.get("seq")
        if expected_seq is None:
            expected_seq = seq if previous is not None else 1
        if seq != expected_seq:
            after = parsed[index[n] + 1] if index[n] + 1 < len(parsed) else None
            where = seqs.get(expected_seq)
            if where is not None and where != n:
                result.problems.append(f"journal line {n} is out of order: it holds event #{seq}, and event "
                                        f"#{expected_seq} is at line {where} (lines were moved)")
            elif after is not None and after[2] is not None and after[2].get("seq") == expected_seq + 1:
                result.problems.append(f"journal line {n} was altered (it holds event #{seq} where event #{expected_seq} "
                                        "belongs)")
            elif isinstance(seq, int) and seq > expected_seq:
                between = f"between line {previous[0]} and line {n}" if previous else f"before line {n}"
                result.problems.append(f"journal line {n}: event #{expected_seq} is missing: a line was removed {between}")
            else:
                result.problems.append(f"journal line {n} holds event #{seq} where event #{expected_seq} belongs (a line "
                                        "was moved or copied)")
            break
        want = hashes[previous[0]] if previous is not None else GENESIS
        if event["prev"] != want:
            if previous is None:
                result.problems.append(f"journal line {n} was altered (the first event must chain from the genesis value)")
            else:
                # Line n-1 changed, or line n's own link did: if the line after n still chains to n,
                # line n is as written and the change is in the line before it.
                after = parsed[index[n] + 1] if index[n] + 1 < len(parsed) else None
                own_link_broken = after is not None and after[2] is not None and after[2].get("prev") != hashes[n]
                altered = n if own_link_broken else previous[0]
                result.problems.append(f"journal line {altered} was altered (line {n} chains from sha256 "
                                        f"{event['prev'][:12]}, but line {previous[0]} hashes to {want[:12]})")
            break
        expected_seq = seq + 1
        previous = (n, line)


def _line_of_seq(parsed, seq) -> int | None:
    return next((n for n, _, e in parsed if e is not None and e.get("seq") == seq), None)


def _anchor(result: AuditResult, parsed, hashes, head: str | None, public_key) -> int | None:
    """The journal line the evidence ends at, and where that head came from; None (a problem) if it is not there."""
    by_hash = {h: n for n, h in hashes.items()}
    summary = _read_summary(result.run_dir) or {}
    heads = [(n, e) for n, _, e in parsed if e is not None and e.get("step") == HEAD]
    if head:
        anchor, source = {"head": head.strip().lower(), "seq": None}, "the head given"
    elif public_key is not None:
        signed = [(n, e) for n, e in heads if n in result.verified_heads]
        if not signed:
            result.problems.append("no head in the journal is signed by the key given: the run was not signed with "
                                   "it, or its signed heads were removed")
            return None
        n, event = signed[-1]
        result.anchor, result.anchor_seq, result.anchor_source = hashes[n], event.get("seq"), \
            "the last head signed by the key given"
        return n
    elif heads:
        n, event = heads[-1]
        result.anchor, result.anchor_seq, result.anchor_source = hashes[n], event.get("seq"), \
            "the last head the run journaled"
        return n
    elif isinstance(summary.get("audit"), dict) and summary["audit"].get("head"):
        anchor, source = summary["audit"], "run.json's audit head"
    else:
        result.notes.append("no chain head to compare the journal with (no head event, no run.json): the last "
                            "journal line is not vouched for")
        n = parsed[-1][0]
        result.anchor, result.anchor_seq, result.anchor_source = hashes[n], None, "the journal's last line"
        return n
    line = by_hash.get(anchor["head"])
    if line is not None:
        event = next(e for n, _, e in parsed if n == line)
        result.anchor, result.anchor_seq, result.anchor_source = anchor["head"], (event or {}).get("seq"), source
        return line
    chained = [(n, e) for n, _, e in parsed if e is not None and "prev" in e]
    seq = anchor.get("seq")
    at = _line_of_seq(parsed, seq) if seq else None
    if seq and at is None:
        result.problems.append(f"the journal ends at event #{chained[-1][1].get('seq')}, but {source} is event "
                               f"#{seq}: lines at its end were removed")
    elif at is not None:
        result.problems.append(f"journal line {at} was altered (its sha256 is not {source}, {anchor['head'][:12]})")
    else:
        result.problems.append(f"no journal line hashes to {source} ({anchor['head'][:12]}): the journal's end was "
                               "altered or removed")
    return None


def _seals(events: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for event in events:
        evidence = event.get("evidence")
        if event.get("step") == ARTIFACT and isinstance(evidence, dict) and "path" in evidence:
            found.setdefault(evidence["path"], []).append(event)
    return found


def _what(event: dict) -> str:
    reason = (event.get("evidence") or {}).get("reason")
    return f"event #{event.get('seq')}" + (f" ({reason})" if reason else "")


def _check_files(result: AuditResult, before: list[dict], after: list[dict]) -> None:
    """Each file sealed at or before the head has the sha256 of its last seal there; later seals do not count."""
    at_head, later = _seals(before), _seals(after)
    for name in sorted(set(at_head) | set(later)):
        path = Path(name) if Path(name).is_absolute() else result.run_dir / name
        sealed = at_head[name][-1] if name in at_head else later[name][-1]
        recorded, seq = sealed["evidence"]["sha256"], sealed.get("seq")
        where = "" if name in at_head else " after the head"
        if not path.exists():
            result.files[name] = "missing"
            result.problems.append(f"file {name} is missing (sealed as sha256 {recorded[:12]} by event #{seq}{where})")
            continue
        found = sha256_of(path)
        if found == recorded:
            result.files[name] = "ok"
            continue
        result.files[name] = "altered"
        resealed = [e for e in later.get(name, []) if e["evidence"]["sha256"] == found] if name in at_head else []
        text = f"file {name} was altered: sha256 {found[:12]}, sealed as {recorded[:12]} by event #{seq}{where}"
        if resealed:
            text += (f"; re-sealed after the head by {_what(resealed[-1])}, which does not make it what it was at "
                     "the head")
        result.problems.append(text)


def _list_after(result: AuditResult, after: list[dict]) -> None:
    """What each event after the head did; one that no later command wrote is an alteration."""
    later_attempt = False
    for event in after:
        seq, step, evidence = event.get("seq"), event.get("step"), event.get("evidence") or {}
        if step == "attempt":
            later_attempt = True
        if step == ARTIFACT:
            text = f"#{seq} re-sealed {evidence.get('path')} (sha256 {str(evidence.get('sha256'))[:12]})"
        else:
            text = f"#{seq} {event.get('phase')} / {step} {event.get('status')}: {event.get('message')}"
        reason = evidence.get("reason")
        result.after_head.append(text + (f": {reason}" if reason and step == ARTIFACT else "")
                                 + (" [a later attempt: check it against the head it printed]"
                                    if later_attempt and step not in LATER_COMMAND_STEPS else ""))
        if not later_attempt and not (step in LATER_COMMAND_STEPS and reason or step == "report"):
            result.problems.append(f"event #{seq} after the head ({event.get('phase')} / {step} {event.get('status')}) "
                                   "was written by no later command (it gives no reason): what the run did ends at "
                                   "the head")


def _check_signatures(result: AuditResult, parsed, hashes, public_key) -> None:
    """Every head event's signature, and the line it signs, with the key given."""
    run_id = result.run_dir.name
    for n, _, event in parsed:
        if event is None or event.get("step") != HEAD:
            continue
        evidence = event.get("evidence") or {}
        signature, head, seq = evidence.get("signature"), evidence.get("head"), evidence.get("head_seq")
        if not signature:
            result.problems.append(f"head event #{event.get('seq')} (line {n}) is not signed")
            continue
        line = _line_of_seq(parsed, seq)
        if line is None or hashes[line] != head:
            result.problems.append(f"head event #{event.get('seq')} (line {n}) signs event #{seq}, whose line does "
                                   "not hash to the head it names")
        elif not check_signature(public_key, head, seq, run_id, signature):
            result.problems.append(f"head event #{event.get('seq')} (line {n}): the signature does not verify with "
                                   f"key {key_id(public_key)} (signed by {signature.get('key_id')})")
        else:
            result.verified_heads.add(n)
            result.signatures.append(f"event #{seq} signed ({evidence.get('reason')})")
    summary = _read_summary(result.run_dir) or {}
    audit = summary.get("audit") if isinstance(summary.get("audit"), dict) else {}
    if audit.get("signature") and not check_signature(public_key, audit.get("head"), audit.get("seq"), run_id,
                                                      audit["signature"]):
        result.problems.append(f"run.json's audit signature does not verify with key {key_id(public_key)}")


def _read_summary(run_dir: Path) -> dict | None:
    try:
        value = json.loads((run_dir / RUN_SUMMARY).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _check_summary(result: AuditResult, events: list[dict], public_key) -> None:
    """run.json is sealed, and its status, exit code and metrics are what the journal and the state give."""
    summary = _read_summary(result.run_dir)
    if summary is None:
        return
    if RUN_SUMMARY not in _seals(events):
        result.problems.append("run.json is not sealed in the journal (its seal was removed, or it was written "
                               "by hand)")
    audit = summary.get("audit") if isinstance(summary.get("audit"), dict) else {}
    seq = audit.get("seq")
    if not isinstance(seq, int):
        result.problems.append("run.json names no chain head (audit.seq): its figures cannot be recomputed")
        return
    upto = [e for e in events if isinstance(e.get("seq"), int) and e["seq"] <= seq]
    try:
        again = compute(result.run_dir, events=upto, state=load_state(result.run_dir), live=False)
    except Exception as err:  # noqa: BLE001 - a state.json too damaged to read: say so, do not crash
        result.problems.append(f"run.json could not be recomputed: {type(err).__name__}")
        return
    for key in RECOMPUTED:
        if summary.get(key) != again.get(key):
            result.problems.append(f"run.json says {key} {summary.get(key)!r}; the journal and the state give "
                                   f"{again.get(key)!r}")
    lost, lost_again = summary.get("rows_lost") or {}, again.get("rows_lost") or {}
    for key in ("total", "inserted", "updated", "deleted"):
        if lost.get(key) != lost_again.get(key):
            result.problems.append(f"run.json says rows_lost.{key} {lost.get(key)!r}; the journal gives "
                                   f"{lost_again.get(key)!r}")
    live_dependent = {"downtime"} if (again.get("production") or {}).get("state") in ("down", "blocked") else set()
    wanted = {m["key"]: m for m in again.get("metrics", [])}
    for m in summary.get("metrics", []):
        want = wanted.get(m.get("key"))
        if want is None or m.get("key") in live_dependent:
            continue
        for part in ("value", "status"):
            if m.get(part) != want.get(part):
                result.problems.append(f"run.json's metric {m.get('key')} has {part} {m.get(part)!r}; the journal "
                                       f"and the state give {want.get(part)!r}")


def _not_evidence(result: AuditResult, events: list[dict]) -> None:
    sealed = set(_seals(events))
    for path in sorted(p for p in result.run_dir.rglob("*") if p.is_file()):
        name = path.relative_to(result.run_dir).as_posix()
        if name == JOURNAL_NAME or name in sealed or any(part.startswith(".") for part in Path(name).parts):
            continue
        result.not_evidence.append(name)
