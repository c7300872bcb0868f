"""Sample a service's Prometheus text endpoint and the database into a time series (JSON lines).

Each sample is one line: when it was taken, what the metrics endpoint said (the request
counter's totals, the latency histogram's cumulative buckets, resident memory), whether
``SELECT 1`` answered and how fast, and each configured check's number. What a trigger reads
(error rate, p95 latency, memory growth) is computed from the deltas between a sample and the
one before it (``derive``), as Prometheus' ``rate()`` and ``histogram_quantile()`` do: a counter
that went down was reset (a restart) and counts from zero.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from rollbacklib.trigger_settings import Check, Metrics, ResolvedTriggers

SERIES_NAME = "series.jsonl"


def scrape(url: str, metrics: Metrics, timeout: float, client: httpx.Client | None = None) -> dict:
    """One read of a Prometheus text endpoint: request totals, histogram buckets, memory; ``up`` False on no answer."""
    started = time.perf_counter()
    try:
        response = (client or httpx).get(url, timeout=timeout)
        response.raise_for_status()
        families = list(text_string_to_metric_families(response.text))
    except (httpx.HTTPError, ValueError) as err:
        return {"up": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                "ms": round((time.perf_counter() - started) * 1000, 2)}
    total = errors = 0.0
    buckets: dict[str, float] = {}
    memory = None
    found = set()
    counter = metrics.requests[:-len("_total")] if metrics.requests.endswith("_total") else metrics.requests
    for family in families:
        if family.name in (counter, metrics.requests):
            found.add("requests")  # declared: zero requests so far is a count too
        elif family.name == metrics.latency:
            found.add("latency")
        for s in family.samples:
            if any(s.labels.get(label) in values for label, values in metrics.exclude.items()):
                continue
            if s.name == metrics.requests or (family.name == counter and s.name == f"{counter}_total"):
                found.add("requests")
                total += s.value
                if _is_error(s.labels.get(metrics.status_label), metrics.error_status_min):
                    errors += s.value
            elif s.name == f"{metrics.latency}_bucket":
                found.add("latency")
                buckets[s.labels["le"]] = buckets.get(s.labels["le"], 0.0) + s.value
            elif s.name == metrics.memory:
                memory = (memory or 0.0) + s.value
    return {"up": True, "error": None, "ms": round((time.perf_counter() - started) * 1000, 2),
            "requests": total if "requests" in found else None, "errors": errors if "requests" in found else None,
            "buckets": buckets if "latency" in found else None, "memory_bytes": memory}


def _is_error(status: str | None, minimum: int) -> bool:
    if not status:
        return False
    if status[0].isdigit() and status[1:] in ("xx", "XX"):  # "5xx"
        return int(status[0]) * 100 >= minimum
    try:
        return int(status) >= minimum
    except ValueError:
        return False


def probe_database(url: str, timeout: float) -> dict:
    """``SELECT 1`` on a new connection: is the database answering, and how fast (connect included)."""
    started = time.perf_counter()
    try:
        with psycopg.connect(url, connect_timeout=max(1, math.ceil(timeout)), autocommit=True) as conn:
            conn.execute("SELECT 1").fetchone()
        return {"up": True, "ms": round((time.perf_counter() - started) * 1000, 2), "error": None}
    except psycopg.Error as err:
        return {"up": False, "ms": round((time.perf_counter() - started) * 1000, 2),
                "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}


def read_check(check: Check, database_url: str | None, timeout: float) -> dict:
    """A check's number now: ``{"value": float}`` or ``{"value": None, "error": ...}``."""
    try:
        if check.sql is not None:
            if not database_url:
                return {"value": None, "error": "no database URL"}
            with psycopg.connect(database_url, connect_timeout=max(1, math.ceil(timeout)), autocommit=True) as conn:
                conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
                row = conn.execute(check.sql).fetchone()
            value = row[0] if row else None
        else:
            headers = {}
            if check.token_env:
                headers["Authorization"] = f"Bearer {os.environ.get(check.token_env, '')}"
            response = httpx.get(check.url, headers=headers, timeout=timeout)
            response.raise_for_status()
            body = response.json() if check.field else response.text.strip()
            for part in (check.field.split(".") if check.field else ()):
                body = body[part]
            value = body
        return {"value": None if value is None else float(value), "error": None}
    except (psycopg.Error, httpx.HTTPError, ValueError, KeyError, TypeError) as err:
        return {"value": None, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}


def derive(previous: dict | None, current: dict) -> dict:
    """Error rate, p95 latency and memory growth over the interval between two samples."""
    out = {"interval_seconds": None, "requests": None, "errors": None, "error_rate_percent": None,
           "p95_latency_seconds": None, "memory_growth_percent_per_minute": None}
    if previous is None:
        return out
    dt = current["t"] - previous["t"]
    out["interval_seconds"] = round(dt, 3)
    a, b = previous.get("metrics") or {}, current.get("metrics") or {}
    if not (a.get("up") and b.get("up")):
        return out
    if a.get("requests") is not None and b.get("requests") is not None:
        requests = _delta(a["requests"], b["requests"])
        errors = min(_delta(a["errors"], b["errors"]), requests)
        out.update(requests=requests, errors=errors,
                   error_rate_percent=round(100 * errors / requests, 3) if requests else None)
    if a.get("buckets") is not None and b.get("buckets"):
        reset = b["buckets"].get("+Inf", 0) < a["buckets"].get("+Inf", 0)
        deltas = {le: b["buckets"][le] - (0 if reset else a["buckets"].get(le, 0)) for le in b["buckets"]}
        out["p95_latency_seconds"] = quantile(0.95, deltas)
    if a.get("memory_bytes") and b.get("memory_bytes") is not None and dt > 0:
        growth = 100 * (b["memory_bytes"] - a["memory_bytes"]) / a["memory_bytes"]
        out["memory_growth_percent_per_minute"] = round(growth * 60 / dt, 3)
    return out


def _delta(before: float, after: float) -> float:
    return after - before if after >= before else after  # a counter that went down was reset: it counts from 0


def quantile(q: float, buckets: dict[str, float]) -> float | None:
    """``histogram_quantile``: linear interpolation inside the bucket holding the q-th observation."""
    ordered = sorted(((float(le), count) for le, count in buckets.items()), key=lambda b: b[0])
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return round(lower_bound, 6)  # above the last finite bucket: its bound is what is known
            if count == lower_count:
                return round(bound, 6)
            return round(lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count), 6)
        lower_bound, lower_count = bound, count
    return round(lower_bound, 6)


@dataclass
class Sampler:
    """Takes samples into ``path`` (appended, one JSON line each); ``database_url`` None: the database is not read."""

    triggers: ResolvedTriggers
    path: Path
    database_url: str | None = None
    database: bool = True
    checks: bool = True
    samples: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.path = Path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.samples = read_series(self.path)
        self._client = httpx.Client()

    def sample(self) -> dict:
        t = self.triggers
        now = time.time()
        record = {"t": round(now, 3), "ts": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
                  "metrics": scrape(t.metrics_url, t.metrics, t.timeout_seconds, self._client) if t.metrics_url else None,
                  "database": (probe_database(self.database_url, t.timeout_seconds)
                               if self.database and self.database_url else None),
                  "checks": ({name: read_check(c, self.database_url, t.timeout_seconds) for name, c in t.checks.items()}
                             if self.checks else {})}
        record["derived"] = derive(self.samples[-1] if self.samples else None, record)
        self.samples.append(record)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
        return record

    def run(self, seconds: float, stop=lambda: False, on_sample=None) -> list[dict]:
        """Sample every ``interval_seconds`` until ``seconds`` have passed (one sample more than intervals)."""
        deadline = time.monotonic() + seconds
        while True:
            started = time.monotonic()
            record = self.sample()
            if on_sample:
                on_sample(record)
            if started + self.triggers.interval_seconds > deadline + 1e-3 or stop():
                return self.samples
            if _wait(started + self.triggers.interval_seconds, stop):
                return self.samples

    def close(self) -> None:
        self._client.close()


def _wait(until: float, stop) -> bool:
    """Sleep until ``until`` (monotonic), a tenth of a second at a time; True if ``stop()`` said so."""
    while time.monotonic() < until:
        if stop():
            return True
        time.sleep(min(0.1, max(0.0, until - time.monotonic())))
    return bool(stop())


def read_series(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash: the rest stands
    return out
