"""Open a local HTML file in headless Chromium through its DevTools protocol, as a reader would.

Collects every console message, uncaught exception, log entry and network request while the
page loads; reads the DOM through ``Runtime.evaluate``; keeps a full-page screenshot and a PDF
print of the page. Debian's ``chromium`` package (``.ci/run`` installs it); websocket-client
comes with jupyter.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import websocket

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--remote-allow-origins=*", "--hide-scrollbars"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Page:
    console: list[dict] = field(default_factory=list)  # Runtime.consoleAPICalled, exceptions, Log entries
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    failed_loads: list[dict] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # what the DOM probe returned
    screenshot: Path | None = None
    pdf: Path | None = None


class _Session:
    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)


PROBE = """JSON.stringify({
  title: document.title,
  text: document.body.innerText,
  images: [...document.images].map(i => ({alt: i.alt, width: i.naturalWidth, complete: i.complete,
                                           src: i.src.slice(0, 30)})),
  metricRows: [...document.querySelectorAll('#metrics-table tbody tr')].map(r => [...r.cells].map(c => c.innerText)),
  errorLinks: [...document.querySelectorAll('.rb-error a[href^="#"]')].map(a => a.getAttribute('href')),
  failedCells: [...document.querySelectorAll('.rb-failed')].map(c => c.id),
  scripts: document.scripts.length,
  stylesheets: [...document.querySelectorAll('link')].length,
  closedCode: document.querySelectorAll('details.rb-code:not([open])').length,
  openCode: document.querySelectorAll('details.rb-code[open]').length,
  production: (() => { const p = document.getElementById('production');
                        return p && {text: p.innerText, top: p.getBoundingClientRect().top + window.scrollY}; })(),
  timelineTop: (() => { const t = document.getElementById('timeline');
                        return t && t.getBoundingClientRect().top + window.scrollY; })(),
  brokenAnchors: [...document.querySelectorAll('a[href^="#"]')].map(a => a.getAttribute('href').slice(1))
                   .filter(id => id && !document.getElementById(id)),
})"""


def open_page(html: Path, artifacts: Path, name: str, width: int = 1366) -> Page:
    """Load ``html`` in a fresh headless Chromium; return what it logged and showed; keep a screenshot and a PDF."""
    artifacts.mkdir(parents=True, exist_ok=True)
    profile = artifacts / f"{name}-profile"
    stderr = open(artifacts / f"{name}-chromium.log", "wb")
    proc = subprocess.Popen([chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "LANG": "C.UTF-8"})
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"chromium did not start; see {artifacts / f'{name}-chromium.log'}")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
        target = next(t for t in targets if t["type"] == "page")
        session = _Session(target["webSocketDebuggerUrl"])
        for domain in ("Runtime", "Log", "Network", "Page"):
            session.call(f"{domain}.enable")
        session.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
        session.call("Page.navigate", url=html.resolve().as_uri())
        session.wait_for("Page.loadEventFired")
        data = json.loads(session.call("Runtime.evaluate", expression=PROBE, returnByValue=True)["result"]["value"])
        page = Page(data=data)
        metrics = session.call("Page.getLayoutMetrics")["cssContentSize"]
        shot = session.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                            clip={"x": 0, "y": 0, "width": width, "height": min(metrics["height"], 16000), "scale": 1})
        page.screenshot = artifacts / f"{name}.png"
        page.screenshot.write_bytes(base64.b64decode(shot["data"]))
        pdf = session.call("Page.printToPDF", printBackground=True, preferCSSPageSize=True)
        page.pdf = artifacts / f"{name}.pdf"
        page.pdf.write_bytes(base64.b64decode(pdf["data"]))
        time.sleep(0.2)  # let late console events arrive
        session.ws.settimeout(0.5)
        try:
            while True:
                session.events.append(json.loads(session.ws.recv()))
        except websocket.WebSocketTimeoutException:
            pass
        for event in session.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled":
                page.console.append({"type": params["type"], "text": " ".join(str(a.get("value", a.get(
                    "description", ""))) for a in params.get("args", []))})
            elif method == "Runtime.exceptionThrown":
                page.console.append({"type": "exception", "text": params["exceptionDetails"].get("text", "")})
            elif method == "Log.entryAdded":
                entry = params["entry"]
                page.console.append({"type": f"log-{entry['level']}", "text": entry.get("text", "")})
            elif method == "Network.requestWillBeSent":
                page.requests.append(params["request"]["url"])
            elif method == "Network.loadingFailed":
                page.failed_loads.append(params)
        session.ws.close()
        return page
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stderr.close()
        shutil.rmtree(profile, ignore_errors=True)
