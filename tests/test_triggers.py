"""The triggers: a sampler over real Prometheus text (prometheus_client's own output, served on 127.0.0.1)
and a real PostgreSQL, the rules over the series, and rollback assess running 00_assess under papermill."""

from __future__ import annotations

import json

import psycopg
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from typer.testing import CliRunner
from werkzeug import Request, Response

from rollbacklib.cli import app
from rollbacklib.config import load_config
from rollbacklib.drill.services import _key, _toml
from rollbacklib.triggers.evaluate import (BREACHING, FIRED, NO_ROLLBACK, NOT_EVALUATED, NOT_FIRED, ROLL_BACK_NOW,
                                           TEAM_DECISION, evaluate)
from rollbacklib.triggers.sampler import Sampler, read_series
from rollbacklib.trigger_settings import Check, EnvironmentTriggers, ResolvedTriggers, Rule, TriggerSettings

MIGRATION = "20251202020032_update_user_schema_final"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class App:
    """A service's metrics as prometheus_client writes them: requests by route and status, latency, memory."""

    def __init__(self, memory: float | None = None):
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests_total", "requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("http_request_duration_seconds", "latency", ["route"], buckets=BUCKETS,
                                 registry=self.registry)
        self.memory = Gauge("process_resident_memory_bytes", "rss", registry=self.registry) if memory else None
        if memory:
            self.memory.set(memory)

    def serve(self, route: str, status: int, seconds: float, times: int = 1) -> None:
        for _ in range(times):
            self.requests.labels(route, str(status)).inc()
            self.latency.labels(route).observe(seconds)

    def handler(self, request: Request) -> Response:
        assert request.method == "GET" and request.path == "/metrics"
        return Response(generate_latest(self.registry), content_type="text/plain; version=0.0.4")


def triggers(url: str | None, rules=(), checks=None, **settings) -> ResolvedTriggers:
    shared = TriggerSettings(rules=list(rules), checks=checks or {}, **settings)
    return ResolvedTriggers(shared, EnvironmentTriggers(metrics_url=url))


def test_the_sampler_measures_rates_p95_and_memory_from_deltas_and_reads_the_database(httpserver, fresh_db, tmp_path):
    state = {"app": App(memory=100e6)}
    httpserver.expect_request("/metrics").respond_with_handler(lambda r: state["app"].handler(r))
    httpserver.expect_request("/tickets", method="GET", headers={"Authorization": "Bearer t0ken-for-tests"}) \
        .respond_with_json({"data": {"count": 12}})
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int, authorizer text)")
        conn.execute("INSERT INTO users VALUES (1, 'a'), (2, NULL), (3, NULL)")
    checks = {"null_authorizer": Check(sql="SELECT count(*) FROM users WHERE authorizer IS NULL"),
              "tickets": Check(url=httpserver.url_for("/tickets"), field="data.count", token_env="TEST_TICKETS_TOKEN"),
              "broken": Check(sql="SELECT count(*) FROM no_such_table")}
    import os
    os.environ["TEST_TICKETS_TOKEN"] = "t0ken-for-tests"
    t = triggers(httpserver.url_for("/metrics"), checks=checks)
    t.metrics = t.metrics.model_copy(update={"exclude": {"route": ["/health"]}})
    sampler = Sampler(t, tmp_path / "series.jsonl", database_url=fresh_db)
    try:
        first = sampler.sample()
        app = state["app"]
        app.serve("/auth/login", 200, 0.02, times=8)
        app.serve("/auth/login", 500, 0.3, times=2)
        app.serve("/health", 500, 3.0, times=50)  # excluded by label: neither counted nor timed
        app.memory.set(120e6)
        second = sampler.sample()
        state["app"] = App(memory=50e6)  # the service restarted: its counters start again from 0
        state["app"].serve("/auth/verify", 200, 0.004, times=3)
        third = sampler.sample()
    finally:
        sampler.close()
        del os.environ["TEST_TICKETS_TOKEN"]

    assert first["derived"]["error_rate_percent"] is None and first["metrics"]["up"]
    d = second["derived"]
    assert d["requests"] == 10 and d["errors"] == 2 and d["error_rate_percent"] == 20.0
    # histogram_quantile by hand: the 9.5th of 10 observations lies in (0.25, 0.5], which holds the 9th and 10th
    assert d["p95_latency_seconds"] == pytest.approx(0.25 + 0.25 * (9.5 - 8) / (10 - 8))
    dt = second["t"] - first["t"]
    assert d["memory_growth_percent_per_minute"] == pytest.approx(20 * 60 / dt, rel=1e-3)
    assert third["derived"]["requests"] == 3 and third["derived"]["error_rate_percent"] == 0.0
    assert third["derived"]["p95_latency_seconds"] == pytest.approx(0.005 * 2.85 / 3)  # rank 2.85 of 3 in (0, 0.005]
    for s in (first, second, third):
        assert s["database"]["up"] and s["database"]["ms"] > 0
        assert s["checks"]["null_authorizer"] == {"value": 2.0, "error": None}
        assert s["checks"]["tickets"] == {"value": 12.0, "error": None}
        assert s["checks"]["broken"]["value"] is None and "no_such_table" in s["checks"]["broken"]["error"]
    assert read_series(tmp_path / "series.jsonl") == [first, second, third]

    httpserver.clear()  # nothing answers /metrics now; the database is gone too
    gone = Sampler(t, tmp_path / "series.jsonl", database_url=fresh_db.rsplit("/", 1)[0] + "/no_such_database")
    down = gone.sample()
    gone.close()
    assert not down["metrics"]["up"] and not down["database"]["up"] and "no_such_database" in down["database"]["error"]
    assert down["derived"]["error_rate_percent"] is None and len(gone.samples) == 4


def series(*rows) -> list[dict]:
    """Samples 10 s apart: (metrics up, error rate %, database up, check value) each."""
    out = []
    for i, (up, rate, db_up, check) in enumerate(rows):
        out.append({"t": 1000.0 + 10 * i, "ts": f"2025-12-02T02:{i:02d}:00+00:00", "metrics": {"up": up},
                    "database": {"up": db_up}, "checks": {"nulls": {"value": check}},
                    "derived": {"error_rate_percent": rate, "p95_latency_seconds": None,
                                "memory_growth_percent_per_minute": None}})
    return out


def rule(name, kind, signal, **kw) -> Rule:
    return Rule(name=name, kind=kind, signal=signal, **kw)


def test_rules_fire_breach_and_say_when_they_were_not_evaluated():
    rules = [rule("critical errors", "automatic", "error_rate_percent", above=10, for_seconds=30),
             rule("moderate errors", "manual", "error_rate_percent", above=1, below=5, for_seconds=20),
             rule("unreachable", "automatic", "uptime_percent", below=95, for_seconds=40),
             rule("db crash", "automatic", "database_up", below=1, for_seconds=20),
             rule("nulls", "automatic", "check:nulls", above=0),
             rule("tickets", "manual", "check:tickets", above=10),
             rule("slow", "manual", "p95_latency_seconds", above=1, for_seconds=900)]
    checks = {"nulls": Check(sql="SELECT 0")}
    # errors at 50% for intervals ending at 20, 30, 40 s: held from 10 s to 40 s = 30 s
    s = series((True, None, True, 0), (True, 2, True, 0), (True, 50, True, 0), (True, 50, True, 0),
               (True, 50, True, 0), (True, 3, True, 0))
    a = evaluate(triggers("http://127.0.0.1:1/metrics", rules, checks), s)
    by = {r.name: r for r in a.results}
    assert by["critical errors"].status == FIRED and by["critical errors"].evidence["held_seconds"] == 30
    assert by["critical errors"].evidence["peak"] == 50
    assert by["moderate errors"].status == BREACHING and by["moderate errors"].evidence["held_seconds"] == 10
    assert by["unreachable"].status == NOT_FIRED and by["unreachable"].evidence["uptime_percent"] == 100
    assert by["db crash"].status == NOT_FIRED and by["nulls"].status == NOT_FIRED
    assert by["tickets"].status == NOT_EVALUATED and "no check 'tickets' is configured" in by["tickets"].reason
    assert by["slow"].status == NOT_EVALUATED and "no data" in by["slow"].reason
    assert a.recommendation == ROLL_BACK_NOW and a.exit_code == 11

    # no metrics URL: the metric triggers are not evaluated, never passing; the database ones still are
    down = series(*[(False, None, i < 1, 0) for i in range(4)])
    a = evaluate(triggers(None, rules, checks), down)
    by = {r.name: r for r in a.results}
    assert {by[n].status for n in ("critical errors", "moderate errors", "unreachable", "slow")} == {NOT_EVALUATED}
    assert "no triggers.metrics_url" in by["unreachable"].reason
    assert by["db crash"].status == FIRED and by["db crash"].evidence["held_seconds"] == 20

    # only a manual trigger: the team decides; a short series cannot prove a long trigger either way
    moderate = series(*[(True, 3, True, 0) for _ in range(4)])
    a = evaluate(triggers("http://127.0.0.1:1/metrics", rules[1:2] + rules[6:], checks), moderate)
    assert a.recommendation == TEAM_DECISION and [r.name for r in a.fired] == ["moderate errors"]
    long_rule = rule("long", "automatic", "error_rate_percent", above=10, for_seconds=3600)
    a = evaluate(triggers("http://127.0.0.1:1/metrics", [long_rule]), moderate)
    assert a.results[0].status == NOT_EVALUATED and "shorter than the 3600 s" in a.results[0].reason
    assert a.recommendation == NO_ROLLBACK and a.exit_code == 0

    # uptime: the share of answering samples over the trailing window
    flaky = series(*[(i % 3 != 0, 0, True, 0) for i in range(7)])
    a = evaluate(triggers("http://127.0.0.1:1/metrics", [rules[2]]), flaky)
    assert a.results[0].status == FIRED and a.results[0].evidence["uptime_percent"] == 50.0  # i = 3..6: 4 and 5 answered


def test_rule_config_is_checked():
    with pytest.raises(ValueError, match="give above, below or both"):
        Rule(name="x", kind="manual", signal="error_rate_percent")
    with pytest.raises(ValueError, match="unknown signal"):
        Rule(name="x", kind="manual", signal="cpu", above=1)
    with pytest.raises(ValueError, match="exactly one of sql or url"):
        Check()
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        Check(url="http://x", token_env="Bearer abc")


def write_config(tmp_path, edit) -> str:
    """The packaged config, edited, written whole (every path absolute)."""
    config = load_config(None)
    edit(config)
    path = tmp_path / "runbook.toml"
    path.write_text("".join(f"{_key(k)} = {_toml(v)}\n" for k, v in config.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude={"path"}).items()))
    return str(path)


def scaled(config, factor: float, metrics_url: str | None) -> None:
    """The seed's own rules with their windows scaled down, for a test that lasts seconds."""
    config.triggers.rules = [r.model_copy(update={"for_seconds": r.for_seconds * factor}) for r in config.triggers.rules]
    config.triggers.interval_seconds = 0.3
    config.environments["drill"].triggers = EnvironmentTriggers(metrics_url=metrics_url)


def test_rollback_assess_runs_00_assess_and_exits_with_the_recommendation(httpserver, fresh_db, tmp_path, monkeypatch):
    monkeypatch.setenv("ROLLBACK_DRILL_DATABASE_URL", fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:  # the seed's schema after the bad migration, in short
        conn.execute('CREATE TABLE users (id text, "authorizerId" text NOT NULL)')
        conn.execute("CREATE TABLE workflows (id text, status text)")
        conn.execute("INSERT INTO users VALUES ('u1', 'a1')")
    app = App()

    def metrics(request: Request) -> Response:
        app.serve("/auth/login", 500, 0.03, times=4)  # every login fails: the incident
        app.serve("/auth/verify", 200, 0.01, times=1)
        return app.handler(request)

    httpserver.expect_request("/metrics").respond_with_handler(metrics)
    config = write_config(tmp_path, lambda c: scaled(c, 1 / 180, httpserver.url_for("/metrics")))
    runner = CliRunner()
    result = runner.invoke(app_cli := app_command(), ["assess", "--env", "drill", "-m", MIGRATION, "--config", config,
                                                      "--reports-dir", str(tmp_path / "reports"), "--window", "2",
                                                      "--interval", "0.25", "--run-id", "a1"])
    assert result.exit_code == 11, result.output
    folder = tmp_path / "reports" / MIGRATION / "drill" / "assessments" / "a1"
    assessment = json.loads((folder / "assessment.json").read_text())
    by = {r["name"]: r for r in assessment["results"]}
    assert assessment["recommendation"] == ROLL_BACK_NOW and "critical error rate" in assessment["fired"]
    assert by["critical error rate"]["evidence"]["peak"] == 80.0
    assert by["data loss"]["status"] == FIRED and by["data loss"]["evidence"]["peak"] == 2  # both columns dropped
    assert by["null authorizerId"]["status"] == NOT_FIRED
    assert by["mass support tickets"]["status"] == NOT_EVALUATED and "no source" in by["mass support tickets"]["reason"]
    assert by["memory leak"]["status"] == NOT_EVALUATED and "process_resident_memory_bytes is not exported" in \
        by["memory leak"]["reason"]
    assert "ROLL BACK NOW" in result.output and "critical error rate: FIRED" in result.output
    assert (folder / "triggers.png").read_bytes()[:4] == b"\x89PNG"
    nb = json.loads((folder / "00_assess.ipynb").read_text())
    assert any("ROLL BACK NOW" in "".join(o.get("data", {}).get("text/markdown", ""))
               for c in nb["cells"] for o in c.get("outputs", []))
    assert len(read_series(folder / "series.jsonl")) >= 5
    events = [json.loads(line) for line in (folder / "journal.jsonl").read_text().splitlines()]
    assert [e["evidence"]["recommendation"] for e in events if e["step"] == "recommendation"] == [ROLL_BACK_NOW]

    bad = runner.invoke(app_cli, ["assess", "--env", "nowhere", "-m", MIGRATION, "--config", config])
    assert bad.exit_code == 2 and "Unknown environment 'nowhere'" in bad.output


def app_command():
    return app


def test_a_run_without_metrics_says_in_one_line_why_it_has_no_service_plot(tmp_path):
    from rollbacklib.resources import default_config
    from rollbacklib.triggers.background import absent_reason, run_service_figure

    run_dir = tmp_path / "reports" / MIGRATION / "drill" / "r1"
    run_dir.mkdir(parents=True)
    events = [{"step": "phase", "status": "started", "phase": "01_prepare", "ts": "2025-12-02T02:00:00+00:00",
               "evidence": {"config": str(default_config())}}]
    assert absent_reason(run_dir, events) == ("no metrics configured: environment 'drill' has no triggers.metrics_url, "
                                              "so the service's error rate and latency were not sampled during this run")
    assert run_service_figure(run_dir, events) is None
    (run_dir / "service_metrics.jsonl").write_text(json.dumps({"t": 1.0, "ts": "x", "metrics": {"up": True}}) + "\n")
    assert "fewer than two samples" in absent_reason(run_dir, events)
