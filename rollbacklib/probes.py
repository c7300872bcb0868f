"""Probes of the services: a health check with retries, and smoke tests declared in the config.

Declared per environment (``[environments.NAME.health]`` and ``[[environments.NAME.smoke_tests]]``)::

    [environments.production.health]
    url = "https://api.example.com/health"
    attempts = 10                       # the seed's: 10 attempts, 5 s apart
    pause_seconds = 5
    expect_json = { status = "ok", database = "connected" }

    [[environments.production.smoke_tests]]
    name = "login"
    method = "POST"
    url = "https://api.example.com/auth/login"
    json = { email = "smoke@example.com", password = "{password}" }
    password_env = "SMOKE_TEST_PASSWORD"   # the NAME of the env var; {password} is its value
    extract = { access_token = "access_token" }

    [[environments.production.smoke_tests]]
    name = "protected"
    url = "https://api.example.com/protected/endpoint"
    bearer = "access_token"                # Authorization: Bearer <what login extracted>

``{name}`` in a URL, a header or a JSON string is a value extracted by an earlier test (or the
password). The evidence keeps the templates, the statuses and the times: never a password, a
token or an extracted value. A health check that never passes, or a smoke test that fails,
raises ``StepError`` with the seed's escalation for a technical problem (L1).
"""

from __future__ import annotations

import os
import re
import time

import httpx
from pydantic import Field, field_validator

from rollbacklib.config_base import _env_var_name, _Strict
from rollbacklib.errors import ConfigError, StepError

TECHNICAL = "L1"
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class HealthCheck(_Strict):
    url: str
    attempts: int = Field(10, gt=0)
    pause_seconds: float = Field(5, ge=0)
    timeout_seconds: float = Field(5, gt=0)
    expect_status: int = 200
    expect_json: dict | None = None  # fields the JSON answer must hold, with these values


class SmokeTest(_Strict):
    name: str
    method: str = "GET"
    url: str
    json_body: dict | None = Field(None, alias="json")
    headers: dict[str, str] = {}
    bearer: str | None = None  # a variable extracted earlier, sent as Authorization: Bearer
    expect_status: int = 200
    extract: dict[str, str] = {}  # variable -> dotted path in the JSON answer
    password_env: str | None = None
    timeout_seconds: float = Field(10, gt=0)

    @field_validator("password_env")
    @classmethod
    def _check_env(cls, value: str | None) -> str | None:
        return None if value is None else _env_var_name(value)


# --- health ---------------------------------------------------------------------------------------

def check_health(check: HealthCheck, *, client: httpx.Client | None = None, sleep=time.sleep) -> list[dict]:
    """GET the health URL until it answers as expected, up to ``attempts`` times; return every attempt."""
    tries: list[dict] = []
    with _client(client) as http:
        for attempt in range(1, check.attempts + 1):
            started = time.monotonic()
            try:
                response = http.get(check.url, timeout=check.timeout_seconds)
                ok, detail = _as_expected(response, check.expect_status, check.expect_json)
                tries.append({"attempt": attempt, "ok": ok, "status": response.status_code, "ms": _ms(started),
                              **({} if ok else {"detail": detail})})
            except httpx.HTTPError as err:
                tries.append({"attempt": attempt, "ok": False, "error": f"{type(err).__name__}: {err}",
                              "ms": _ms(started)})
            if tries[-1]["ok"]:
                return tries
            if attempt < check.attempts:
                sleep(check.pause_seconds)
    raise StepError(f"{check.url} did not answer as healthy after {check.attempts} attempts "
                    f"{check.pause_seconds:g} s apart.",
                    next_action="read the service's logs; the attempts are in this error's 'found'.",
                    expected={"status": check.expect_status, "json": check.expect_json}, found=tries,
                    step="health", escalate=TECHNICAL)


def _as_expected(response: httpx.Response, status: int, fields: dict | None) -> tuple[bool, str]:
    if response.status_code != status:
        return False, f"HTTP {response.status_code}"
    if not fields:
        return True, ""
    try:
        body = response.json()
    except ValueError:
        return False, "not JSON"
    wrong = {k: body.get(k) for k, v in fields.items() if not isinstance(body, dict) or body.get(k) != v}
    return not wrong, f"fields differ: {wrong}" if wrong else ""


# --- smoke tests ----------------------------------------------------------------------------------

def run_smoke_tests(tests: list[SmokeTest], *, client: httpx.Client | None = None) -> list[dict]:
    """Run the tests in order, passing extracted values on; return their evidence, or raise at the first failure."""
    values: dict[str, str] = {}
    evidence: list[dict] = []
    with _client(client) as http:
        for test in tests:
            secrets = dict(values)
            if test.password_env:
                secrets["password"] = _password(test)
            headers = {k: _fill(v, secrets, test) for k, v in test.headers.items()}
            if test.bearer:
                headers["Authorization"] = f"Bearer {_fill('{' + test.bearer + '}', secrets, test)}"
            started = time.monotonic()
            try:
                response = http.request(test.method, _fill(test.url, secrets, test), headers=headers,
                                        json=_fill(test.json_body, secrets, test), timeout=test.timeout_seconds)
            except httpx.HTTPError as err:
                raise _failed(test, evidence, f"no answer: {type(err).__name__}: {err}") from None
            record = {"name": test.name, "method": test.method, "url": test.url, "status": response.status_code,
                      "ms": _ms(started), "extracted": sorted(test.extract)}
            evidence.append(record)
            if response.status_code != test.expect_status:
                raise _failed(test, evidence, f"HTTP {response.status_code}, expected {test.expect_status}")
            for name, path in test.extract.items():
                values[name] = str(_field(response, path, test, evidence))
    return evidence


def _password(test: SmokeTest) -> str:
    value = os.environ.get(test.password_env, "")
    if not value:
        raise ConfigError(f"Environment variable {test.password_env} is not set (smoke test {test.name!r} "
                          "reads the test user's password from it).",
                          next_action=f"export {test.password_env}=... in the shell that runs the runbook.",
                          step="config")
    return value


def _fill(value, values: dict[str, str], test: SmokeTest):
    """``{name}`` placeholders in strings (at any depth of a JSON body) replaced by their values."""
    if isinstance(value, str):
        def one(match: re.Match) -> str:
            if match.group(1) not in values:
                raise ConfigError(f"Smoke test {test.name!r} uses {{{match.group(1)}}}, which no earlier test "
                                  "extracts (nor password_env gives).",
                                  next_action="extract it in an earlier test, or fix the name.", step="config")
            return values[match.group(1)]
        return PLACEHOLDER.sub(one, value)
    if isinstance(value, dict):
        return {k: _fill(v, values, test) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, values, test) for v in value]
    return value


def _field(response: httpx.Response, path: str, test: SmokeTest, evidence: list[dict]):
    try:
        value = response.json()
        for part in path.split("."):
            value = value[part]
        return value
    except (ValueError, KeyError, TypeError, IndexError):
        raise _failed(test, evidence, f"the answer has no field {path!r}") from None


def _failed(test: SmokeTest, evidence: list[dict], why: str) -> StepError:
    return StepError(f"Smoke test {test.name!r} failed: {why}.",
                     next_action=f"{test.method} {test.url} by hand and read the service's logs; the service is up "
                                 "but does not work: decide with the lead whether to roll the release back.",
                     expected=test.expect_status, found=evidence, step="smoke-tests", escalate=TECHNICAL)


class _client:
    """The caller's client, or a new one closed afterwards."""

    def __init__(self, client: httpx.Client | None):
        self.given, self.own = client, None

    def __enter__(self) -> httpx.Client:
        if self.given is not None:
            return self.given
        self.own = httpx.Client()
        return self.own

    def __exit__(self, *exc) -> None:
        if self.own is not None:
            self.own.close()


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
