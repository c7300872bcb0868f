"""A failure in phase 04 after a good database rollback: no database way back, the rollback stands (a real drill:
`rollback drill --fault health-never-passes`, the gateway unhealthy after the swap), read from the live catalog."""

from __future__ import annotations

import json

import psycopg
import pytest

from rollbacklib.drill.faults import run_fault_drill
from rollbacklib.live import view
from rollbacklib.postgres.client import database_name, with_database
from rollbacklib.rollback_stands import database_rollback_stands
from rollbacklib.summary import RUN_SUMMARY


def test_a_failure_in_04_keeps_the_rollback_and_gives_no_way_back(tmp_path):
    lines: list[str] = []
    result = run_fault_drill("health-never-passes", users=60, reports_dir=str(tmp_path / "reports"),
                             say=lines.append)
    log = "\n".join(result.differences() + ["", *lines[-60:]])
    assert result.passed and result.runbook_exit == 5, log

    summary = json.loads((result.run_dir / RUN_SUMMARY).read_text())
    assert summary["status"] == "failed" and summary["error"]["phase"] == "04_restore_service", summary["error"]
    assert summary["way_back"] == [] and summary["way_back_command"] is None
    stands = summary["rollback_stands"]
    assert "The database rollback stands" in stands["line"] and "restored copy" in stands["line"]
    assert "start-services" in stands["services"] and "rollback resume" in stands["services"]
    report = (result.run_dir / "report.html").read_text()
    assert "The database rollback stands" in report and "Services:</strong>" in report


# --- the same judgement on a catalog staged by hand: what the live system shows decides ------------------------

ERROR_04 = {"phase": "04_restore_service", "step": "smoke-tests", "evidence": {"next_action": "log in by hand"}}


@pytest.fixture
def swapped(fresh_db):
    """A live name held by a restored copy (by oid), the original kept beside it: what a swap leaves."""
    live = database_name(fresh_db)
    admin_url = with_database(fresh_db, "postgres")
    kept = live + "__pre_rollback_t"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{kept}"')
        oids = dict(admin.execute("SELECT datname, oid FROM pg_database WHERE datname IN (%s, %s)",
                                  (live, kept)).fetchall())
        yield admin, admin_url, live, oids[kept], oids[live]
        admin.execute(f'ALTER DATABASE "{live}" WITH ALLOW_CONNECTIONS true')
        admin.execute(f'DROP DATABASE "{kept}"')


def _now(admin_url, live, original, copy):
    return view(admin_url, live=live, run_id="t", original_oid=original, copy_oid=copy, marker="validated",
                changes_made=True)


def test_the_rollback_stands_only_while_the_restored_database_serves_validated(swapped):
    admin, admin_url, live, original, copy = swapped
    now = _now(admin_url, live, original, copy)
    stands = database_rollback_stands(now, ERROR_04, True, "swap")
    assert stands["database"] == live and "No database way back" in stands["line"]
    assert "04_restore_service / smoke-tests" in stands["services"] and "log in by hand" in stands["services"]

    assert database_rollback_stands(now, {**ERROR_04, "phase": "02_execute"}, True, "swap") is None  # the window
    assert database_rollback_stands(now, ERROR_04, False, "swap") is None  # validation did not pass
    assert database_rollback_stands(now, None, True, "swap") is None
    # the original back under the live name (a way back was run): the rollback no longer stands
    assert database_rollback_stands(_now(admin_url, live, copy, original), ERROR_04, True, "swap") is None

    admin.execute(f'ALTER DATABASE "{live}" WITH ALLOW_CONNECTIONS false')  # production blocked now
    assert database_rollback_stands(_now(admin_url, live, original, copy), ERROR_04, True, "swap") is None
