"""What the scenario's stand-in services share: a threaded HTTP server on 127.0.0.1 with JSON
answers, a database connection per request, and Prometheus metrics of every request.

These are the automation platform's apps as the drill runs them (the ``process`` platform
starts and stops them); they are not part of rollbacklib. A connection per request keeps a
service honest across the rollback: it always reaches whatever database holds the live name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, ProcessCollector,
                               generate_latest)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Requests by route, method and status, a latency histogram by route, the process's memory (its own registry)."""

    def __init__(self, service: str):
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests_total", "HTTP requests served", ["service", "route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("http_request_duration_seconds", "Time to answer an HTTP request",
                                 ["service", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.service = service
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes: the memory trigger's source

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(self.service, route, method, str(status)).inc()
        self.latency.labels(self.service, route).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class HttpError(Exception):
    def __init__(self, status: int, error: str):
        super().__init__(error)
        self.status, self.error = status, error


class Service:
    """A small JSON service: ``routes`` maps (method, path) to a function of the handler returning (status, body)."""

    def __init__(self, name: str, options: tuple[tuple[str, str], ...] = ()):
        self.name = name
        self.options = options  # (flag, help) of the service's own command-line options
        self.database_url_env: str | None = None
        self.metrics = Metrics(name)
        self.routes: dict[tuple[str, str], object] = {}
        self.starting: list = []  # functions of the parsed arguments, run before serving

    def route(self, method: str, path: str):
        def register(fn):
            self.routes[(method, path)] = fn
            return fn
        return register

    def connect(self) -> psycopg.Connection:
        url = os.environ.get(self.database_url_env or "", "")
        if not url:
            raise HttpError(503, f"environment variable {self.database_url_env} is not set")
        return psycopg.connect(url, connect_timeout=3, autocommit=True)

    def database_health(self) -> tuple[int, dict]:
        try:
            with self.connect() as conn:
                conn.execute("SELECT 1").fetchone()
            return 200, {"status": "ok", "database": "connected"}
        except (psycopg.Error, HttpError) as err:
            return 503, {"status": "error", "database": "disconnected", "detail": str(err).splitlines()[0]}

    def handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            server_version = service.name

            def log_message(self, fmt, *args):  # one line a request on stderr (the service's log)
                sys.stderr.write(f"{self.log_date_time_string()} {service.name} {fmt % args}\n")

            def json_body(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    return json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    raise HttpError(400, "the body is not JSON") from None

            def bearer(self) -> str:
                header = self.headers.get("Authorization") or ""
                if not header.startswith("Bearer "):
                    raise HttpError(401, "missing bearer token")
                return header[len("Bearer "):].strip()

            def _serve(self, method: str) -> None:
                started = time.perf_counter()
                path = self.path.split("?", 1)[0]
                fn = service.routes.get((method, path))
                route = path if fn else "other"
                try:
                    if fn is None:
                        raise HttpError(404, f"no route {method} {path}")
                    status, body = fn(self)
                except HttpError as err:
                    status, body = err.status, {"error": err.error}
                except psycopg.Error as err:  # what the app's ORM surfaces as a 500
                    status, body = 500, {"error": "database error", "detail": str(err).splitlines()[0]}
                if isinstance(body, bytes):
                    payload, ctype = body, (CONTENT_TYPE_LATEST if path == "/metrics" else "text/html; charset=utf-8")
                else:
                    payload, ctype = json.dumps(body).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                if route != "/metrics":
                    service.metrics.observe(route, method, status, time.perf_counter() - started)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

        return Handler

    def serve(self, argv: list[str] | None = None) -> None:
        parser = argparse.ArgumentParser(prog=self.name)
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--database-url-env", default="DATABASE_URL",
                            help="the NAME of the environment variable holding the database URL")
        for flag, help_text in self.options:
            parser.add_argument(flag, default=None, help=help_text)
        args = parser.parse_args(argv)
        self.database_url_env = args.database_url_env
        for start in self.starting:
            start(args)
        self.route("GET", "/metrics")(lambda h: (200, self.metrics.text()))
        server = ThreadingHTTPServer((args.host, args.port), self.handler())
        server.daemon_threads = True
        sys.stderr.write(f"{self.name} listening on http://{args.host}:{args.port}\n")
        sys.stderr.flush()
        try:
            server.serve_forever()
        finally:
            server.server_close()
