"""The tamper-evident audit trail: the journal's hash chain, sealed files, and `rollback verify-audit`."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rollbacklib.audit import ARTIFACT, artifacts, chain_head, record_artifact, verify_audit
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


# --- tampering: a run folder with a journal, sealed notebooks and run.json ----------------------

@pytest.fixture
def sealed_run(tmp_path) -> Path:
    run_dir = tmp_path / "20251202020032_x" / "drill" / "r1"
    journal = Journal(run_dir / "journal.jsonl")
    for phase in PHASES[:3]:
        journal.record(phase, "phase", "started", dry_run=False, strategy="swap")
        journal.record(phase, "check", "info", f"{phase} looked at something", rows=12)
        journal.record(phase, "phase", "ok")
        notebook = run_dir / f"{phase}.ipynb"
        notebook.write_text(json.dumps({"cells": [{"source": f"work of {phase}"}], "metadata": {}}) + "\n")
        record_artifact(run_dir, notebook, "notebook", phase=phase, secrets=[])
    write_summary(run_dir)
    return run_dir


def _verify(run_dir: Path, *args: str):
    return runner.invoke(app, ["verify-audit", str(run_dir), *args])


def _lines(run_dir: Path) -> list[str]:
    return (run_dir / "journal.jsonl").read_text().splitlines(keepends=True)


def _rewrite(run_dir: Path, lines: list[str]) -> None:
    (run_dir / "journal.jsonl").write_text("".join(lines))


def test_an_intact_run_verifies_and_run_json_holds_the_head(sealed_run):
    run = json.loads((sealed_run / "run.json").read_text())
    assert run["audit"] == chain_head(sealed_run)
    assert run["audit"]["head"] == line_hash(_lines(sealed_run)[-1].encode())
    assert [p["name"] for p in run["phases"]] == list(PHASES[:3])  # sealing is no step of a phase
    result = _verify(sealed_run)
    assert result.exit_code == 0, result.output
    assert "Audit trail intact: 12 events chained, 3 sealed file(s) unchanged" in result.output


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


def test_the_last_journal_line_deleted_or_changed_is_found_by_the_head(sealed_run):
    lines = _lines(sealed_run)
    _rewrite(sealed_run, lines[:-1])
    result = _verify(sealed_run)
    assert result.exit_code == 1 and "lines at its end were removed" in result.output
    _rewrite(sealed_run, lines[:-1] + [lines[-1].replace('"kind": "notebook"', '"kind": "notes"')])
    result = _verify(sealed_run)
    assert result.exit_code == 1 and f"journal line {len(lines)} was altered" in result.output


def test_reordered_journal_lines_are_named(sealed_run):
    lines = _lines(sealed_run)
    lines[3], lines[4] = lines[4], lines[3]
    _rewrite(sealed_run, lines)
    result = _verify(sealed_run)
    assert result.exit_code == 1
    assert "journal line 4 is out of order: it holds event #5, and event #4 is at line 5" in result.output


def test_a_head_kept_elsewhere_catches_a_rewritten_run_json(sealed_run):
    head = json.loads((sealed_run / "run.json").read_text())["audit"]["head"]
    lines = _lines(sealed_run)
    _rewrite(sealed_run, lines[:-1])
    write_summary(sealed_run)  # run.json recomputed to match the shortened journal
    assert _verify(sealed_run).exit_code == 0
    result = _verify(sealed_run, "--head", head)
    assert result.exit_code == 1 and "no journal line hashes to the head given" in result.output


def test_adding_a_file_to_the_chain_is_one_call(sealed_run):
    report = sealed_run / "report.html"
    report.write_text("<html>the report</html>")
    event = record_artifact(sealed_run, report, "report")
    assert event["step"] == ARTIFACT and event["evidence"]["sha256"] == sha256_of(report)
    assert artifacts(sealed_run)["report.html"]["evidence"]["kind"] == "report"
    assert json.loads((sealed_run / "run.json").read_text())["audit"]["head"] == chain_head(sealed_run)["head"]
    assert _verify(sealed_run).exit_code == 0
    report.write_text("<html>the report, improved</html>")
    result = _verify(sealed_run)
    assert result.exit_code == 1 and "file report.html was altered" in result.output


def test_verify_audit_of_a_folder_that_is_not_there_is_bad_usage(tmp_path):
    assert _verify(tmp_path / "nowhere").exit_code == 2


# --- a real run ----------------------------------------------------------------------------------

def test_a_run_seals_each_executed_notebook_and_verify_audit_names_what_was_changed(incident):
    result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--dry-run"))
    assert result.exit_code == 0, result.output
    run_dir = next(incident.reports.rglob("run.json")).parent
    run = json.loads((run_dir / "run.json").read_text())
    assert run["audit"] == chain_head(run_dir)
    assert f"Audit chain head: {run['audit']['head']}" in result.output
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
