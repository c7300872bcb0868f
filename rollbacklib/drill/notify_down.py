"""The fault ``notify-down``: every notification endpoint of the drill is down, for real, on 127.0.0.1.

A Slack incoming webhook that answers HTTP 500 to everything, and a Statuspage API that accepts the connection and
never answers (a listening socket nobody reads). The drill's config gets both as channels (and the webhook as the
escalation channel), with their secrets in env vars; the rollback must still end as a normal drill does (exit 0),
with every failed notification in ``run.json``, the report and the terminal, and no secret in any of them.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WEBHOOK_ENV, STATUSPAGE_KEY_ENV = "ROLLBACK_DRILL_WEBHOOK_URL", "ROLLBACK_DRILL_STATUSPAGE_KEY"


class _Failing(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).hits.append(self.path)
        body = b"internal error (drill: notify-down)"
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PATCH = do_POST

    def log_message(self, *_args):  # quiet: the drill prints its own lines
        return


@contextmanager
def endpoints_down():
    """A 500-answering HTTP server and a silent socket on 127.0.0.1: ``(failing_url, silent_url, hits)``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Failing", (_Failing,), {"hits": []}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        yield (f"http://127.0.0.1:{server.server_address[1]}", f"http://127.0.0.1:{silent.getsockname()[1]}",
               server.RequestHandlerClass.hits)
    finally:
        server.shutdown()
        server.server_close()
        silent.close()


def channels_config(environment: str, silent_url: str) -> str:
    return f"""
[environments.{environment}.notify.retry]
attempts = 2
backoff_seconds = 0.2
timeout_seconds = 1.0
max_seconds = 3.0

[environments.{environment}.notify.channels.team-webhook]
kind = "slack-webhook"
webhook_url_env = "{WEBHOOK_ENV}"

[environments.{environment}.notify.channels.status-page]
kind = "statuspage"
api_key_env = "{STATUSPAGE_KEY_ENV}"
page_id = "drill"
base_url = "{silent_url}"
component_ids = ["api-gateway"]

[escalation]
channel = "team-webhook"
"""


def inject(drill) -> int:
    """Run the whole rollback with every notification endpoint down; keep what the judge needs."""
    with endpoints_down() as (failing, silent, hits):
        secret_path = "/" + "/".join(("services", "drill-workspace", "drill-channel", "drill" * 6))  # a secret path
        env = {**os.environ, WEBHOOK_ENV: failing + secret_path, STATUSPAGE_KEY_ENV: "drill-statuspage-" + "k" * 24}
        config = drill.derived_config("runbook-notify-down.toml", channels_config(drill.staged.environment, silent))
        drill.say(f"  notification endpoints down: the Slack webhook answers 500 ({failing}), the status page "
                  f"never answers ({silent})")
        drill.say(f"$ rollback run ... --run-id {drill.run_id} --yes (config {config.name})")
        command = drill.command(drill.run_args("--yes", config=config), env)
        code = command.run()
        drill.say(f"  exit {code}; the failing webhook was called {len(hits)} time(s)")
    drill.evidence.update(secrets=[env[WEBHOOK_ENV], secret_path, env[STATUSPAGE_KEY_ENV]], hits=list(hits))
    return code


def judge(drill, _code: int) -> None:
    """The failures are reported (run.json, the report, the terminal); nothing secret is anywhere."""
    run = json.loads((drill.run_dir / "run.json").read_text()) if (drill.run_dir / "run.json").exists() else {}
    failed = [n for n in run.get("notifications", []) if not n["delivered"]]
    drill.verdict.check(any(n["channel"] == "team-webhook" and n["http_status"] == 500 for n in failed),
                        "run.json reports the webhook's HTTP 500")
    drill.verdict.check(any(n["channel"] == "status-page" and (n["error"] or "").startswith("timed out")
                            for n in failed), "run.json reports the status page timing out")
    drill.verdict.check(all(n["seconds"] <= 4.0 for n in run.get("notifications", [])),
                        "each notification gave up within its bound (max_seconds plus one timeout)")
    report = drill.run_dir / "report.html"
    drill.verdict.check(report.exists() and "notification team-webhook failed: HTTP 500" in report.read_text(),
                        "the report shows the failed notification")
    drill.verdict.check("notification team-webhook failed" in drill.last_output,
                        "the terminal shows the failed notification")
    drill.verdict.check(len(drill.evidence.get("hits", [])) >= 4, "the webhook was really called, and retried")
    leaked = [p for p in drill.run_dir.rglob("*") if p.is_file()
              and any(s.encode() in p.read_bytes() for s in drill.evidence.get("secrets", []))]
    drill.verdict.check(not leaked and not any(s in drill.last_output for s in drill.evidence.get("secrets", [])),
                        f"no webhook URL or API key in the run folder or the terminal{': ' + str(leaked) if leaked else ''}")
