"""The journal: one JSON line per event, secrets redacted, readable after a writer was killed mid-line."""

from __future__ import annotations

import json

import pytest

from rollbacklib.journal import Journal, read_events, redact
from rollbacklib.summary import summarize


def test_events_carry_time_phase_step_status_and_evidence(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    journal.record("02_execute", "drain", "changed", "terminated 1 session(s)", terminated=[{"pid": 42}])
    (event,) = read_events(tmp_path)
    assert set(event) == {"seq", "prev", "ts", "phase", "step", "status", "message", "evidence"}
    assert event["evidence"] == {"terminated": [{"pid": 42}]}
    assert event["seq"] == 1 and event["prev"] == "0" * 64  # the first link of the hash chain


def test_unknown_status_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown journal status"):
        Journal(tmp_path / "journal.jsonl").record("p", "s", "done")


def test_secrets_are_redacted_everywhere_in_an_event(tmp_path):
    url = "postgresql://app:hunter2-long@db:5432/prod"
    journal = Journal(tmp_path / "journal.jsonl", secrets=[url, "hunter2-long"])
    journal.record("01_prepare", "capture", "info", f"connected to {url}", nested={"k": ["x hunter2-long y"]})
    text = (tmp_path / "journal.jsonl").read_text()
    assert "hunter2-long" not in text and text.count("***") == 2
    assert redact({"a": ("tuple", "hunter2-long")}, ["hunter2-long"]) == {"a": ["tuple", "***"]}


def test_a_line_cut_short_by_a_killed_writer_is_ignored(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    journal.record("01_prepare", "phase", "started", dry_run=False, strategy="swap")
    with open(tmp_path / "journal.jsonl", "a") as fh:
        fh.write('{"ts": "2026-01-01T00:00:00+00:00", "phase": "01_prep')
    assert [e["status"] for e in read_events(tmp_path)] == ["started"]


def test_summary_of_a_run_that_stopped_without_an_error_event(tmp_path):
    run_dir = tmp_path / "20251202020032_x" / "drill" / "r1"
    journal = Journal(run_dir / "journal.jsonl")
    journal.record("01_prepare", "phase", "started", dry_run=False, strategy="swap")
    journal.record("01_prepare", "phase", "ok")
    journal.record("02_execute", "phase", "started", dry_run=False, strategy="swap")
    journal.record("02_execute", "block-connections", "changed", "blocked")
    summary = summarize(run_dir)  # a killed runner: changes made, no phase finished the run
    assert summary["status"] == "failed" and summary["exit_code"] == 5
    assert summary["migration_id"] == "20251202020032_x" and summary["environment"] == "drill"
    assert [p["status"] for p in summary["phases"]] == ["succeeded", "running"]
    assert json.dumps(summary)  # serializable as run.json
