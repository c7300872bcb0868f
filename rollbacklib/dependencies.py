"""Probes of what the services depend on: Redis (``PING`` over RESP), a plain TCP port, a database (``SELECT 1``).

Declared per environment::

    [[environments.production.dependencies]]
    name = "cache"
    kind = "redis"                  # PING over a plain socket speaking RESP; +PONG is up
    host = "redis.internal"
    port = 6379
    password_env = "REDIS_PASSWORD" # optional: the NAME of the env var; AUTH is sent first
    required = true                 # down in 01: the run aborts (exit 3); down in 04: the step fails (L1)

    [[environments.production.dependencies]]
    name = "smtp-relay"
    kind = "tcp"                    # a TCP connect within timeout_seconds is up
    host = "smtp.internal"
    port = 587
    required = false                # down: reported (notebook, terminal, journal, report), the run goes on

    [[environments.production.dependencies]]
    name = "analytics-db"
    kind = "database"               # SELECT 1; url_env unset: the environment's own database
    url_env = "ANALYTICS_DATABASE_URL"

The environment's own database is always probed (``SELECT 1``, required) even when no
dependency is declared. Evidence never holds a password or a URL's secret: the URL is shown
redacted and a password only by its env var's name.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Literal

import psycopg
from pydantic import Field, field_validator, model_validator

from rollbacklib.config_base import _env_var_name, _Strict
from rollbacklib.errors import ConfigError

OWN_DATABASE = "database"


class Dependency(_Strict):
    name: str
    kind: Literal["redis", "tcp", "database"]
    host: str | None = None
    port: int | None = Field(None, gt=0, lt=65536)
    password_env: str | None = None  # redis: AUTH with the value of this env var
    username: str | None = None  # redis ACL user (AUTH username password); not a secret
    url_env: str | None = None  # database: the NAME of the env var holding its URL (unset: the environment's)
    required: bool = True
    timeout_seconds: float = Field(3, gt=0)

    @field_validator("password_env", "url_env")
    @classmethod
    def _check_env(cls, value: str | None) -> str | None:
        return None if value is None else _env_var_name(value)

    @model_validator(mode="after")
    def _address(self) -> "Dependency":
        if self.kind in ("redis", "tcp") and (not self.host or not self.port):
            raise ValueError(f"dependency {self.name!r} of kind {self.kind!r} needs host and port")
        if self.kind != "redis" and (self.password_env or self.username):
            raise ValueError(f"dependency {self.name!r}: password_env and username are for kind 'redis' only")
        if self.kind != "database" and self.url_env:
            raise ValueError(f"dependency {self.name!r}: url_env is for kind 'database' only")
        return self


def own_database() -> Dependency:
    """The environment's own database: always probed, always required."""
    return Dependency(name=OWN_DATABASE, kind="database")


def declared(env) -> list[Dependency]:
    """The environment's database first, then its declared dependencies."""
    listed = list(getattr(env, "dependencies", None) or [])
    return ([] if any(d.kind == "database" and d.url_env is None for d in listed) else [own_database()]) + listed


def describe(dep: Dependency, env=None) -> str:
    """What the probe does, as the plan shows it (never a secret)."""
    need = "required" if dep.required else "not required"
    if dep.kind == "redis":
        auth = f"AUTH with ${dep.password_env}, then " if dep.password_env else ""
        return f"{auth}PING to redis {dep.host}:{dep.port} (RESP), expects +PONG ({need})"
    if dep.kind == "tcp":
        return f"TCP connect to {dep.host}:{dep.port} within {dep.timeout_seconds:g} s ({need})"
    source = f"${dep.url_env}" if dep.url_env else (f"${env.database_url_env}" if env is not None else "its URL")
    return f"SELECT 1 on the database of {source} ({need})"


# --- the probes -------------------------------------------------------------------------------------

def probe(dep: Dependency, env=None) -> dict:
    """One probe: ``{"name", "kind", "required", "up", "ms", "detail"}``; never raises for a dependency down."""
    started = time.monotonic()
    try:
        detail = {"redis": _redis, "tcp": _tcp, "database": _database}[dep.kind](dep, env)
        up = True
    except ConfigError:
        raise
    except (OSError, psycopg.Error, _Refused) as err:
        up, detail = False, _clean(f"{type(err).__name__}: {err}", env, dep)
    return {"name": dep.name, "kind": dep.kind, "target": _target(dep, env), "required": dep.required, "up": up,
            "ms": round((time.monotonic() - started) * 1000, 1), "detail": detail}


def probe_all(env) -> list[dict]:
    return [probe(dep, env) for dep in declared(env)]


class _Refused(Exception):
    """The dependency answered, but not as up (a RESP error, an unexpected reply)."""


def _tcp(dep: Dependency, env) -> str:
    with socket.create_connection((dep.host, dep.port), timeout=dep.timeout_seconds):
        return "connected"


def _redis(dep: Dependency, env) -> str:
    with socket.create_connection((dep.host, dep.port), timeout=dep.timeout_seconds) as sock:
        sock.settimeout(dep.timeout_seconds)
        reader = sock.makefile("rb")
        if dep.password_env:
            args = ["AUTH", *([dep.username] if dep.username else []), _secret(dep.password_env, dep)]
            reply = _command(sock, reader, args)
            if reply != b"+OK":
                raise _Refused(f"AUTH answered {_shown(reply)}")
        reply = _command(sock, reader, ["PING"])
        if reply != b"+PONG":
            raise _Refused(f"PING answered {_shown(reply)}")
        return "PONG"


def resp(args: list[str]) -> bytes:
    """A command as a RESP array of bulk strings (what redis-cli sends)."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _command(sock: socket.socket, reader, args: list[str]) -> bytes:
    sock.sendall(resp(args))
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise _Refused("the connection closed before a full RESP reply")
    return line[:-2]


def _shown(reply: bytes) -> str:
    return repr(reply.decode("utf-8", "replace")[:120])


def _database(dep: Dependency, env) -> str:
    if dep.url_env:
        from rollbacklib.postgres.urls import parse_database_url

        conninfo = parse_database_url(_secret(dep.url_env, dep), source=f"${dep.url_env}").conninfo
    else:
        conninfo = env.database_url()
    with psycopg.connect(conninfo, connect_timeout=max(1, int(dep.timeout_seconds)), autocommit=True,
                         application_name="rollbacklib-probe") as conn:
        value = conn.execute("SELECT 1").fetchone()[0]
    if value != 1:
        raise _Refused(f"SELECT 1 answered {value!r}")
    return "SELECT 1 answered 1"


def _secret(name: str, dep: Dependency) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ConfigError(f"Environment variable {name} is not set (dependency {dep.name!r} reads it).",
                          next_action=f"export {name}=... in the shell that runs the runbook.", step="config")
    return value


def _target(dep: Dependency, env) -> str:
    if dep.kind == "database":
        return f"${dep.url_env or (env.database_url_env if env is not None else '?')}"
    return f"{dep.host}:{dep.port}"


def _clean(text: str, env, dep: Dependency) -> str:
    """An error's text without any secret the probe used."""
    from rollbacklib.postgres.urls import secrets_in

    secrets: list[str] = []
    for name in (dep.password_env, dep.url_env, getattr(env, "database_url_env", None)):
        value = os.environ.get(name or "", "")
        if value:
            secrets += [value, *secrets_in(value)] if name != dep.password_env else [value]
    for secret in sorted(set(s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
