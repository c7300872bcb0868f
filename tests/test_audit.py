"""The tamper-evident audit trail: the journal's hash chain, sealed files, and `rollback verify-audit`."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rollbacklib.audit import ARTIFACT, artifacts, chain_head, record_artifact, record_head
from rollbacklib.verify import verify_audit
from rollbacklib.postgres.backup import sha256_of
from rollbacklib.cli import app
from rollbacklib.journal import GENESIS, Journal, line_hash, read_events
from rollbacklib.steps import PHASES
from rollbacklib.summary import summarize, write_summary

runner = CliRunner()


def _write_events(path: Path, count: int, writer: int = 0) -> None:
    journal = Journal(path)
    for i in range(count):
        journal.record("02_execute", f"writer-{writer}", "info", f"event {i} of writer {writer}")


def test_each_event_carries_the_hash_of_the_line_before_it(tmp_path):
    _write_events(tmp_path / "journal.jsonl", 4)
    lines = (tmp_path / "journal.jsonl").read_bytes().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert events[0]["prev"] == GENESIS
    for before, event in zip(lines, events[1:]):
        assert event["prev"] == line_hash(before)


def test_the_chain_holds_when_several_processes_write_at_once(tmp_path):
    path = tmp_path / "journal.jsonl"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_events, args=(path, 60, k)) for k in range(5)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
        assert w.exitcode == 0
    events = read_events(tmp_path)
    assert len(events) == 300 and [e["seq"] for e in events] == list(range(1, 301))
    result = verify_audit(tmp_path)
    assert result.intact, result.problems


def test_a_line_cut_by_a_killed_writer_stays_in_the_chain_and_later_events_are_read(tmp_path):
    _write_events(tmp_path / "journal.jsonl", 2)
    with open(tmp_path / "journal.jsonl", "a") as fh:
        fh.write('{"seq": 3, "prev": "ab", "ts": "2026-01-01T00:00')  # killed mid-line
    _write_events(tmp_path / "journal.jsonl", 2, writer=1)
    events = read_events(tmp_path)
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    result = verify_audit(tmp_path)
    assert result.intact, result.problems
    assert any("line 3 is not a complete event" in note for note in result.notes)


def test_an_old_journal_without_the_chain_is_still_read_and_said_to_be_unverifiable(tmp_path):
    run_dir = tmp_path / "20251202020032_x" / "drill" / "old"
    run_dir.mkdir(parents=True)
    old = [{"ts": "2026-01-01T00:00:0%d+00:00" % i, "phase": "01_prepare", "step": "phase",
            "status": status, "message": "", "evidence": {}} for i, status in enumerate(["started", "ok"])]
    (run_dir / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in old))
    assert [e["status"] for e in read_events(run_dir)] == ["started", "ok"]
    assert summarize(run_dir)["phases"][0]["status"] == "succeeded"
    result = runner.invoke(app, ["verify-audit", str(run_dir)])
    assert result.exit_code == 1 and "carries no hash chain" in result.output
    Journal(run_dir / "journal.jsonl").record("02_execute", "phase", "started")  # appended by a newer runbook
    new = read_events(run_dir)[-1]
    assert new["seq"] == 3 and new["prev"] == line_hash((run_dir / "journal.jsonl").read_bytes().splitlines()[1])


# --- tampering: a run folder with a journal, sealed notebooks, state, report, run.json and a head --------

MINIMAL_CONFIG = """
[audit]
signing_key_env = "ROLLBACK_TEST_AUDIT_KEY"
[environments.drill]
database_url_env = "ROLLBACK_TEST_UNUSED_URL"
backup_dir = "backups"
"""


def _make_run(run_dir: Path, config: Path | None = None) -> Path:
    journal = Journal(run_dir / "journal.jsonl")
    for phase in PHASES[:3]:
        journal.record(phase, "phase", "started", dry_run=False, strategy="swap",
                       **({"config": str(config)} if config else {}))
        journal.record(phase, "check", "info", f"{phase} looked at something", rows=12)
        journal.record(phase, "phase", "ok")
        notebook = run_dir / f"{phase}.ipynb"
        notebook.write_text(json.dumps({"cells": [{"source": f"work of {phase}"}], "metadata": {}}) + "\n")
        record_artifact(run_dir, notebook, "notebook", phase=phase, secrets=[])
    (run_dir / "state.json").write_text("{}")
    (run_dir / "report.html").write_text("<html>ABORTED</html>")
    record_artifact(run_dir, run_dir / "state.json", "evidence", secrets=[])
    record_artifact(run_dir, run_dir / "report.html", "report", secrets=[])
    write_summary(run_dir)
    record_head(run_dir, "end of the run", secrets=[])
    return run_dir


@pytest.fixture
def sealed_run(tmp_path) -> Path:
    return _make_run(tmp_path / "20251202020032_x" / "drill" / "r1")


def _verify(run_dir: Path, *args: str):
    return runner.invoke(app, ["verify-audit", str(run_dir), *args])


def _head(run_dir: Path) -> str:
    return chain_head(run_dir)["head"]


def _lines(run_dir: Path) -> list[str]:
    return (run_dir / "journal.jsonl").read_text().splitlines(keepends=True)


def _rewrite(run_dir: Path, lines: list[str]) -> None:
    (run_dir / "journal.jsonl").write_text("".join(lines))


def test_an_intact_run_verifies_and_run_json_holds_the_head_it_was_computed_at(sealed_run):
    run = json.loads((sealed_run / "run.json").read_text())
    events = read_events(sealed_run)
    seal = next(e for e in events if e["step"] == ARTIFACT and e["evidence"]["path"] == "run.json")
    assert run["audit"]["seq"] == seal["seq"] - 1  # run.json is sealed right after it is written
    assert run["audit"]["head"] == line_hash(_lines(sealed_run)[seal["seq"] - 2].encode())
    assert events[-1]["step"] == "head" and events[-1]["evidence"]["head_seq"] == seal["seq"]
    assert [p["name"] for p in run["phases"]] == list(PHASES[:3])  # sealing is no step of a phase
    result = _verify(sealed_run)
    assert result.exit_code == 0, result.output
    assert "Audit trail intact: 16 events chained, 6 sealed file(s) unchanged" in result.output
    assert _verify(sealed_run, "--head", _head(sealed_run)).exit_code == 0


def test_one_byte_changed_in_a_notebook_is_named(sealed_run):
    path = sealed_run / "02_execute.ipynb"
    data = bytearray(path.read_bytes())
    data[data.index(b"work")] ^= 0x01  # 'w' -> 'v'
    path.write_bytes(bytes(data))
    result = _verify(sealed_run)
    assert result.exit_code == 1
    assert "ALTERED: file 02_execute.ipynb was altered" in result.output


def test_a_missing_notebook_is_named(sealed_run):
    (sealed_run / "01_prepare.ipynb").unlink()
    result = _verify(sealed_run)
    assert result.exit_code == 1 and "file 01_prepare.ipynb is missing" in result.output


@pytest.mark.parametrize("line", [1, 5, 11])
def test_a_changed_journal_line_is_named(sealed_run, line):
    lines = _lines(sealed_run)
    event = json.loads(lines[line - 1])
    event["message"] = event["message"] + " (edited)"
    lines[line - 1] = json.dumps(event) + "\n"
    _rewrite(sealed_run, lines)
    result = _verify(sealed_run)
    assert result.exit_code == 1
    assert f"ALTERED: journal line {line} was altered" in result.output


def test_one_byte_changed_in_the_journal_is_named(sealed_run):
    data = bytearray((sealed_run / "journal.jsonl").read_bytes())
    at = data.index(b"looked at")  # in line 2
    data[at] = ord("L")
    (sealed_run / "journal.jsonl").write_bytes(bytes(data))
    result = _verify(sealed_run)
    assert result.exit_code == 1 and "journal line 2 was altered" in result.output


def test_a_deleted_journal_line_is_named(sealed_run):
    lines = _lines(sealed_run)
    _rewrite(sealed_run, lines[:6] + lines[7:])
    result = _verify(sealed_run)
    assert result.exit_code == 1
    assert "journal line 7: event #7 is missing: a line was removed between line 6 and line 7" in result.output


def test_the_last_journal_line_deleted_or_changed_is_found_by_the_head_kept_elsewhere(sealed_run):
    head, lines = _head(sealed_run), _lines(sealed_run)
    _rewrite(sealed_run, lines[:-1])
    result = _verify(sealed_run, "--head", head)
    assert result.exit_code == 1 and "no journal line hashes to the head given" in result.output
    _rewrite(sealed_run, lines[:-1] + [lines[-1].replace("end of the run", "end of the rum")])
    result = _verify(sealed_run, "--head", head)
    assert result.exit_code == 1 and "no journal line hashes to the head given" in result.output


def test_reordered_journal_lines_are_named(sealed_run):
    lines = _lines(sealed_run)
    lines[3], lines[4] = lines[4], lines[3]
    _rewrite(sealed_run, lines)
    result = _verify(sealed_run)
    assert result.exit_code == 1
    assert "journal line 4 is out of order: it holds event #5, and event #4 is at line 5" in result.output


def test_a_head_kept_elsewhere_catches_a_rewritten_run_json(sealed_run):
    head = _head(sealed_run)
    lines = _lines(sealed_run)
    _rewrite(sealed_run, lines[:-3])  # run.json's seal, the head and the report's seal gone
    write_summary(sealed_run)  # run.json recomputed and sealed again to match the shortened journal
    record_head(sealed_run, "end of the run", secrets=[])
    assert _verify(sealed_run).exit_code == 0
    result = _verify(sealed_run, "--head", head)
    assert result.exit_code == 1 and "no journal line hashes to the head given" in result.output


# --- the forgeries of issue 12: each one passed `verify-audit --head H` before, each is named now ------

@pytest.mark.parametrize("name", ["report.html", "state.json"])
def test_a_sealed_file_edited_and_sealed_again_is_named_with_the_event_that_resealed_it(sealed_run, name):
    head = _head(sealed_run)
    path = sealed_run / name
    path.write_text(path.read_text().replace("ABORTED", "SUCCEEDED") if name == "report.html"
                    else json.dumps({"database": "forged"}))
    forged = record_artifact(sealed_run, path, "report" if name == "report.html" else "evidence", secrets=[])
    for args in (("--head", head), ()):
        result = _verify(sealed_run, *args)
        assert result.exit_code == 1, result.output
        assert f"ALTERED: file {name} was altered" in result.output
        assert f"re-sealed after the head by event #{forged['seq']}" in result.output
        assert f"#{forged['seq']} re-sealed {name}" in result.output  # listed after the head


def test_a_forged_correctly_chained_event_appended_is_named(sealed_run):
    head = _head(sealed_run)
    forged = Journal(sealed_run / "journal.jsonl").record("04_restore_service", "health", "ok", "all good")
    assert verify_audit(sealed_run, head=head).problems  # the chain itself holds: it is the head that speaks
    for args in (("--head", head), ()):
        result = _verify(sealed_run, *args)
        assert result.exit_code == 1
        assert f"event #{forged['seq']} after the head (04_restore_service / health ok) was written by no later " \
               "command" in result.output


def test_an_edited_run_json_is_named_and_its_figures_recomputed(sealed_run):
    head = _head(sealed_run)
    path = sealed_run / "run.json"
    run = json.loads(path.read_text())
    run.update(status="succeeded", exit_code=0, error=None, rto_seconds=5, downtime_seconds=1)
    path.write_text(json.dumps(run))
    result = _verify(sealed_run, "--head", head)
    assert result.exit_code == 1
    assert "ALTERED: file run.json was altered" in result.output
    assert "run.json says status 'succeeded'; the journal and the state give 'aborted'" in result.output
    assert "run.json says exit_code 0; the journal and the state give 3" in result.output
    assert "run.json says rto_seconds 5" in result.output and "run.json says downtime_seconds 1" in result.output


def test_files_added_to_the_folder_are_not_part_of_the_evidence(sealed_run):
    (sealed_run / "extra_notes.txt").write_text("the rollback went fine")
    (sealed_run / "capture").mkdir()
    (sealed_run / "capture" / "evil.json").write_text("{}")
    (sealed_run / "06_extra.ipynb").write_text("{}")
    result = _verify(sealed_run)
    assert result.exit_code == 0, result.output
    assert "Not part of the evidence (never sealed): 06_extra.ipynb, capture/evil.json, extra_notes.txt" \
        in result.output
    result = _verify(sealed_run, "--strict")
    assert result.exit_code == 1 and "3 file(s) are not part of the evidence (--strict)" in result.output


def test_adding_a_file_to_the_chain_is_one_call(sealed_run):
    notes = sealed_run / "notes.md"
    notes.write_text("what the on-call saw")
    event = record_artifact(sealed_run, notes, "evidence", reason="added by the on-call")
    assert event["step"] == ARTIFACT and event["evidence"]["sha256"] == sha256_of(notes)
    assert artifacts(sealed_run)["notes.md"]["evidence"]["reason"] == "added by the on-call"
    result = _verify(sealed_run)
    assert result.exit_code == 0 and "re-sealed notes.md" in result.output and "added by the on-call" in result.output
    notes.write_text("what the on-call saw, improved")
    result = _verify(sealed_run)
    assert result.exit_code == 1 and "file notes.md was altered" in result.output


# --- signed heads -------------------------------------------------------------------------------

@pytest.fixture
def keys(tmp_path):
    result = runner.invoke(app, ["audit", "keygen", "--out", str(tmp_path / "keys")])
    assert result.exit_code == 0, result.output
    other = runner.invoke(app, ["audit", "keygen", "--out", str(tmp_path / "keys"), "--name", "other"])
    assert other.exit_code == 0, other.output
    folder = tmp_path / "keys"
    assert oct((folder / "rollback-audit.key.pem").stat().st_mode & 0o777) == "0o600"
    return folder / "rollback-audit.key.pem", folder / "rollback-audit.pub.pem", folder / "other.pub.pem"


def _signed_run(tmp_path, keys, monkeypatch) -> Path:
    config = tmp_path / "signed.toml"
    config.write_text(MINIMAL_CONFIG)
    monkeypatch.setenv("ROLLBACK_TEST_AUDIT_KEY", keys[0].read_text())
    return _make_run(tmp_path / "20251202020032_x" / "drill" / "signed", config)


def _rechain(run_dir: Path, lines: list[str]) -> None:
    """Rewrite the journal with every prev recomputed, as a writer without the key would."""
    out, prev = [], GENESIS
    for line in lines:
        event = json.loads(line)
        event["prev"] = prev
        text = json.dumps(event)
        out.append(text + "\n")
        prev = line_hash(text.encode())
    _rewrite(run_dir, out)


def test_a_signed_run_verifies_with_its_key_and_fails_with_another(tmp_path, keys, monkeypatch):
    run_dir = _signed_run(tmp_path, keys, monkeypatch)
    heads = [e for e in read_events(run_dir) if e["step"] == "head"]
    assert heads and all(e["evidence"]["signature"]["algorithm"] == "ed25519" for e in heads)
    assert json.loads((run_dir / "run.json").read_text())["audit"]["signature"]["signature"]
    result = _verify(run_dir, "--public-key", str(keys[1]))
    assert result.exit_code == 0, result.output
    assert "signature ok" in result.output and "the last head signed by the key given" in result.output
    result = _verify(run_dir, "--public-key", str(keys[2]))
    assert result.exit_code == 1 and "the signature does not verify with key" in result.output


def test_a_signed_run_fails_after_any_byte_changes_even_with_the_chain_recomputed(tmp_path, keys, monkeypatch):
    run_dir = _signed_run(tmp_path, keys, monkeypatch)
    lines = _lines(run_dir)
    lines[1] = lines[1].replace("looked at", "looked At")
    _rechain(run_dir, lines)
    assert _verify(run_dir).exit_code == 0  # without the key, a recomputed chain is only a chain: what the key adds
    result = _verify(run_dir, "--public-key", str(keys[1]))
    assert result.exit_code == 1
    assert "whose line does not hash to the head it names" in result.output


def test_the_signing_key_is_a_secret_masked_like_every_other(tmp_path, keys, monkeypatch):
    from rollbacklib.config import load_config
    from rollbacklib.redaction import config_secrets, mask_text

    config = tmp_path / "signed.toml"
    config.write_text(MINIMAL_CONFIG)
    pem = keys[0].read_text()
    monkeypatch.setenv("ROLLBACK_TEST_AUDIT_KEY", pem)
    secrets = config_secrets(load_config(config))
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    assert pem in secrets and body in secrets
    assert body not in mask_text(json.dumps({"leaked": pem}), secrets)
    assert body not in mask_text(f"key: {pem}", secrets)


def test_verify_audit_of_a_folder_that_is_not_there_is_bad_usage(tmp_path):
    assert _verify(tmp_path / "nowhere").exit_code == 2


# --- a real run ----------------------------------------------------------------------------------

def test_a_run_seals_each_executed_notebook_and_verify_audit_names_what_was_changed(incident):
    result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--dry-run"))
    assert result.exit_code == 0, result.output
    run_dir = next(incident.reports.rglob("run.json")).parent
    run = json.loads((run_dir / "run.json").read_text())
    events = read_events(run_dir)
    assert events[-1]["step"] == "head" and events[-1]["evidence"]["reason"] == "end of the run"
    assert f"Audit chain head: {chain_head(run_dir)['head']}" in result.output
    assert artifacts(run_dir)["run.json"]["seq"] == run["audit"]["seq"] + 1  # sealed as soon as written
    sealed = artifacts(run_dir)
    for phase in PHASES:  # each notebook's sha256 as papermill left it, journaled in its phase
        assert sealed[f"{phase}.ipynb"]["evidence"]["sha256"] == sha256_of(run_dir / f"{phase}.ipynb")
        assert sealed[f"{phase}.ipynb"]["phase"] == phase
    assert "plan.json" in sealed and "state.json" in sealed
    metadata = json.loads((run_dir / "01_prepare.ipynb").read_text())["metadata"]["papermill"]
    assert metadata["output_path"] == str(run_dir / "01_prepare.ipynb")  # the masking handler leaves no trace
    assert _verify(run_dir).exit_code == 0

    notebook = run_dir / "03_validate.ipynb"
    original = notebook.read_bytes()
    notebook.write_bytes(original.replace(b"Validate", b"Va1idate", 1))
    result = _verify(run_dir)
    assert result.exit_code == 1 and "file 03_validate.ipynb was altered" in result.output
    notebook.write_bytes(original)

    lines = _lines(run_dir)
    number = next(i for i, line in enumerate(lines, 1) if '"status": "planned"' in line)
    lines[number - 1] = lines[number - 1].replace('"status": "planned"', '"status": "skipped"')
    _rewrite(run_dir, lines)
    result = _verify(run_dir)
    assert result.exit_code == 1 and f"journal line {number} was altered" in result.output


def test_a_legitimate_report_after_the_head_verifies_and_is_listed_after_it(incident):
    result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--dry-run"))
    assert result.exit_code == 0, result.output
    run_dir = next(incident.reports.rglob("run.json")).parent
    head = _head(run_dir)
    assert f"--head {head}" in result.output  # the head the run printed is the journal's last line
    sealed = (run_dir / "report.html").read_bytes()

    again = runner.invoke(app, ["report", str(run_dir)])

    assert again.exit_code == 0, again.output
    assert (run_dir / "report.html").read_bytes() == sealed and (run_dir / "report-2.html").exists()
    result = _verify(run_dir, "--head", head)
    assert result.exit_code == 0, result.output
    assert "After the head: 1 event(s)" in result.output
    assert "re-sealed report-2.html" in result.output and "rollback report: rendered again on request" in result.output


def test_a_refused_run_forged_into_a_success_and_rendered_again_is_named(incident):
    result = runner.invoke(app, incident.run_args("--backup", str(incident.backup)))
    assert result.exit_code == 4, result.output
    assert "REFUSED" in result.output
    run_dir = next(incident.reports.rglob("run.json")).parent
    head = _head(run_dir)
    path = run_dir / "run.json"
    run = json.loads(path.read_text())
    assert run["status"] == "refused" and run["exit_code"] == 4
    run.update(status="succeeded", exit_code=0, error=None)
    path.write_text(json.dumps(run))

    assert runner.invoke(app, ["report", str(run_dir)]).exit_code == 0

    for page in ("report.html", "report-2.html"):  # the page reads the journal, never run.json
        html = (run_dir / page).read_text()
        assert '<span class="rb-badge">REFUSED</span>' in html and "SUCCEEDED" not in html
    result = _verify(run_dir, "--head", head)
    assert result.exit_code == 1
    assert "ALTERED: file run.json was altered" in result.output
    assert "run.json says status 'succeeded'; the journal and the state give 'refused'" in result.output


def test_a_real_signed_run_verifies_with_its_public_key_and_leaks_no_key(incident, keys, tmp_path, monkeypatch):
    text = incident.config.read_text().replace('"scenarios/', f'"{incident.config.resolve().parent}/scenarios/')
    config = tmp_path / "runbook.toml"
    config.write_text('[audit]\nsigning_key_env = "ROLLBACK_TEST_AUDIT_KEY"\n\n' + text)
    pem = keys[0].read_text()
    monkeypatch.setenv("ROLLBACK_TEST_AUDIT_KEY", pem)
    args = incident.run_args("--backup", str(incident.backup))
    args[args.index("--config") + 1] = str(config)

    result = runner.invoke(app, args)

    assert result.exit_code == 4, result.output
    run_dir = next(incident.reports.rglob("run.json")).parent
    heads = [e for e in read_events(run_dir) if e["step"] == "head"]
    assert [e["evidence"]["reason"] for e in heads] == ["end of phase 01_prepare", "end of phase 02_execute",
                                                         "end of the run"]
    assert all(e["evidence"]["signature"] and e["evidence"]["syslog"] for e in heads)
    verified = _verify(run_dir, "--public-key", str(keys[1]), "--head", _head(run_dir))
    assert verified.exit_code == 0, verified.output
    assert verified.output.count("signature ok") == 3
    assert _verify(run_dir, "--public-key", str(keys[2])).exit_code == 1
    body = [line for line in pem.splitlines() if not line.startswith("-----")]
    for path in (p for p in incident.reports.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert not any(line.encode() in data for line in body), f"the signing key leaked into {path}"
    assert not any(line in result.output for line in body)


def test_a_machine_without_logger_notes_it_in_the_head_event_and_goes_on(sealed_run, monkeypatch, tmp_path):
    empty = tmp_path / "no-logger"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    record_head(sealed_run, "end of phase 04_restore_service", secrets=[])
    event = read_events(sealed_run)[-1]
    assert event["step"] == "head" and event["evidence"]["syslog"] == "not sent: no `logger` on this machine"
    assert _verify(sealed_run).exit_code == 0


def test_an_unsigned_run_fails_with_a_public_key_and_a_key_named_but_unset_says_why(tmp_path, keys, monkeypatch):
    unsigned = _make_run(tmp_path / "20251202020032_x" / "drill" / "unsigned")
    result = _verify(unsigned, "--public-key", str(keys[1]))
    assert result.exit_code == 1 and "head event #" in result.output and "is not signed" in result.output
    config = tmp_path / "signed.toml"
    config.write_text(MINIMAL_CONFIG)
    monkeypatch.delenv("ROLLBACK_TEST_AUDIT_KEY", raising=False)
    run_dir = _make_run(tmp_path / "20251202020032_x" / "drill" / "no-key", config)
    head = read_events(run_dir)[-1]["evidence"]
    assert "signature" not in head and "ROLLBACK_TEST_AUDIT_KEY, which is not set" in head["not_signed"]
    assert "ROLLBACK_TEST_AUDIT_KEY" in json.loads((run_dir / "run.json").read_text())["audit"]["not_signed"]
    assert _verify(run_dir, "--public-key", str(keys[1])).exit_code == 1
