"""``rollback drill --salvage`` carries the discarded rows over, and the report shows per table what was carried."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from rollbacklib.cli import app
from rollbacklib.phases.salvage import SALVAGE_ENV
from rollbacklib.report.salvage_section import section

from conftest import CONFIG

runner = CliRunner()


def test_drill_salvage_carries_the_rows_and_the_report_shows_them_per_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(SALVAGE_ENV, "0")  # the command sets it; monkeypatch puts it back afterwards
    result = runner.invoke(app, ["drill", "--salvage", "--users", "30", "--config", str(CONFIG),
                                 "--reports-dir", str(tmp_path / "reports")])
    assert result.exit_code == 0, result.output
    (run_json,) = (tmp_path / "reports").rglob("run.json")
    run = json.loads(run_json.read_text())
    carried, preview = run["salvage"], run["rows_lost_preview"]
    assert preview["total"] == 9  # the drill's writes after the backup: 5 users, 4 workflows
    assert carried["carried"] + carried["conflicts"] == carried["rows_lost"]["total"] == 9
    assert carried["carried"] > 0
    html = (run_json.parent / "report.html").read_text()
    table = re.search(r'<table class="rb-table" id="salvage-table">.*?</table>', html, re.S).group(0)
    for name, d in carried["tables"].items():  # every number in the table is run.json's
        row = re.search(rf"<tr><td>{re.escape(name)}</td>(.*?)</tr>", table).group(1)
        cells = re.findall(r"<td>(\d+)</td>", row)
        assert cells == [str(d[part][k]) for k in ("inserted", "updated", "deleted")
                         for part in ("carried", "conflicts")]
    assert f"<strong>{carried['carried']}</strong> row(s)" in html


def test_drill_salvage_is_refused_with_stage_only(tmp_path):
    result = runner.invoke(app, ["drill", "--salvage", "--stage-only", "--config", str(CONFIG)])
    assert result.exit_code != 0 and "--salvage goes with a plain drill" in result.output


def test_the_salvage_section_says_when_salvage_was_off():
    html = section({"rows_lost_preview": {"total": 3, "inserted": 2, "updated": 1, "deleted": 0,
                                          "measured_at": "2026-12-02T06:00:00+00:00"}, "salvage": None})
    assert "<strong>3</strong> row(s)" in html and "2 inserted, 1 updated, 0 deleted" in html
    assert 'id="salvage-off"' in html and 'id="salvage-table"' not in html
    assert section({"rows_lost_preview": None, "salvage": None}) == ""
