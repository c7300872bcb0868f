"""Every `rollback drill --fault NAME`, for real: a staged incident, the fault injected, the runbook's answer judged
from the catalog and the rows (marker group `faults`: `pytest -m faults`)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rollbacklib.cli import app
from rollbacklib.drill.faults import FAULTS, run_fault_drill
from rollbacklib.drill.injection import FaultUnavailable

runner = CliRunner()


@pytest.mark.faults
@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_drill_ends_as_expected(name, tmp_path):
    lines: list[str] = []
    try:
        result = run_fault_drill(name, users=150, reports_dir=str(tmp_path / "reports"), say=lines.append)
    except FaultUnavailable as unavailable:
        pytest.skip(unavailable.message)
    log = "\n".join(result.differences() + ["", *lines[-80:]])
    assert not any(d.startswith("the drill could not complete") for d in result.differences()), log
    assert result.verdict.checks, "the drill checked nothing"
    assert result.passed, log
    assert result.runbook_exit == FAULTS[name].exit_code
    if FAULTS[name].exit_code == 0:  # the rows the restore discarded are printed from run.json
        assert result.rows_lost and result.rows_lost["total"] >= 1


def test_a_swapped_plan_keeps_every_digest_the_records_hold_in_agreement(tmp_path):
    """What plan-swapped does to a run folder: plan.json reads back clean, state.json agrees; only the journal differs."""
    import json

    from rollbacklib.drill.injection import swap_plan
    from rollbacklib.steps import Action, Plan, Step, read_plan, write_plan

    steps = [Step("swap-keep-live", "02_execute", "db", "rename", (Action("sql", "db", 'ALTER DATABASE "db" RENAME TO "k"'),),
                  destructive=True)]
    original = Plan(steps)
    write_plan(tmp_path, original)
    (tmp_path / "state.json").write_text(json.dumps({"plan_digest": original.digest, "approval": {
        "how": "test", "at": "now", "plan_digest": original.digest, "migration_id": "m"}}))

    digest = swap_plan(tmp_path, "swap-keep-live", 'DROP DATABASE "db" WITH (FORCE)')

    plan = read_plan(tmp_path)  # no "changed after it was written": the digest in plan.json was recomputed
    assert plan.digest == digest != original.digest
    assert plan.step("swap-keep-live").actions[0].text == 'DROP DATABASE "db" WITH (FORCE)'
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["plan_digest"] == state["approval"]["plan_digest"] == digest


def test_fault_list_prints_each_fault_with_the_exit_it_expects():
    result = runner.invoke(app, ["drill", "--fault", "list"])
    assert result.exit_code == 0, result.output
    for fault in FAULTS.values():
        assert any(line.split()[:2] == [fault.name, str(fault.exit_code)] for line in result.output.splitlines()), fault.name


def test_an_unknown_fault_is_bad_usage_naming_the_list():
    result = runner.invoke(app, ["drill", "--fault", "kill-everything"])
    assert result.exit_code == 2, result.output
    assert "Unknown fault 'kill-everything'" in result.output and "rollback drill --fault list" in result.output


@pytest.mark.faults
def test_a_drill_that_sees_another_outcome_exits_1_and_says_what_differed(tmp_path, monkeypatch):
    """The drill judges the runbook: an expectation the runbook does not meet is reported, not hidden."""
    from dataclasses import replace

    import rollbacklib.drill.faults as faults

    wrong = replace(FAULTS["percent-password"], exit_code=0)
    monkeypatch.setitem(faults.FAULTS, "percent-password", wrong)
    result = runner.invoke(app, ["drill", "--fault", "percent-password", "--users", "50", "--reports-dir",
                                 str(tmp_path / "reports")])
    assert result.exit_code == 1, result.output
    assert "DIFFERED: percent-password" in result.output
    assert "the runbook ended with exit 2, the fault expects 0" in result.output
