"""Traffic for the api-gateway during the drill, so error rate and latency are measured, not invented.

    python traffic.py --base-url http://127.0.0.1:8080 --email user1@example.com \\
        --password-env ROLLBACK_DRILL_TEST_PASSWORD --rate 5 --seconds 60 --out traffic.jsonl

Each round logs in, then calls ``/auth/verify`` and ``/protected/endpoint`` with the token (when
login gave one). Every request is a line of ``--out`` (JSON: time, route, status, ms; status 0
when nothing answered) as it happens; the summary (requests, errors, error rate, p50 and p95
latency by route) is printed as JSON at the end, or on SIGTERM. A 5xx or no answer is an error;
a 401 is not (a wrong password is the client's error). The password is read from the env var
named by ``--password-env``, never given on the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import httpx


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


def summarize(records: list[dict]) -> dict:
    routes: dict[str, dict] = {}
    for route in sorted({r["route"] for r in records}):
        mine = [r for r in records if r["route"] == route]
        errors = sum(1 for r in mine if is_error(r))
        ms = [r["ms"] for r in mine]
        routes[route] = {"requests": len(mine), "errors": errors, "error_rate": round(errors / len(mine), 4),
                         "p50_ms": percentile(ms, 0.5), "p95_ms": percentile(ms, 0.95)}
    errors = sum(1 for r in records if is_error(r))
    return {"requests": len(records), "errors": errors,
            "error_rate": round(errors / len(records), 4) if records else None,
            "p95_ms": percentile([r["ms"] for r in records], 0.95), "routes": routes}


def is_error(record: dict) -> bool:
    return record["status"] == 0 or record["status"] >= 500


def one_round(client: httpx.Client, email: str, password: str) -> list[dict]:
    out: list[dict] = []

    def call(method: str, route: str, **kwargs) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = client.request(method, route, **kwargs)
            status = response.status_code
        except httpx.HTTPError:
            response, status = None, 0
        out.append({"t": round(time.time(), 3), "route": route, "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 2)})
        return response

    login = call("POST", "/auth/login", json={"email": email, "password": password})
    if login is not None and login.status_code == 200:
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        call("GET", "/auth/verify", headers=headers)
        call("GET", "/protected/endpoint", headers=headers)
    return out


def run(base_url: str, email: str, password: str, *, rate: float, seconds: float, out=None,
        stop=lambda: False) -> dict:
    """Rounds at ``rate`` a second for ``seconds`` (or until ``stop()``); return the summary."""
    records: list[dict] = []
    deadline, interval = time.monotonic() + seconds, 1 / rate
    with httpx.Client(base_url=base_url, timeout=5) as client:
        while time.monotonic() < deadline and not stop():
            started = time.monotonic()
            for record in one_round(client, email, password):
                records.append(record)
                if out:
                    out.write(json.dumps(record) + "\n")
                    out.flush()
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    return summarize(records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="traffic")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--email", required=True)
    parser.add_argument("--password-env", required=True, help="the NAME of the env var holding the password")
    parser.add_argument("--rate", type=float, default=5, help="rounds a second")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--out", default=None, help="a JSON line per request")
    args = parser.parse_args(argv)
    password = os.environ.get(args.password_env, "")
    if not password:
        print(f"environment variable {args.password_env} is not set", file=sys.stderr)
        return 2
    stopping = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stopping.update(now=True))
    out = open(args.out, "a") if args.out else None
    try:
        summary = run(args.base_url, args.email, password, rate=args.rate, seconds=args.seconds, out=out,
                      stop=lambda: stopping["now"])
    finally:
        if out:
            out.close()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
