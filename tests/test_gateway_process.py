"""The drill's api-gateway served for real against the embedded PostgreSQL, started and stopped by the
``process`` platform: login passes before the bad migration and answers 500 after it."""

from __future__ import annotations

import importlib.util
import secrets
import socket
import sys

import httpx
import psutil
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rollbacklib.config import Service
from rollbacklib.drill.prisma_migrate import apply_migrations
from rollbacklib.drill.scenario import generate_data, load_scenario, prepare_until
from rollbacklib.errors import StepError
from rollbacklib.platform_settings import ProcessSettings
from rollbacklib.platforms import platform_for
from rollbacklib.probes import HealthCheck, SmokeTest, check_health, run_smoke_tests
from rollbacklib.resources import scenarios_dir

MIGRATION = "20251202020032_update_user_schema_final"
SERVICES = scenarios_dir() / "auth-platform" / "services"
URL_ENV = "ROLLBACK_TEST_GATEWAY_DATABASE_URL"
PASSWORD_ENV = "ROLLBACK_TEST_GATEWAY_PASSWORD"
EMAIL = "user1@example.com"
GATEWAY = Service(name="api-gateway", replicas=1)


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"scenario_{name}", SERVICES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SERVICES))
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Env:
    def __init__(self, settings):
        self.name, self.platform, self.service_platform = "test", settings, "process"


def process_platform(tmp_path, command: list[str], *, port: int, timeout: float = 20):
    settings = ProcessSettings(kind="process", timeout_seconds=timeout, services={"api-gateway": {
        "command": command, "pid_file": tmp_path / "api-gateway.pid", "health_url": f"http://127.0.0.1:{port}/health",
        "stop_timeout_seconds": 3}})
    return platform_for(Env(settings))


@pytest.fixture
def scenario_db(fresh_db, monkeypatch):
    """The scenario's schema before the bad migration, 40 users, the test user's password (made at run time)."""
    scenario = load_scenario(scenarios_dir() / "auth-platform")
    password = secrets.token_urlsafe(12)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        prepare_until(conn, scenario, MIGRATION)
        generate_data(conn, scenario, 40)
        assert load("api_gateway").set_password(conn, EMAIL, password) == 1
    monkeypatch.setenv(URL_ENV, fresh_db)
    monkeypatch.setenv(PASSWORD_ENV, password)
    return fresh_db, scenario, password


@pytest.fixture
def gateway(scenario_db, tmp_path):
    port = free_port()
    command = ["{python}", str(SERVICES / "api_gateway.py"), "--port", str(port), "--database-url-env", URL_ENV]
    platform = process_platform(tmp_path, command, port=port)
    yield platform, f"http://127.0.0.1:{port}", scenario_db
    platform.scale(GATEWAY, 0)


def smoke_tests(base: str) -> list[SmokeTest]:
    return [SmokeTest.model_validate(t) for t in (
        {"name": "login", "method": "POST", "url": f"{base}/auth/login", "password_env": PASSWORD_ENV,
         "json": {"email": EMAIL, "password": "{password}"}, "extract": {"access_token": "access_token"}},
        {"name": "verify", "url": f"{base}/auth/verify", "bearer": "access_token"},
        {"name": "protected", "url": f"{base}/protected/endpoint", "bearer": "access_token"})]


def login(base: str, password: str) -> httpx.Response:
    return httpx.post(f"{base}/auth/login", json={"email": EMAIL, "password": password}, timeout=5)


def test_gateway_serves_login_before_the_migration_and_500_after_it(gateway):
    platform, base, (url, scenario, password) = gateway
    started = platform.scale(GATEWAY, 1)
    assert started["replicas"] == 1 and started["started"] and platform.replicas(GATEWAY) == 1
    assert httpx.get(f"{base}/health").json() == {"status": "ok", "database": "connected"}

    ok = login(base, password)
    assert ok.status_code == 200 and ok.json()["token_type"] == "Bearer"
    bearer = {"Authorization": f"Bearer {ok.json()['access_token']}"}
    assert httpx.get(f"{base}/auth/verify", headers=bearer).json()["email"] == EMAIL
    assert httpx.get(f"{base}/protected/endpoint", headers=bearer).json()["user"]["email"] == EMAIL
    assert login(base, password + "x").status_code == 401
    assert httpx.get(f"{base}/protected/endpoint").status_code == 401
    assert check_health(HealthCheck(url=f"{base}/health", expect_json={"database": "connected"}))[0]["ok"]
    assert [e["status"] for e in run_smoke_tests(smoke_tests(base))] == [200, 200, 200]

    with psycopg.connect(url, autocommit=True) as conn:  # the incident
        apply_migrations(conn, scenario.migrations_dir, until=MIGRATION, including=True)
    broken = login(base, password)
    assert broken.status_code == 500 and "passwordHash" in broken.json()["detail"]
    assert httpx.get(f"{base}/health").status_code == 200  # the database still answers: only login is broken
    with pytest.raises(StepError, match="Smoke test 'login' failed: HTTP 500") as err:
        run_smoke_tests(smoke_tests(base))
    assert err.value.escalate == "L1"

    traffic = load("traffic").run(base, EMAIL, password, rate=20, seconds=0.5)
    assert traffic["requests"] >= 3 and traffic["error_rate"] == 1.0 and traffic["routes"]["/auth/login"]["p95_ms"]

    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{base}/metrics").text)}
    requests = {(s.labels["route"], s.labels["status"]): s.value for s in families["http_requests"].samples
                if s.name == "http_requests_total"}
    assert requests[("/auth/login", "200")] == 2 and requests[("/auth/login", "401")] == 1
    assert requests[("/auth/login", "500")] == 2 + traffic["routes"]["/auth/login"]["requests"]
    buckets = [s for s in families["http_request_duration_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["route"] == "/auth/login"]
    assert buckets and buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == requests[("/auth/login", "200")] \
        + requests[("/auth/login", "401")] + requests[("/auth/login", "500")]

    pid = started["pid"]
    stopped = platform.scale(GATEWAY, 0)
    assert stopped["replicas"] == 0 and stopped["signals"] == ["SIGTERM"] and platform.replicas(GATEWAY) == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, psutil.Process(pid).as_dict(["cmdline", "ppid", "status", "create_time"])
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/health")
    assert platform.scale(GATEWAY, 0)["signals"] == []  # already down: nothing to do
    assert any("listening on" in line for line in platform.logs(GATEWAY))


def test_a_service_that_never_comes_up_times_out_with_escalation(tmp_path):
    port = free_port()  # nothing will ever listen there
    platform = process_platform(tmp_path, ["{python}", "-c", "import time; time.sleep(120)"], port=port, timeout=1)
    with pytest.raises(StepError) as err:
        platform.scale(GATEWAY, 1)
    assert err.value.escalate == "L1" and "did not reach 1 healthy process" in err.value.message
    assert not (tmp_path / "api-gateway.pid").exists() and platform.replicas(GATEWAY) == 0


def test_a_service_that_exits_while_starting_fails_at_once(tmp_path):
    platform = process_platform(tmp_path, ["{python}", "-c", "import sys; print('no config'); sys.exit(3)"],
                                port=free_port(), timeout=20)
    with pytest.raises(StepError, match="exited with code 3") as err:
        platform.scale(GATEWAY, 1)
    assert err.value.escalate == "L1" and "no config" in str(err.value.found)


def test_a_process_that_ignores_sigterm_is_killed_after_its_stop_timeout(tmp_path):
    port = free_port()
    stubborn = ("import signal, socket, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(120)")
    settings = ProcessSettings(kind="process", services={"api-gateway": {
        "command": ["{python}", "-c", stubborn], "pid_file": tmp_path / "gw.pid", "port": port,
        "stop_timeout_seconds": 0.5}})
    platform = platform_for(Env(settings))
    pid = platform.scale(GATEWAY, 1)["pid"]
    stopped = platform.scale(GATEWAY, 0)
    assert stopped["signals"] == ["SIGTERM", "SIGKILL"] and stopped["replicas"] == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
