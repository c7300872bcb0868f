"""The real Prisma CLI (6.19.3), run against the test server: the judge of what Prisma itself reads.

Installed once per machine with npm from the npm registry (``prisma``, ``@prisma/adapter-pg``,
``pg``) into ``$ROLLBACK_PRISMA_CLI_DIR`` (default ``~/.cache/rollbacklib/prisma-cli-6.19.3``),
without its install scripts: the engine binaries they would download are not used. The CLI
runs its JavaScript schema engine (``schema_engine_bg.wasm``, shipped in the package) through the
PostgreSQL driver adapter, configured in a ``prisma.config.ts`` written next to a copy of the
scenario's ``prisma/`` folder. ``PRISMA_SCHEMA_ENGINE_BINARY`` points at ``/bin/true`` so the CLI
does not try to download the native engine it would not use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

VERSION = "6.19.3"
PACKAGES = [f"prisma@{VERSION}", f"@prisma/adapter-pg@{VERSION}", "pg@8"]
CONFIG_TS = """\
import path from "node:path";
import { defineConfig } from "prisma/config";
import { PrismaPg } from "@prisma/adapter-pg";

export default defineConfig({
  experimental: { adapter: true },
  engine: "js",
  schema: path.join("prisma", "schema.prisma"),
  async adapter() {
    return new PrismaPg({ connectionString: process.env.DATABASE_URL });
  },
});
"""


def install_dir() -> Path:
    return Path(os.environ.get("ROLLBACK_PRISMA_CLI_DIR") or Path.home() / ".cache" / "rollbacklib"
                / f"prisma-cli-{VERSION}")


def ensure_installed() -> Path | str:
    """The folder holding ``node_modules/.bin/prisma``, or why it can not be had (no node/npm, no registry)."""
    folder = install_dir()
    if (folder / "node_modules" / ".bin" / "prisma").exists():
        return folder
    if not shutil.which("npm") or not shutil.which("node"):
        return "node and npm are not installed"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "package.json").write_text('{"name": "rollbacklib-prisma-cli", "private": true}\n')
    done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", *PACKAGES], cwd=folder,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return f"npm install failed: {done.stderr[-500:]}"
    return folder


def node_url(libpq_url: str) -> str:
    """The test server's socket URL (``postgresql://postgres@/db?host=/dir``) as node-postgres reads it: a host
    name is needed for the URL to parse; ``host=`` then points it at the socket folder."""
    return libpq_url.replace("postgresql://postgres@/", "postgresql://postgres@localhost/", 1)


class PrismaCli:
    """``prisma`` run in a project folder holding the scenario's ``prisma/`` and the driver-adapter config."""

    def __init__(self, installed: Path, project: Path, prisma_folder: Path):
        self.bin = installed / "node_modules" / ".bin" / "prisma"
        project.mkdir(parents=True, exist_ok=True)
        shutil.copytree(prisma_folder, project / "prisma", dirs_exist_ok=True)
        (project / "prisma.config.ts").write_text(CONFIG_TS)
        link = project / "node_modules"
        if not link.exists():
            link.symlink_to(installed / "node_modules")
        self.project = project

    def run(self, url: str, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "DATABASE_URL": node_url(url), "PRISMA_SCHEMA_ENGINE_BINARY": "/bin/true",
               "PRISMA_QUERY_ENGINE_LIBRARY": "/bin/true", "PRISMA_HIDE_UPDATE_MESSAGE": "1", "CHECKPOINT_DISABLE": "1"}
        return subprocess.run([str(self.bin), *args], cwd=self.project, env=env, capture_output=True, text=True,
                              timeout=180)
