"""The evidence of a run: every metric recomputed independently, the HTML report in a real browser, the post-mortem.

The incident is staged for real with writes of every kind after the backup (rows inserted,
updated and deleted; a table with an ``id`` key and one with a composite key), the runbook
runs under papermill, and each figure in ``run.json`` is checked against the journal, the
backup's manifest and the databases read by this file's own SQL.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import uuid
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from rollbacklib.verify import verify_audit
from rollbacklib.cli import app
from rollbacklib.config import load_config
from rollbacklib.drill import stage_incident
from rollbacklib.drill.scenario import load_scenario
from rollbacklib.journal import line_hash
from rollbacklib.pipeline import run_phases
from rollbacklib.postgres import rowdiff
from rollbacklib.postgres.client import client_tools, database_name, with_database
from rollbacklib.resources import scenarios_dir
from rollbacklib.steps import Phase, StepName

import browser
from conftest import CONFIG, DRILL_URL_ENV, MIGRATION, Incident, behind_the_runbook, between_the_renames

runner = CliRunner()


def _need_chromium() -> None:
    """Skip where Debian's chromium is missing, unless the run requires it (``.ci/run`` installs it and does)."""
    if browser.chromium() is None and not os.environ.get("ROLLBACK_REQUIRE_CHROMIUM"):
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")

# What this file writes after the backup, on top of the scenario's after_migration.sql (5 users, 4 workflows).
EXPECTED_LOST = {
    "users": {"inserted": 5, "updated": 1, "deleted": 0},
    "workflows": {"inserted": 4, "updated": 0, "deleted": 1},
    "clients": {"inserted": 0, "updated": 0, "deleted": 0},
    "memberships": {"inserted": 3, "updated": 2, "deleted": 1},  # composite key ("userId", "teamId")
}


@pytest.fixture
def written(fresh_db, tmp_path, monkeypatch):
    """The incident, with a composite-key table in the backup and writes of every kind after it."""
    monkeypatch.setenv(DRILL_URL_ENV, fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute('CREATE TABLE "memberships" ("userId" text, "teamId" integer, "role" text NOT NULL, '
                     'PRIMARY KEY ("userId", "teamId"))')
        conn.execute("INSERT INTO memberships SELECT 'user_' || lpad(u::text, 9, '0'), t, 'member' "
                     "FROM generate_series(1, 20) u, generate_series(-1, 1) t")
    config = load_config(CONFIG)
    backup = stage_incident(fresh_db, load_scenario(scenarios_dir() / "auth-platform"), MIGRATION, users=200,
                            backup_dir=tmp_path / "backups", tools=client_tools("embedded"),
                            probes=config.all_queries(), say=lambda _line: None)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("""INSERT INTO memberships VALUES ('user_post_0001', 1, 'owner'), ('user_post_0001', -1, 'member'),
                        ('user_000000001', 2, 'member')""")
        conn.execute("""UPDATE memberships SET role = 'admin'
                        WHERE ("userId", "teamId") IN (('user_000000002', 1), ('user_000000003', -1))""")
        conn.execute("""DELETE FROM memberships WHERE "userId" = 'user_000000004' AND "teamId" = 0""")
        conn.execute("""UPDATE users SET name = 'Renamed after the backup' WHERE id = 'user_000000007'""")
        conn.execute("""DELETE FROM workflows WHERE id = 'wf_000000001_1'""")
    return Incident(fresh_db, database_name(fresh_db), backup, tmp_path / "reports")


# --- independent recomputation ------------------------------------------------------------------

def _seconds(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def _table_rows(url: str) -> dict[str, dict[tuple, dict]]:
    """Every row of every user table, by primary key, as {column: text}: small tables, read whole."""
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r'")]
        out = {}
        for table in tables:
            key = [r[0] for r in conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary "
                "ORDER BY array_position(i.indkey, a.attnum)", (f'"{table}"',))]
            cur = conn.execute(f'SELECT * FROM "{table}"')
            names = [d.name for d in cur.description]
            out[table] = {tuple(str(row[names.index(k)]) for k in key):
                          {n: None if v is None else str(v) for n, v in zip(names, row)} for row in cur}
    return out


def _independent_rows_lost(kept: dict, restored: dict) -> dict[str, dict[str, int]]:
    result = {}
    for table in kept.keys() & restored.keys():
        if table == "_prisma_migrations":
            continue
        a, b = kept[table], restored[table]
        common = set(next(iter(a.values()), {})) & set(next(iter(b.values()), {}))
        result[table] = {"inserted": len(a.keys() - b.keys()), "deleted": len(b.keys() - a.keys()),
                         "updated": sum(1 for k in a.keys() & b.keys()
                                        if {c: a[k][c] for c in common} != {c: b[k][c] for c in common})}
    return result


def _read_kept(admin_url: str, url: str, kept: str) -> dict:
    """The test opens the kept database by hand (as a superuser), reads it, and closes it again."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS true')
        try:
            return _table_rows(with_database(url, kept))
        finally:
            admin.execute(f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS false')


def _metric(run: dict, key: str) -> dict:
    return next(m for m in run["metrics"] if m["key"] == key)


def test_every_metric_in_run_json_matches_an_independent_recomputation(written, tmp_path_factory):
    result = runner.invoke(app, written.run_args("--backup", str(written.backup), "--yes", "--run-id", "measured"))
    assert result.exit_code == 0, result.output
    run_dir = next(written.reports.rglob("measured"))
    run = json.loads((run_dir / "run.json").read_text())
    events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    state = json.loads((run_dir / "state.json").read_text())
    manifest = json.loads(Path(f"{written.backup}.manifest.json").read_text())
    assert f"Report: {run_dir / 'report.html'}" in result.output
    last = (run_dir / "journal.jsonl").read_bytes().splitlines()[-1]  # the head event after the report's seal
    assert f"Audit chain head: {line_hash(last)}" in result.output and json.loads(last)["step"] == "head"
    sealed = {e["evidence"]["path"]: e["evidence"]["kind"] for e in map(json.loads, (run_dir / "journal.jsonl")
              .read_text().splitlines()) if e["step"] == "artifact"}
    assert sealed["report.html"] == "report" and sealed["postmortem.md"] == "evidence"

    start = events[0]["ts"]
    restored_at = next(e["ts"] for e in events if e["step"] == StepName.HEALTH and e["status"] == "ok")
    rto = _seconds(start, restored_at)  # the health step's end: the database answered through the app's URL
    assert _metric(run, "rto")["value"] == pytest.approx(rto, abs=0.01) == run["rto_seconds"]
    assert _metric(run, "rto")["status"] == "pass" and _metric(run, "rto")["target"] == "< 15 min"

    block_started = next(e["ts"] for e in events if e["step"] == StepName.BLOCK and e["status"] == "started")
    first_block = next(e["ts"] for e in events if e["step"] == StepName.BLOCK and e["status"] == "changed")
    assert block_started <= state["blocked"]["at"] <= first_block
    assert _metric(run, "rpo")["value"] == pytest.approx(_seconds(manifest["taken_at"], state["blocked"]["at"]),
                                                         abs=0.002)
    assert _metric(run, "rpo")["target"] == "< 1 min"

    downtime = _seconds(state["blocked"]["at"], restored_at)
    assert _metric(run, "downtime")["value"] == pytest.approx(downtime, abs=0.01) == run["downtime_seconds"]
    assert _metric(run, "uptime")["value"] == pytest.approx(100 * (rto - downtime) / rto, abs=0.2)

    checks = next(e for e in events if e["step"] == StepName.VALIDATION and "checks" in e["evidence"])["evidence"]["checks"]
    counted = [c for c in checks if not c["skipped"]]
    assert _metric(run, "integrity")["value"] == round(100 * sum(c["passed"] for c in counted) / len(counted), 1) == 100
    assert _metric(run, "services")["actual"] == "no services configured"  # the drill environment lists none
    swapped = next(e["ts"] for e in events if e["step"] == StepName.SWAP_PROMOTE and e["status"] == "ok")
    assert _metric(run, "errors_after")["value"] == sum(
        1 for e in events if e["ts"] > swapped and e["status"] in ("failed", "aborted", "refused")) == 0

    # rows lost: what this test wrote after the backup, and this file's own reading of both databases
    kept = run["kept_database"]
    independent = _independent_rows_lost(_read_kept(written.admin_url, written.url, kept), _table_rows(written.url))
    assert independent == EXPECTED_LOST
    lost = run["rows_lost"]
    assert {t: {k: d[k] for k in ("inserted", "updated", "deleted")} for t, d in lost["tables"].items()} == EXPECTED_LOST
    assert lost["total"] == _metric(run, "rows_lost")["value"] == sum(sum(d.values()) for d in EXPECTED_LOST.values())
    assert lost["tables"]["memberships"]["key"] == ["userId", "teamId"]
    assert sorted(lost["tables"]["memberships"]["examples"]["inserted"]) == [
        ["user_000000001", 2], ["user_post_0001", -1], ["user_post_0001", 1]]
    assert lost["tables"]["users"]["columns_left_out"] == ["passwordHash", "emailVerified"]
    assert lost["left_out"] == ["_prisma_migrations"]
    with psycopg.connect(written.admin_url) as admin:  # the kept database is closed again, to everyone
        assert admin.execute("SELECT datallowconn, datconnlimit FROM pg_database WHERE datname = %s",
                             (kept,)).fetchone() == (False, 0)
    reopened = max(e["ts"] for e in events if e["step"] == StepName.REOPEN and e["status"] == "changed")
    assert min(e["ts"] for e in events if e["step"] == StepName.COMPARE_ROWS) > reopened  # after the window
    compare = [e["message"] for e in events if e["step"] == StepName.COMPARE_ROWS and e["status"] == "changed"]
    # the kept database read through a private connection, opened and closed again; the copy is not opened at
    # all (its rows were hashed at validate-copy, before it was closed for good)
    assert compare[:2] == [f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS true',
                           f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS false']
    assert compare[2].startswith("SELECT pg_terminate_backend(pid)") and f"'{kept}'" in compare[2]
    assert len(compare) == 3 and not any("__restored_" in statement for statement in compare)

    exported = runner.invoke(app, ["lost-rows", str(run_dir), "--out", str(tmp_path_factory.mktemp("lost"))])
    assert exported.exit_code == 0, exported.output
    folder = Path(exported.output.split("memberships: ", 1)[1].split(" -> ", 1)[1].split()[0]).parent
    for table, kinds in EXPECTED_LOST.items():  # every lost row, from the kept database (deleted ones: the live)
        path = folder / f"{table}.csv"
        if not sum(kinds.values()):
            assert not path.exists()
            continue
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert {kind: sum(1 for r in rows if r["_lost"] == kind) for kind in kinds} == kinds, table
    with psycopg.connect(written.admin_url) as admin:  # closed again after the export
        assert admin.execute("SELECT datallowconn, datconnlimit FROM pg_database WHERE datname = %s",
                             (kept,)).fetchone() == (False, 0)

    milestones = {m["milestone"]: m for m in run["milestones"]}
    created = next(e["ts"] for e in events if e["step"] == StepName.CREATE_COPY and e["status"] == "started")
    assert milestones["rollback started"]["seconds"] == pytest.approx(_seconds(start, created), abs=0.002)
    assert milestones["team notified"]["status"] == "for people"
    assert milestones["rollback completed"]["seconds"] == pytest.approx(_seconds(start, swapped), abs=0.002)
    assert milestones["rollback completed"]["status"] == "pass"
    assert run["production"]["state"] == "serving the restored database"
    assert run["production"]["line"].startswith(f"Production serving the restored database since {restored_at[11:19]}")

    _check_postmortem(run_dir, run, tmp_path_factory.mktemp("postmortems"))
    _check_report_in_browser(run_dir, run, tmp_path_factory.mktemp("report-artifacts"))
    assert verify_audit(run_dir).intact  # rendered again by `rollback report`: sealed again


def _check_postmortem(run_dir: Path, run: dict, out: Path) -> None:
    text = (run_dir / "postmortem.md").read_text()
    for section in ("Summary", "Timeline", "Root Cause", "Impact", "What Went Well", "What Went Wrong",
                    "Action Items", "Prevention"):
        assert f"\n## {section}\n" in text
    migration = json.loads((run_dir / "capture" / "prisma_migrations.json").read_text())
    row = next(r for r in migration if r["migration_name"] == MIGRATION)
    started = datetime.fromisoformat(row["started_at"]).strftime("%Y-%m-%d %H:%M:%S")
    assert f"| {started} | Migration `{MIGRATION}` started |" in text
    assert "| **[TO FILL IN: time]** | Issue detected |" in text
    assert "Systems restored" in text and "Run closed" in text
    assert f"| RPO (Data Loss), rows | counted | {_metric(run, 'rows_lost')['actual']} | info |" in text
    assert "| memberships | 3 | 2 | 1 | 6 |" in text
    assert text.count("[TO FILL IN") >= 10
    result = runner.invoke(app, ["postmortem", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    dated = out / f"{run['started_at'][:10]}-migration-rollback-postmortem.md"
    at = re.compile(r"read from the live catalog at \d\d:\d\d:\d\d UTC")  # read again, a moment later
    assert at.sub("", dated.read_text()) == at.sub("", text)


def _check_report_in_browser(run_dir: Path, run: dict, artifacts: Path) -> None:
    report = run_dir / "report.html"
    html = report.read_text()
    assert not re.search(r"https?:", html), re.search(r".{60}https?:.{60}", html).group(0)
    assert "<script" not in html and "<link" not in html
    sealed = report.read_bytes()
    assert runner.invoke(app, ["report", str(run_dir)]).exit_code == 0  # renders again on demand, to a new file
    assert report.read_bytes() == sealed and (run_dir / "report-2.html").exists()
    assert html.index('id="production"') < html.index("<h1>")  # the first line says production's state
    assert html.index('id="timeline"') < html.index('id="metrics"')  # the timeline right after the summary
    assert html.index("Next actions") < html.index('id="timeline"')
    assert f"rollback lost-rows {run_dir} --out DIR" in html

    _need_chromium()
    page = browser.open_page(report, artifacts, "succeeded")
    print(f"\nreport screenshot: {page.screenshot}\nreport as PDF: {page.pdf}")
    assert page.console == [], page.console
    assert page.failed_loads == []
    assert all(url.startswith(("file://", "data:")) for url in page.requests), page.requests
    data = page.data
    for heading in ("Success metrics", "Post-rollback checklist", "Timeline", "Rows lost per table"):
        assert heading in data["text"]
    assert [row[:4] for row in data["metricRows"]] == [
        [m["metric"], m["target"], m["actual"], {"pass": "✔ pass", "info": "ℹ info"}[m["status"]]]
        for m in run["metrics"]]
    plots = [i for i in data["images"] if i["src"].startswith("data:image/png")]
    assert len(plots) >= 4 and all(i["complete"] and i["width"] > 500 for i in plots)  # timeline, rows, lost, 05's
    assert data["scripts"] == 0 and data["stylesheets"] == 0 and data["brokenAnchors"] == []
    assert data["closedCode"] > 20 and data["openCode"] == 0 and data["failedCells"] == []
    assert page.screenshot.stat().st_size > 50_000 and page.pdf.read_bytes()[:4] == b"%PDF"
    assert data["production"]["text"].startswith("Production serving the restored database since")
    assert data["timelineTop"] < 1500  # no longer 2,000 px down


def test_a_failed_runs_report_names_the_failed_step_and_links_its_cell(incident, tmp_path_factory):
    _need_chromium()
    common = dict(migration_id=MIGRATION, environment="drill", config_path=str(incident.config),
                  reports_dir=str(incident.reports), run_id="damaged", approve=MIGRATION, backup=str(incident.backup))
    between_the_renames(incident, "damaged")
    with behind_the_runbook(incident, "damaged") as conn:  # the closed copy opened and damaged before it goes live
        conn.execute('ALTER TABLE users DROP COLUMN "emailVerified"')

    result = run_phases(**common)

    assert result.exit_code == 5 and result.report == result.run_dir / "report.html" and result.report_error is None
    page = browser.open_page(result.report, tmp_path_factory.mktemp("report-artifacts"), "failed")
    print(f"\nfailed run's report screenshot: {page.screenshot}")
    assert page.console == [] and page.failed_loads == []
    data = page.data
    assert data["errorLinks"] and data["errorLinks"][0].startswith("#02_execute-cell-")
    assert data["failedCells"] == [data["errorLinks"][0][1:]]  # the link leads to the highlighted cell
    assert data["openCode"] == 1  # the failed cell's code is shown; every other cell's is folded
    text = data["text"]
    assert "02_execute / step swap-promote-copy: RefusedError" in text
    assert "This cell failed (step swap-promote-copy)" in text and "RefusedError" in text
    assert "L3 (DevOps Lead)" in text and "RENAME TO" in text  # the next action: the way back
    assert re.search(r"RTO \(Recovery Time\)\s+< 15 min\s+-\s+– not measured", text)
    live = database_name(incident.url)
    assert data["production"]["text"].startswith("Production DOWN since ") and \
        f"(live name {live} missing)" in data["production"]["text"]
    assert data["production"]["top"] < 200  # on the first screen (the screenshot is kept)
    assert re.search(r"Downtime \(connections blocked\)\s+< 15 min\s+still down at \d\d:\d\d:\d\d UTC", text)
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["status"] == "failed" and run["production"]["state"] == "down" and run["failing_checks"]
    for check in run["failing_checks"]:  # every failing check is a ✘, with what was expected and found
        assert f"✘ {check['step']}: {check['name']}" in text
        assert f"{check['name']}: expected " in text
    assert "no session opened on the copy since it was closed: expected " in text
    postmortem = (result.run_dir / "postmortem.md").read_text()
    assert "- Step `swap-promote-copy` (02_execute) refused: PRODUCTION IS DOWN" in postmortem
    assert "do not promote" in postmortem
    impact = postmortem.split("\n## Impact\n", 1)[1].strip().splitlines()
    assert impact[0].startswith("**Production DOWN since ") and f"(live name {live} missing)" in impact[0]
    assert "- ✘ no session opened on the copy since it was closed: expected " in postmortem


def test_a_refused_run_is_reported_and_a_broken_report_never_changes_the_exit_code(incident, monkeypatch):
    import rollbacklib.report

    def broken(run_dir):
        raise RuntimeError("the report broke")

    monkeypatch.setattr(rollbacklib.report, "write_all", broken)
    result = run_phases(migration_id=MIGRATION, environment="drill", config_path=str(incident.config),
                        reports_dir=str(incident.reports), run_id="refused", backup=str(incident.backup),
                        phases=(Phase.PREPARE, Phase.EXECUTE))

    assert result.exit_code == 4 and result.summary["status"] == "refused"
    assert result.report is None and result.report_error == "RuntimeError: the report broke"
    last = [json.loads(line) for line in (result.run_dir / "journal.jsonl").read_text().splitlines()
            if '"step": "report"' in line][-1]
    assert last["step"] == "report" and last["status"] == "info" and "the report broke" in last["message"]
    assert json.loads((result.run_dir / "run.json").read_text())["exit_code"] == 4
    monkeypatch.undo()

    again = runner.invoke(app, ["report", str(result.run_dir)])

    assert again.exit_code == 0, again.output
    html = (result.run_dir / "report.html").read_text()
    assert "02_execute / step <code>gate</code>: RefusedError" in html and "exit code <strong>4</strong>" in html
    assert "the failed cell in 02_execute" in html


def test_report_and_postmortem_commands_need_a_run_folder(tmp_path):
    for command in (["report", str(tmp_path)], ["postmortem", str(tmp_path), "--out", str(tmp_path)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "is not a run folder" in result.output


# --- the row comparison on its own --------------------------------------------------------------

def test_row_diff_merges_key_ordered_streams_whatever_the_key_type(pg_server, fresh_db, tmp_path):
    other = with_database(fresh_db, database_name(fresh_db) + "_b")
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database_name(other)}"')
    ddl = ['CREATE TABLE t (k text COLLATE "C", n bigint, v text, PRIMARY KEY (k, n))',
           'CREATE TABLE only_id (id integer PRIMARY KEY, v text)',
           'CREATE TABLE no_key (v text)', 'CREATE TABLE by_uuid (id uuid PRIMARY KEY, v text)']
    keys = ["a", "B", "_x", "é", "Z", "a b", "ä", "10", "9", "back\\slash", 'quo"te']
    for url, extra in ((fresh_db, "kept"), (other, "restored")):
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in ddl:
                conn.execute(statement)
            for i, k in enumerate(keys):
                conn.execute("INSERT INTO t VALUES (%s, %s, 'same')", (k, -i))
            conn.execute("INSERT INTO only_id SELECT g, 'x' FROM generate_series(-50, 50) g")
            conn.execute("INSERT INTO no_key VALUES ('x')")
            conn.execute("INSERT INTO by_uuid SELECT md5(g::text)::uuid, E'a\\\\b\\t' || g FROM generate_series(1, 20) g")
    with psycopg.connect(fresh_db, autocommit=True) as kept:  # kept: 2 inserted, 1 updated, 1 deleted in t
        kept.execute("INSERT INTO t VALUES ('ü', 3, 'new'), ('a', 7, 'new')")
        kept.execute("UPDATE t SET v = 'changed' WHERE k = 'é'")
        kept.execute("DELETE FROM t WHERE k = 'B'")
        kept.execute("DELETE FROM only_id WHERE id < 0")  # 50 deleted
        kept.execute("UPDATE by_uuid SET v = 'changed' WHERE id = md5('7')::uuid")  # 1 updated
        kept.execute("CREATE TABLE created_after (id int PRIMARY KEY)")
        kept.execute("INSERT INTO created_after VALUES (1), (2)")

    with psycopg.connect(fresh_db) as kept, psycopg.connect(other) as restored:
        lost = rowdiff.diff_databases(kept, restored)
        # the same answer when the restored side is hashed ahead (at its validation) and the kept side later
        hashed = rowdiff.snapshot(restored, rowdiff.table_shapes(kept), tmp_path / "copy_rows")
        assert hashed["tables"]["t"]["rows"] == 11
        assert rowdiff.diff_against_snapshot(kept, tmp_path / "copy_rows") == lost

    t = lost["tables"]["t"]
    assert (t["inserted"], t["updated"], t["deleted"], t["kept_rows"], t["restored_rows"]) == (2, 1, 1, 12, 11)
    assert sorted(t["examples"]["inserted"]) == [["a", 7], ["ü", 3]] and t["examples"]["deleted"] == [["B", -1]]
    assert (lost["tables"]["only_id"]["deleted"], lost["tables"]["only_id"]["inserted"]) == (50, 0)
    assert lost["tables"]["created_after"]["inserted"] == 2
    assert lost["not_compared"] == ["no_key"] and lost["tables"]["no_key"]["lost"] is None
    assert lost["tables"]["by_uuid"]["updated"] == 1 and lost["tables"]["by_uuid"]["examples"]["updated"] == [
        [str(uuid.UUID(hashlib.md5(b"7").hexdigest()))]]
    assert lost["total"] == 4 + 50 + 2 + 1


def test_a_migrations_own_type_conversion_is_not_counted_as_lost(pg_server, fresh_db):
    """DOUBLE PRECISION to DECIMAL(65,30), as a second Prisma project's migration does: 300 rows the application
    never touched hold converted values in the kept database; only what the application wrote is lost."""
    kept_url = with_database(fresh_db, database_name(fresh_db) + "_kept")
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database_name(kept_url)}"')
    for url in (fresh_db, kept_url):  # the backup's state on both sides
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute('CREATE TABLE "Invoice" (id integer PRIMARY KEY, amount double precision NOT NULL, note text)')
            conn.execute("INSERT INTO \"Invoice\" SELECT g, g * 0.1::float8 + 0.2::float8, 'n' "
                         "FROM generate_series(1, 300) g")
    with psycopg.connect(kept_url, autocommit=True) as kept:  # the migration, then what the application wrote
        kept.execute('ALTER TABLE "Invoice" ALTER COLUMN amount TYPE DECIMAL(65,30)')
        assert kept.execute('SELECT amount::text FROM "Invoice" WHERE id = 1').fetchone()[0] == \
            "0.300000000000000000000000000000"  # 0.30000000000000004 in the backup
        kept.execute("INSERT INTO \"Invoice\" VALUES (301, 1.5, 'new'), (302, 2.5, 'new')")
        kept.execute("UPDATE \"Invoice\" SET note = 'paid' WHERE id IN (7, 8, 9)")
        kept.execute('DELETE FROM "Invoice" WHERE id = 300')
    with psycopg.connect(fresh_db) as restored:
        assert restored.execute('SELECT amount::text FROM "Invoice" WHERE id = 1').fetchone()[0] == "0.30000000000000004"

    with psycopg.connect(kept_url) as kept, psycopg.connect(fresh_db) as restored:
        lost = rowdiff.diff_databases(kept, restored)

    invoice = lost["tables"]["Invoice"]
    assert (invoice["inserted"], invoice["updated"], invoice["deleted"], lost["total"]) == (2, 3, 1, 6)
    assert sorted(invoice["examples"]["updated"]) == [[7], [8], [9]]
    assert "amount to numeric(65,30)" in invoice["note"]
