"""A stand-in for the platform's static-report-server (not part of rollbacklib).

    python static_report_server.py --port 8082 --database-url-env ROLLBACK_DRILL_DATABASE_URL

It serves a report page rendered from the database when it starts (as the real one serves
files built ahead of time): ``GET /`` the page, ``GET /health`` as the gateway's (the page is
only rebuilt when the database answers), ``GET /metrics``: Prometheus text.
"""

from __future__ import annotations

import html
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Service  # noqa: E402

service = Service("static-report-server")
_page = {"html": b"<html><body><p>no report built yet</p></body></html>"}


def build(args) -> None:
    try:
        with service.connect() as conn:
            rows = conn.execute("SELECT status, count(*) FROM workflows GROUP BY status ORDER BY status").fetchall()
    except Exception:  # noqa: BLE001 - the page stays the placeholder; /health says why
        return
    items = "".join(f"<li>{html.escape(str(s))}: {n}</li>" for s, n in rows)
    _page["html"] = f"<html><body><h1>Workflows</h1><ul>{items}</ul></body></html>".encode()


service.starting.append(build)


@service.route("GET", "/")
def page(handler):
    return 200, _page["html"]


@service.route("GET", "/health")
def health(handler):
    return service.database_health()


if __name__ == "__main__":
    service.serve()
