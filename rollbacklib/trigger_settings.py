"""The triggers' config: ``[triggers]`` (rules, checks, metric names) and ``[environments.X.triggers]``.

Everything specific to a schema (the SQL of a check) or to a service (the metrics URL) is
config; the packaged ``runbook.toml`` holds the seed plan's rules and checks.

A rule watches one signal of the sampled series:

* ``uptime_percent``: the share of samples whose metrics endpoint answered, over the trailing
  ``for_seconds`` (fires when below ``below`` once the series covers ``for_seconds``);
* ``error_rate_percent``, ``p95_latency_seconds``, ``memory_growth_percent_per_minute``: per
  interval between two samples, from counter and histogram deltas (needs ``metrics_url``);
* ``database_up``: 1 when ``SELECT 1`` answered, 0 when it did not;
* ``check:NAME``: the number the configured check ``NAME`` returned (SQL or a URL).

Every signal but uptime fires when its condition (``above``: value > above; ``below``: value
< below; both: a band) holds on every sample for at least ``for_seconds``.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rollbacklib.config_base import _env_var_name, _Strict

SIGNALS = ("uptime_percent", "error_rate_percent", "p95_latency_seconds", "memory_growth_percent_per_minute",
           "database_up")
METRIC_SIGNALS = ("uptime_percent", "error_rate_percent", "p95_latency_seconds", "memory_growth_percent_per_minute")
CHECK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class Check(_Strict):
    """A number read each sample: ``sql`` (one value, on the environment's database) or ``url`` (GET; the body is
    a number, or JSON holding it at ``field``, with an optional bearer token named by ``token_env``)."""

    description: str = ""
    sql: str | None = None
    url: str | None = None
    field: str | None = None
    token_env: str | None = None

    @field_validator("token_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        return None if value is None else _env_var_name(value)

    @model_validator(mode="after")
    def _one_source(self) -> "Check":
        if (self.sql is None) == (self.url is None):
            raise ValueError("give exactly one of sql or url")
        return self


class Rule(_Strict):
    name: str
    kind: Literal["automatic", "manual"]
    signal: str
    above: float | None = None
    below: float | None = None
    for_seconds: float = Field(0, ge=0)
    description: str = ""

    @field_validator("signal")
    @classmethod
    def _known(cls, value: str) -> str:
        if value in SIGNALS or (value.startswith("check:") and CHECK_NAME.match(value[6:])):
            return value
        raise ValueError(f"unknown signal {value!r}: one of {', '.join(SIGNALS)}, or check:NAME")

    @model_validator(mode="after")
    def _bound(self) -> "Rule":
        if self.above is None and self.below is None:
            raise ValueError("give above, below or both")
        if self.signal == "uptime_percent" and (self.below is None or self.above is not None):
            raise ValueError("uptime_percent takes below only")
        return self

    def condition(self) -> str:
        if self.above is not None and self.below is not None:
            return f"{self.above:g} < {self.signal} < {self.below:g}"
        return f"{self.signal} > {self.above:g}" if self.above is not None else f"{self.signal} < {self.below:g}"

    def holds(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return (self.above is None or value > self.above) and (self.below is None or value < self.below)


class Metrics(_Strict):
    """Names in the scraped Prometheus text (prometheus_client's defaults for an HTTP service)."""

    requests: str = "http_requests_total"  # a counter with a status label
    status_label: str = "status"
    error_status_min: int = 500  # a status at or above this is an error (no answer is counted by uptime)
    latency: str = "http_request_duration_seconds"  # a histogram
    memory: str = "process_resident_memory_bytes"  # a gauge, where the service exports it
    exclude: dict[str, list[str]] = {}  # label -> values left out, e.g. { route = ["/health"] }


class TriggerSettings(_Strict):
    """``[triggers]``: what every environment shares."""

    interval_seconds: float = Field(10, gt=0)
    window_seconds: float = Field(300, gt=0)
    timeout_seconds: float = Field(5, gt=0)  # one scrape, one SELECT 1, one check
    metrics: Metrics = Metrics()
    checks: dict[str, Check] = {}
    rules: list[Rule] = []

    @field_validator("checks")
    @classmethod
    def _names(cls, value: dict) -> dict:
        for name in value:
            if not CHECK_NAME.match(name):
                raise ValueError(f"check name {name!r}: letters, digits, _ . - only")
        return value


class EnvironmentTriggers(_Strict):
    """``[environments.X.triggers]``: where this environment's metrics are, and what watch may do."""

    metrics_url: str | None = None
    auto_rollback: bool = False
    interval_seconds: float | None = Field(None, gt=0)
    window_seconds: float | None = Field(None, gt=0)
    sample_during_run: bool = True  # the run's service plot (item 8): /metrics only, never the database
    run_interval_seconds: float = Field(2, gt=0)
    checks: dict[str, Check] = {}  # added to (or replacing, by name) [triggers.checks]
    rules: list[Rule] | None = None  # replaces [[triggers.rules]] for this environment


class ResolvedTriggers:
    """An environment's triggers with ``[triggers]`` filled in."""

    def __init__(self, shared: TriggerSettings, env: EnvironmentTriggers | None):
        env = env or EnvironmentTriggers()
        self.metrics_url = env.metrics_url
        self.auto_rollback = env.auto_rollback
        self.interval_seconds = env.interval_seconds or shared.interval_seconds
        self.window_seconds = env.window_seconds or shared.window_seconds
        self.timeout_seconds = shared.timeout_seconds
        self.sample_during_run = env.sample_during_run
        self.run_interval_seconds = env.run_interval_seconds
        self.metrics = shared.metrics
        self.checks = {**shared.checks, **env.checks}
        self.rules = list(env.rules if env.rules is not None else shared.rules)


def triggers_for(config, environment: str) -> ResolvedTriggers:
    """The triggers of ``environment`` in ``config`` (a ``rollbacklib.config.Config``)."""
    env = config.environment(environment)  # an unknown name: the config's own error
    return ResolvedTriggers(config.triggers, env.raw.triggers)
