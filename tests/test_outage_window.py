"""The outage window: only catalog steps between block and reopen, in one kernel; idle sessions not waited for."""

from __future__ import annotations

import json
import re
import threading
import time

import psycopg

from rollbacklib.journal import read_events
from rollbacklib.pipeline import run_phases
from rollbacklib.steps import Phase, StepName

from conftest import MIGRATION

# What a statement of the window may be: a change to pg_database, a comment on a database, or the end of sessions
# found in pg_stat_activity. Nothing else; in particular no statement that reads or writes a table.
CATALOG_ONLY = re.compile(r'^(ALTER DATABASE "[^"]+" (WITH (ALLOW_CONNECTIONS (true|false)|CONNECTION LIMIT -?\d+)'
                          r'|RENAME TO "[^"]+")|COMMENT ON DATABASE "[^"]+" IS .*'
                          r"|SELECT pg_terminate_backend\(pid\) FROM pg_stat_activity WHERE datname = '[^']+' "
                          r"AND pid <> pg_backend_pid\(\) AND backend_type = 'client backend'"
                          r"|SELECT setval\('[^']+', -?\d+, true\))$", re.S)  # a sequence moved past its old value


def _common(incident, run_id: str) -> dict:
    return dict(migration_id=MIGRATION, environment="drill", config_path=str(incident.config),
                reports_dir=str(incident.reports), run_id=run_id, approve=MIGRATION, backup=str(incident.backup))


def _window(events: list[dict]) -> list[dict]:
    start = next(i for i, e in enumerate(events) if e["step"] == StepName.BLOCK and e["status"] == "changed")
    end = max(i for i, e in enumerate(events) if e["step"] == StepName.HEALTH and e["status"] == "ok")
    return events[start:end + 1]


class Sessions:
    """The application's sessions on the live database as it is blocked: two idle, two doing work that ends."""

    def __init__(self, url: str):
        self.idle = psycopg.connect(url, autocommit=True, application_name="idle")
        self.idle_in_tx = psycopg.connect(url, application_name="idle-in-tx-holding-nothing")
        self.idle_in_tx.execute("SELECT 1")  # a transaction open, no lock but its own virtual xid
        self.holding = psycopg.connect(url, application_name="idle-in-tx-holding-a-lock")
        self.holding.execute("SELECT count(*) FROM users")  # ACCESS SHARE on users, held until it commits
        self.busy = psycopg.connect(url, autocommit=True, application_name="busy")
        self.pids = {name: conn.info.backend_pid for name, conn in
                     (("idle", self.idle), ("idle-in-tx", self.idle_in_tx), ("holding", self.holding),
                      ("busy", self.busy))}
        self._threads: list[threading.Thread] = []

    def work_from(self, journal, step: str) -> None:
        """As the runbook starts ``step`` (just before the window), the busy session starts a 3 s query and the
        one holding a lock commits 2 s later: active work that ends on its own within drain_wait_seconds."""
        def reached() -> None:
            while not journal.exists() or not any(e["step"] == step and e["status"] == "started"
                                                  for e in read_events(journal)):
                time.sleep(0.005)

        def busy() -> None:
            reached()
            try:
                self.busy.execute("SELECT pg_sleep(3)")
            except psycopg.Error:
                pass

        def holding() -> None:
            reached()
            time.sleep(2)
            try:
                self.holding.commit()
            except psycopg.Error:
                pass

        self._threads = [threading.Thread(target=f, daemon=True) for f in (busy, holding)]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        for thread in self._threads:
            thread.join(timeout=30)
        for conn in (self.idle, self.idle_in_tx, self.holding, self.busy):
            conn.close()


def test_idle_sessions_are_not_waited_for_and_active_work_gets_its_wait(incident):
    run_dir = incident.reports.resolve() / MIGRATION / "drill" / "drain"
    sessions = Sessions(incident.url)
    sessions.work_from(run_dir / "journal.jsonl", StepName.GATE)
    try:
        result = run_phases(**_common(incident, "drain"))
    finally:
        sessions.close()
    assert result.exit_code == 0, result.summary["error"]
    events = read_events(result.run_dir)
    drained = next(e["evidence"] for e in events if e["step"] == StepName.DRAIN and e["status"] == "info"
                   and "idle" in e["evidence"])
    idle = {s["pid"] for s in drained["idle"]}
    active = {s["pid"] for s in drained["active"]}
    assert {sessions.pids["idle"], sessions.pids["idle-in-tx"]} <= idle
    assert {sessions.pids["holding"], sessions.pids["busy"]} <= active
    assert not idle & active
    assert drained["still_active"] == []  # the active ones were waited for until they ended on their own
    # the idle ones were not waited for: terminate ended them (kept as evidence), and the active ones too, once
    # their work had ended and they sat idle
    terminated = {s["pid"]: s["activity"] for s in json.loads((result.run_dir / "terminated_sessions.json").read_text())}
    assert all(terminated[pid] == "idle" for pid in sessions.pids.values()), terminated


def test_only_catalog_statements_run_between_block_and_reopen_in_one_kernel(incident):
    result = run_phases(**_common(incident, "window"))
    assert result.exit_code == 0, result.summary["error"]
    events = read_events(result.run_dir)
    window = _window(events)

    statements = [e["message"] for e in window if e["status"] in ("ran", "changed")]
    assert statements, "the window ran no statement (the test did not test)"
    for statement in statements:
        assert CATALOG_ONLY.match(statement), f"not a catalog statement inside the outage window: {statement}"
    # every step between block and health is one of the window's, all in 02_execute, with no phase boundary
    # (and so no kernel started) in between
    steps = {e["step"] for e in window} - {"service-restored"}
    assert steps <= {StepName.BLOCK, StepName.DRAIN, StepName.TERMINATE, StepName.SWAP_KEEP, StepName.SEQUENCES,
                     StepName.SWAP_PROMOTE, StepName.REOPEN, StepName.HEALTH}, steps
    assert {e["phase"] for e in window} == {Phase.EXECUTE}
    assert not [e for e in window if e["step"] in ("phase", "attempt", "kernel")]
    # the copy's identity was checked from the maintenance database: no session reached it between its close
    # and its promote, so nothing of the window read it
    identity = next(e for e in window if e["step"] == StepName.SWAP_PROMOTE and "checks" in e["evidence"])
    assert all(c["passed"] for c in identity["evidence"]["checks"])
    assert "no session opened on the copy since it was closed" in {c["name"] for c in identity["evidence"]["checks"]}
    # what grows with the database happens outside: the restore, the copy's validation and hashes before the
    # block, the kept side of compare-rows after the database answered
    block_at, health_at = window[0]["ts"], window[-1]["ts"]
    for step in (StepName.RESTORE, StepName.VALIDATE_COPY):
        assert max(e["ts"] for e in events if e["step"] == step) < block_at
    assert min(e["ts"] for e in events if e["step"] == StepName.COMPARE_ROWS) > health_at
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["rows_lost"]["total"] > 0 and run["downtime_seconds"] is not None


def test_rows_lost_are_pending_until_compare_rows_counts_them_after_the_window(incident):
    common = _common(incident, "pending")
    first = run_phases(**common, phases=(Phase.PREPARE, Phase.EXECUTE, Phase.VALIDATE, Phase.RESTORE_SERVICE))
    assert first.summary["error"] is None and first.summary["production"]["state"] == "serving the restored database"
    metric = next(m for m in first.summary["metrics"] if m["key"] == "rows_lost")
    assert first.summary["rows_lost"] is None and metric["status"] == "pending" and metric["actual"] == "pending"
    assert "Pending: counted after the outage window" in (first.run_dir / "report.html").read_text()

    second = run_phases(**common)  # the same run again: 05 counts them

    assert second.exit_code == 0, second.summary["error"]
    lost = second.summary["rows_lost"]
    assert lost["total"] > 0 and lost["total"] == sum(d["lost"] for d in lost["tables"].values())
    assert lost["total"] == lost["inserted"] + lost["updated"] + lost["deleted"]
    events = read_events(second.run_dir)
    reopened = max(e["ts"] for e in events if e["step"] == StepName.REOPEN and e["status"] == "changed")
    counted = next(e for e in events if e["step"] == StepName.COMPARE_ROWS and "rows_lost" in e["evidence"])
    assert counted["ts"] > reopened and counted["phase"] == Phase.CLOSE
