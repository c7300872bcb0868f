"""``rollback drill --services``: the scenario's apps really go to 0 for the window and come back; login
fails before the rollback and passes after it; traffic measures the error rate around it."""

from __future__ import annotations

import os
import secrets

import psutil

from rollbacklib.drill import run_drill
from rollbacklib.drill.services import PASSWORD_ENV, SCRIPTS
from rollbacklib.journal import read_events


def test_drill_with_services_stops_and_starts_them_and_measures_login(tmp_path, monkeypatch):
    password = secrets.token_urlsafe(16)  # made at run time; must appear in no file of the run
    monkeypatch.setenv(PASSWORD_ENV, password)
    lines: list[str] = []
    result = run_drill(users=100, reports_dir=str(tmp_path / "reports"), say=lines.append, services=True)
    assert result.exit_code == 0 and result.rolled_back, "\n".join(lines)
    measured = result.services
    assert measured["login_before"] == 500 and measured["login_after"] == 200
    traffic = measured["traffic"]
    assert traffic["incident"]["requests"] > 0 and traffic["incident"]["error_rate"] == 1.0
    assert traffic["rollback"]["errors"] > 0 and traffic["after"]["error_rate"] == 0.0

    events = read_events(result.run.run_dir / "journal.jsonl")
    changed = {e["step"]: e for e in events if e["status"] == "changed"
               and e["step"] in ("stop-services", "start-services", "swap-keep-live")}
    stopped, started = changed["stop-services"]["evidence"]["services"], changed["start-services"]["evidence"]["services"]
    assert [s["service"] for s in stopped] == list(SCRIPTS) and all(s["replicas"] == 0 for s in stopped)
    assert all(s["replicas"] == 1 and s["started"] for s in started)
    assert changed["stop-services"]["seq"] < changed["swap-keep-live"]["seq"] < changed["start-services"]["seq"]
    # in the seed's order: the gateway first, healthy, then the others; then the health check and the smoke tests
    starts = [e for e in events if e["step"] == "start-services" and e["status"] == "changed"]
    assert [e["evidence"]["service"] for e in starts] == list(SCRIPTS)
    gateway_healthy = next(e for e in events if e["step"] == "start-services"
                           and e["message"].startswith("api-gateway healthy"))
    assert starts[0]["seq"] < gateway_healthy["seq"] < starts[1]["seq"]
    ok = {e["step"]: e["seq"] for e in events if e["status"] == "ok"}
    assert ok["start-services"] < ok["service-health"] < ok["smoke-tests"]
    smoke = next(e for e in events if e["step"] == "smoke-tests" and "tests" in e["evidence"])
    assert [(t["name"], t["status"]) for t in smoke["evidence"]["tests"]] == [("login", 200), ("protected", 200)]
    # phase 01 kept each service's last log lines and the gateway's metrics, sealed with the evidence
    capture = result.run.run_dir / "capture"
    assert "http_requests_total" in (capture / "metrics.prom").read_text()
    assert all((capture / "logs" / f"{name}.log").read_text() for name in SCRIPTS)
    sealed = {e["evidence"]["path"] for e in events if e["step"] == "artifact"}
    assert {"capture/metrics.prom", "capture/service_snapshot.json"} <= sealed
    for s in stopped:  # the process the runbook stopped is gone, not merely unhealthy
        assert not psutil.pid_exists(s["pid"]) or psutil.Process(s["pid"]).status() == psutil.STATUS_ZOMBIE

    # the gateway's own /metrics, sampled beside the run: failing logins before the window, none failing after it
    from rollbacklib.triggers.sampler import read_series

    metrics = read_series(result.run.run_dir / "service_metrics.jsonl")
    blocked = next(e["ts"] for e in events if e["step"] == "block-connections" and e["status"] == "started")
    started = next(e["ts"] for e in events if e["step"] == "start-services" and e["status"] == "changed")
    rated = [s for s in metrics if s["derived"]["requests"]]
    before = [s for s in rated if s["ts"] < blocked]
    after = [s for s in rated if s["ts"] > started]
    assert before and all(s["derived"]["error_rate_percent"] == 100.0 for s in before)
    assert after and after[-1]["derived"]["error_rate_percent"] == 0.0
    assert "The service across the run" in (result.run.run_dir / "report.html").read_text()

    for folder, _, files in os.walk(result.run.run_dir):
        for name in files:
            assert password.encode() not in open(os.path.join(folder, name), "rb").read(), name
