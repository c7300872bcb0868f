"""A stand-in for the platform's reports-client (not part of rollbacklib): reads the database.

    python reports_client.py --port 8081 --database-url-env ROLLBACK_DRILL_DATABASE_URL

``GET /health`` as the gateway's; ``GET /reports/workflows``: workflows by status, and users;
``GET /metrics``: Prometheus text.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Service  # noqa: E402

service = Service("reports-client")


@service.route("GET", "/health")
def health(handler):
    return service.database_health()


@service.route("GET", "/reports/workflows")
def workflows(handler):
    with service.connect() as conn:
        by_status = dict(conn.execute('SELECT status, count(*) FROM workflows GROUP BY status ORDER BY status').fetchall())
        users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
    return 200, {"workflows_by_status": by_status, "users": users}


if __name__ == "__main__":
    service.serve()
