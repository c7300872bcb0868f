"""The triggers against real parts: the drill's api-gateway process and its traffic generator (the broken
login makes the error-rate trigger fire), rollback watch alerting and stopping on SIGTERM, and watch
starting the real runbook (auto_rollback) with the service's metrics sampled across the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import psycopg
from werkzeug import Request, Response

from rollbacklib.drill.prisma_migrate import apply_migrations
from rollbacklib.phases.assess import evaluate, open_assessment, sample
from rollbacklib.triggers.evaluate import FIRED, ROLL_BACK_NOW
from rollbacklib.triggers.sampler import read_series
from rollbacklib.trigger_settings import EnvironmentTriggers
from rollbacklib.watch import watch
from rollbacklib.verify import verify_audit
from test_gateway_process import GATEWAY, MIGRATION, PASSWORD_ENV, SERVICES, URL_ENV, EMAIL, gateway, scenario_db  # noqa: F401
from test_triggers import App, scaled, write_config


def test_the_broken_login_makes_the_error_rate_trigger_fire_on_the_real_gateway(gateway, tmp_path):
    platform, base, (url, scenario, password) = gateway
    platform.scale(GATEWAY, 1)
    with psycopg.connect(url, autocommit=True) as conn:  # the incident: passwordHash is gone, login answers 500
        apply_migrations(conn, scenario.migrations_dir, until=MIGRATION, including=True)

    def edit(config):
        scaled(config, 1 / 90, f"{base}/metrics")  # the seed's 3 min become 2 s
        config.environments["drill"].database_url_env = URL_ENV
    config = write_config(tmp_path, edit)
    traffic = subprocess.Popen([sys.executable, str(SERVICES / "traffic.py"), "--base-url", base, "--email", EMAIL,
                                "--password-env", PASSWORD_ENV, "--rate", "10", "--seconds", "30"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30  # the generator is running (a loaded machine starts Python slowly)
        while 'route="/auth/login"' not in httpx.get(f"{base}/metrics").text and time.monotonic() < deadline:
            time.sleep(0.2)
        ctx = open_assessment(migration_id=MIGRATION, environment="drill", config_path=config,
                              reports_dir=str(tmp_path / "reports"), window_seconds=4, interval_seconds=0.5)
        series = sample(ctx)
    finally:
        traffic.send_signal(signal.SIGTERM)
        traffic.wait(10)
    assessment = evaluate(ctx, series)
    by = {r.name: r for r in assessment.results}
    critical = by["critical error rate"]
    assert critical.status == FIRED, assessment.lines()
    assert critical.evidence["held_seconds"] >= 2 and critical.evidence["peak"] == 100.0
    assert sum(s["derived"]["requests"] or 0 for s in series) >= 10  # measured from the gateway's own counters
    assert assessment.recommendation == ROLL_BACK_NOW
    # the gateway exports its process's resident memory (prometheus_client's ProcessCollector): the rule is judged
    assert by["memory leak"].status != "not evaluated", by["memory leak"]
    answered = [s["metrics"] for s in series if (s.get("metrics") or {}).get("up")]
    assert answered and all(m.get("memory_bytes") for m in answered)


def _failing_service(httpserver) -> App:
    app = App()

    def metrics(request: Request) -> Response:
        app.serve("/auth/login", 500, 0.02, times=3)
        app.serve("/auth/verify", 200, 0.01, times=1)
        return app.handler(request)

    httpserver.expect_request("/metrics", method="GET").respond_with_handler(metrics)
    return app


def test_watch_alerts_without_auto_rollback_and_stops_cleanly_on_sigterm(httpserver, fresh_db, tmp_path):
    _failing_service(httpserver)
    config = write_config(tmp_path, lambda c: scaled(c, 1 / 180, httpserver.url_for("/metrics")))
    env = {**os.environ, "ROLLBACK_DRILL_DATABASE_URL": fresh_db}
    reports = tmp_path / "reports"
    proc = subprocess.Popen([sys.executable, "-m", "rollbacklib.cli", "watch", "--env", "drill", "-m", MIGRATION,
                             "--config", config, "--reports-dir", str(reports), "--interval", "0.3", "--run-id", "w1",
                             "--yes"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = reports / MIGRATION / "drill" / "assessments" / "w1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "critical error rate" not in (
            (folder / "journal.jsonl").read_text() if (folder / "journal.jsonl").exists() else ""):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + err
    assert "ALERT AUTOMATIC trigger fired: critical error rate" in out and "Stopped (SIGTERM)" in out
    assert "automatic rollback off" in out  # auto_rollback is false: --yes alone starts nothing
    events = [json.loads(line) for line in (folder / "journal.jsonl").read_text().splitlines()]
    alerts = [e for e in events if e["step"] == "alert" and e["status"] == "info" and "trigger" in e["evidence"]]
    assert {a["evidence"]["trigger"] for a in alerts} >= {"critical error rate"}
    assert len([a for a in alerts if a["evidence"]["trigger"] == "critical error rate"]) == 1  # once, not every sample
    assert events[-1]["step"] == "watch" and events[-1]["evidence"]["stopped_by"] == "SIGTERM"
    assert [p.name for p in (reports / MIGRATION / "drill").iterdir()] == ["assessments"]  # no rollback run started
    assert len(read_series(folder / "series.jsonl")) == events[-1]["evidence"]["samples"]


def test_watch_with_auto_rollback_starts_the_runbook_which_samples_the_service_across_the_run(
        incident, httpserver, tmp_path):
    _failing_service(httpserver)

    def edit(config):
        scaled(config, 1 / 180, httpserver.url_for("/metrics"))
        config.environments["drill"].triggers = EnvironmentTriggers(
            metrics_url=httpserver.url_for("/metrics"), auto_rollback=True, run_interval_seconds=0.5)
        config.environments["drill"].backup_dir = incident.backup.parent  # the run finds the incident's backup
    config = write_config(tmp_path, edit)
    ctx = open_assessment(migration_id=MIGRATION, environment="drill", config_path=config,
                          reports_dir=str(incident.reports))
    hooked: list[dict] = []
    lines: list[str] = []
    result = watch(ctx, approve=MIGRATION, say=lines.append, alert=hooked.append, max_seconds=60,
                   handle_signals=False)
    assert result.stopped_by == "rollback" and result.run is not None, lines
    assert result.run.exit_code == 0, result.run.summary.get("error")
    assert "data loss" in {h["trigger"] for h in hooked}  # the dropped columns: on the first sample already
    run_dir = result.run.run_dir
    run_events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    approval = next(e for e in run_events if e["step"] == "gate" and "approval" in e["evidence"])
    assert approval["evidence"]["approval"]["how"].startswith("--yes")

    metrics = read_series(run_dir / "service_metrics.jsonl")
    first, last = metrics[0]["t"], metrics[-1]["t"]
    assert len(metrics) >= 3 and all(s["database"] is None for s in metrics)  # /metrics only, never the database
    blocked = next(e for e in run_events if e["step"] == "block-connections" and e["status"] == "started")
    from datetime import datetime
    assert first < datetime.fromisoformat(blocked["ts"]).timestamp() < last
    drawn = json.loads((run_dir / "service_triggers.json").read_text())  # the thresholds the plot draws
    assert "critical error rate" in {r["name"] for r in drawn["rules"]}
    report = (run_dir / "report.html").read_text()
    assert "The service across the run" in report and "No service plot" not in report
    assert verify_audit(run_dir).intact


def test_watch_stops_cleanly_on_sigint_and_gives_the_handler_back(httpserver, fresh_db, tmp_path, monkeypatch):
    import threading

    _failing_service(httpserver)
    monkeypatch.setenv("ROLLBACK_DRILL_DATABASE_URL", fresh_db)
    config = write_config(tmp_path, lambda c: scaled(c, 1 / 180, httpserver.url_for("/metrics")))
    ctx = open_assessment(migration_id=MIGRATION, environment="drill", config_path=config,
                          reports_dir=str(tmp_path / "reports"), interval_seconds=0.2)
    before = signal.getsignal(signal.SIGINT)
    threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    result = watch(ctx, say=lambda line: None, max_seconds=30)
    assert result.stopped_by == "SIGINT" and result.samples >= 2 and result.run is None
    assert signal.getsignal(signal.SIGINT) is before
    assert len(read_series(ctx.series_path)) == result.samples
