"""The database URL an environment variable holds, read as Prisma reads it, made ready for libpq.

The variable holds the URL the application itself uses, so it is written for Prisma, not for
libpq: ``postgresql://USER:PASSWORD@HOST:PORT/DATABASE?schema=public&connection_limit=5``.
libpq (psycopg, pg_dump, pg_restore, psql) rejects such a URL (``invalid URI query parameter:
"schema"``). ``parse_database_url`` reads it the way Prisma does and returns a libpq
``key=value`` conninfo that connects where the application connects, with the application's
schema first on the search_path, plus what it did not pass on and why.

What Prisma accepts, from its own documentation and engine:

* Prisma's "PostgreSQL database connector" page, section *Connection URL / Arguments*
  (https://www.prisma.io/docs/orm/overview/databases/postgresql; prisma/docs,
  ``content/200-orm/050-overview/500-databases/300-postgresql.mdx``): ``schema`` (default
  ``public``), ``connection_limit``, ``connect_timeout``, ``pool_timeout``, ``sslmode``
  (``prefer``, ``disable``, ``require``), ``sslcert`` ("path of the server certificate ... the
  root certificate", resolved relative to the ``./prisma`` folder), ``sslrootcert``,
  ``sslidentity`` (a PKCS12 file), ``sslpassword`` (its password), ``sslaccept``
  (``accept_invalid_certs``, the default, or ``strict``), ``host`` ("points to a directory that
  contains a socket"; the host part of the URL is then ignored), ``socket_timeout``,
  ``pgbouncer``, ``statement_cache_size``, ``application_name``, ``channel_binding``,
  ``options``. Special characters in the user and password must be percent-encoded.
* Prisma's engine, ``PostgresNativeUrl::parse_query_params`` in prisma/prisma-engines
  ``quaint/src/connector/postgres/url.rs``: also ``max_connection_lifetime`` and
  ``max_idle_connection_lifetime``; any other argument is discarded; an unknown ``sslmode`` is
  read as ``prefer``, an unknown ``sslaccept`` as ``strict``; integer arguments and
  ``pgbouncer`` (``true``/``false``) that do not parse are an error; the search path is set to
  the schema alone, double-quoted; the host defaults to ``localhost``, the database is the
  first path segment; the password is percent-decoded, leniently (a ``%`` not followed by two
  hex digits stays as written).

What libpq accepts: the parameter key words of "Connection Strings"
(https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS), read here
from the linked libpq itself (``psycopg.pq.Conninfo.get_defaults``). In libpq ``sslcert`` is
the *client* certificate and ``sslrootcert`` the CA that signs the server's; ``sslmode=prefer``
and ``require`` do not verify the server certificate, ``verify-full`` verifies the chain and
the host name; ``sslrootcert=system`` (libpq 16+) trusts the system's CA store.

How each Prisma argument is carried over (``DatabaseUrl.dropped`` and ``.translated`` say so
for every URL, so a run can journal it):

* ``schema``: ``options=-c search_path="<schema>"``, so unqualified names (``users``,
  ``_prisma_migrations``) resolve as they do for the application.
* ``host`` (socket folder), ``connect_timeout``, ``application_name``, ``channel_binding``,
  ``options``, ``sslrootcert``, ``sslmode`` ``disable``/``prefer``/``require``: as written.
* ``sslcert``: libpq's ``sslrootcert`` (Prisma's meaning), unless ``sslrootcert`` is given too.
* ``sslaccept=strict``: ``sslmode=verify-full`` (with ``sslrootcert=system`` when no root
  certificate is named); ``accept_invalid_certs`` needs nothing (libpq's ``prefer`` and
  ``require`` do not verify either).
* Pool and engine settings (``connection_limit``, ``pool_timeout``, ``socket_timeout``,
  ``statement_cache_size``, ``pgbouncer``, ``max_*_lifetime``) and the PKCS12 identity
  (``sslidentity``, ``sslpassword``, which libpq cannot read): dropped, with the reason.
* Any other key word libpq knows (``sslkey``, ``target_session_attrs``, ...): passed on, and
  said to be ignored by Prisma. Anything else: dropped.

Errors are ``ConfigError`` (exit 2) and never quote the URL or any part of it that could be the
password: libpq's own parse errors can (``invalid percent-encoded token``), so the URL is never
handed to libpq's URI parser; it is split here and given to libpq as key words. A libpq
``key=value`` string (``host=... dbname=...``), which Prisma does not read, is taken as it is.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from rollbacklib.errors import ConfigError

SCHEMES = ("postgresql", "postgres")
URL_FORM = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE?schema=SCHEMA"
LIBPQ_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
PRISMA_SSLMODES = ("disable", "prefer", "require")
CERTIFICATE_PATHS = ("sslcert", "sslrootcert", "sslkey", "sslcrl", "sslcrldir")

_POOL = "a setting of Prisma's connection pool; the runbook opens its own connections one at a time"
#: Prisma arguments that libpq has no use for, and why each is left out.
PRISMA_ONLY = {
    "connection_limit": _POOL,
    "pool_timeout": _POOL,
    "max_connection_lifetime": _POOL,
    "max_idle_connection_lifetime": _POOL,
    "statement_cache_size": "the size of Prisma's prepared-statement cache; libpq keeps none",
    "socket_timeout": "Prisma's limit on one query; not made a statement_timeout, which would cut a long "
                      "restore or count short",
    "sslidentity": "a PKCS12 client identity, which libpq cannot read; if the server demands a client "
                   "certificate, extract it for libpq to ~/.postgresql/postgresql.crt and postgresql.key "
                   "(openssl pkcs12 -in FILE -clcerts -nokeys, and -nocerts -nodes)",
    "sslpassword": "the password of the PKCS12 file named by sslidentity",
}
#: Prisma arguments that must be whole numbers (Prisma refuses the URL otherwise).
PRISMA_INTEGERS = ("connection_limit", "pool_timeout", "socket_timeout", "connect_timeout", "statement_cache_size",
                   "max_connection_lifetime", "max_idle_connection_lifetime")
#: Parts of the connection Prisma takes from the URL itself, never from its query.
URL_PARTS = ("user", "password", "port", "dbname")


def _libpq_keywords() -> dict[str, str]:
    """Every connection key word the linked libpq knows, and its display flag ("*" = a secret)."""
    return {o.keyword.decode(): o.dispchar.decode() for o in pq.Conninfo.get_defaults()}


LIBPQ_KEYWORDS = _libpq_keywords()
SECRET_KEYWORDS = tuple(k for k, flag in LIBPQ_KEYWORDS.items() if flag == "*") + ("sslpassword",)


@dataclass(frozen=True)
class DatabaseUrl:
    """A Prisma database URL, understood.

    ``conninfo`` is what psycopg and the client programs take (it holds the password: never
    show it; ``client.redact_url`` does that). ``schema`` is Prisma's ``schema`` argument
    (None: not given, the server's search_path applies). ``dropped`` names each argument not
    given to libpq and why; ``translated`` each one libpq is given differently from how it
    was written, and what it became. ``secrets`` holds every form of a secret in the value.
    """

    conninfo: str
    schema: str | None = None
    dropped: dict[str, str] = field(default_factory=dict)
    translated: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()

    def evidence(self) -> dict:
        """What a journal records about the URL: no value that could be secret."""
        return {"schema": self.schema, "url_arguments_dropped": self.dropped,
                "url_arguments_translated": self.translated}

    def display(self) -> str:
        """The conninfo with its secrets replaced by ***, and the arguments not used."""
        shown = redact_url(self.conninfo)
        return shown + (f" (not used: {', '.join(sorted(self.dropped))})" if self.dropped else "")


def parse_database_url(value: str, source: str = "the database URL") -> DatabaseUrl:
    """Read ``value`` as Prisma reads a PostgreSQL URL; return the libpq conninfo for it.

    ``source`` names where the value came from (``$PRODUCTION_DATABASE_URL``) in errors, which
    never quote the value. Raises ConfigError when Prisma or libpq could not use it.
    """
    if "://" not in value and "=" in value:
        return _libpq_conninfo(value, source)
    parts = _split(value, source)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))  # the last of a repeated argument wins
    _check_prisma_values(query, source)
    params, dropped, translated = _connection_params(parts, query)
    schema = query.get("schema")
    if schema is not None:
        if not schema:
            raise _malformed(source, "its schema argument is empty")
        params["options"] = " ".join(filter(None, [params.get("options"), search_path_option(schema)]))
        translated["schema"] = f"options=-c search_path to {quote_ident(schema)} (as Prisma sets it)"
    _check_paths(query, source)
    _ssl(query, params, dropped, translated)
    try:
        conninfo = make_conninfo("", **params)  # libpq checks what it is given
    except psycopg.Error:
        raise _malformed(source, "libpq cannot read the connection it describes") from None
    return DatabaseUrl(conninfo, schema, dropped, translated, tuple(secrets_in(value)))


def _libpq_conninfo(value: str, source: str) -> DatabaseUrl:
    """A libpq ``key=value`` string: not a form Prisma reads, but libpq's own, so used as it is."""
    try:
        return DatabaseUrl(make_conninfo(value), secrets=tuple(secrets_in(value)))
    except psycopg.Error:  # libpq's message quotes the string
        raise _malformed(source, "it is neither a postgresql:// URL nor a key=value string libpq can read") from None


def quote_ident(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def search_path_option(schema: str) -> str:
    """The libpq ``options`` text that puts ``schema`` (alone) on the search_path.

    The server splits ``options`` at white space unless a backslash escapes it.
    """
    return "-c search_path=" + re.sub(r"([\\\s])", r"\\\1", quote_ident(schema))


def secrets_in(value: str) -> list[str]:
    """Every form in which a secret of ``value`` could be written somewhere, longest first.

    The whole value, the password as written in the URL and percent-decoded, and as libpq's
    conninfo quotes it; the same for ``sslpassword`` and the other secret arguments. Never
    raises: a URL too broken to parse still has secrets to keep out of files.
    """
    found = {value}
    for raw in _raw_secrets(value):
        decoded = unquote(raw)
        found.update({raw, decoded, _conninfo_quoted(decoded)})
    return sorted((s for s in found if s), key=len, reverse=True)


def _raw_secrets(value: str) -> list[str]:
    """Password-like pieces of ``value`` as written (not decoded), found without trusting its syntax."""
    if "://" not in value:
        try:
            params = conninfo_to_dict(value)
        except psycopg.Error:
            return [value.partition("password=")[2].split(" ")[0].strip("'")]
        return [v for k, v in params.items() if k in SECRET_KEYWORDS and v]
    rest = value.split("://", 1)[-1]
    pieces = []
    userinfo = rest.split("/", 1)[0].rpartition("@")[0]  # as a URL parser reads it
    if userinfo:
        pieces.append(userinfo.partition(":")[2])
    if "@" in rest:
        pieces.append(rest.rpartition("@")[0].partition(":")[2])  # a '/', '?' or '#' left unencoded in it
    query = rest.partition("?")[2]
    for pair in query.split("&"):
        key, _, raw = pair.partition("=")
        if unquote(key) in SECRET_KEYWORDS:
            pieces.append(raw)
    return [p for p in pieces if p]


def _conninfo_quoted(secret: str) -> str:
    return secret.replace("\\", "\\\\").replace("'", "\\'")


def _malformed(source: str, problem: str) -> ConfigError:
    return ConfigError(
        f"{source} is not a PostgreSQL URL the runbook can use: {problem}.",
        next_action=(f"fix the value of {source} (the URL itself is not shown here, it holds the password). The "
                     f"form is {URL_FORM}; in USER and PASSWORD write @ as %40, : as %3A, / as %2F, ? as %3F, "
                     "# as %23 and % as %25."),
        step="config",
    )


def _split(value: str, source: str):
    """The URL's parts, checked; errors say which part, never what it holds."""
    value = value.strip()
    scheme = value.partition("://")[0].lower() if "://" in value else ""
    if scheme.startswith("prisma"):
        raise ConfigError(
            f"{source} is a Prisma Accelerate / Prisma Postgres URL ({scheme}://), not a connection to the server.",
            next_action=f"point {source} at the database's direct URL (Prisma's directUrl, {URL_FORM}).",
            step="config",
        )
    if scheme not in SCHEMES:
        raise _malformed(source, "it does not start with postgresql:// or postgres:// (nor is it a libpq "
                         "key=value string)")
    if "#" in value:
        raise _malformed(source, "it holds a '#', which ends a URL (in a password, write it %23)")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - reading the port is what checks it
    except ValueError:
        raise _malformed(source, "its host and port cannot be told apart (a :, /, ?, or @ in the user name or "
                         "password that is not percent-encoded, or a port that is not a number)") from None
    return parts


def _connection_params(parts, query: dict[str, str]) -> tuple[dict, dict, dict]:
    """libpq key words from the URL's parts and arguments, and what was dropped or passed on."""
    params: dict[str, str] = {}
    dropped: dict[str, str] = {}
    translated: dict[str, str] = {}
    if parts.username:
        params["user"] = unquote(parts.username)
    if parts.password is not None:
        params["password"] = unquote(parts.password)
    params["host"] = query.get("host") or _host(parts.netloc) or "localhost"
    if parts.port is not None:
        params["port"] = str(parts.port)
    dbname = unquote(parts.path.lstrip("/").split("/")[0])
    if dbname:
        params["dbname"] = dbname
    for key, value in query.items():
        if key in ("host", "schema", "sslmode", "sslaccept", "sslcert", "pgbouncer"):
            continue  # handled where their meaning is decided
        if key in URL_PARTS:
            dropped[key] = f"Prisma takes the {key} from the URL itself, never from its query"
        elif key in PRISMA_ONLY:
            dropped[key] = PRISMA_ONLY[key]
        elif key in LIBPQ_KEYWORDS:
            params[key] = value
            if key not in ("connect_timeout", "application_name", "channel_binding", "options", "sslrootcert"):
                translated[key] = "given to libpq as written; Prisma itself ignores it"
        else:
            dropped[key] = "known to neither Prisma (which ignores it) nor libpq"
    if query.get("pgbouncer", "false") == "true":
        dropped["pgbouncer"] = ("the URL points at PgBouncer in transaction mode; the runbook needs a session of its "
                                "own on the server (snapshots, ALTER DATABASE, ending sessions, the schema's "
                                "search_path): if it cannot connect or act, give it the direct URL (Prisma's "
                                "directUrl) in the variable database_url_env names")
    elif "pgbouncer" in query:
        dropped["pgbouncer"] = "Prisma's PgBouncer mode, off"
    return params, dropped, translated


def _host(netloc: str) -> str:
    """The host part of ``netloc``, decoded, brackets of an IPv6 address removed, case kept."""
    host = netloc.rpartition("@")[2]
    if host.startswith("["):
        return host[1:host.find("]")]
    return unquote(host.partition(":")[0])


def _check_prisma_values(query: dict[str, str], source: str) -> None:
    """The values Prisma itself refuses; names the argument, never the value."""
    for key in PRISMA_INTEGERS:
        if key in query and not query[key].isdigit():
            raise _malformed(source, f"its {key} argument is not a whole number")
    if query.get("pgbouncer", "false") not in ("true", "false"):
        raise _malformed(source, "its pgbouncer argument is neither true nor false")


def _ssl(query: dict[str, str], params: dict, dropped: dict, translated: dict) -> None:
    """sslmode, sslcert and sslaccept, as Prisma means them, in libpq's terms."""
    mode = query.get("sslmode")
    if mode is not None and mode not in LIBPQ_SSLMODES:
        translated["sslmode"] = f"{mode!r} is not a mode Prisma or libpq knows; Prisma reads it as prefer, so does the runbook"
        mode = "prefer"
    elif mode is not None and mode not in PRISMA_SSLMODES:
        translated["sslmode"] = f"{mode}: libpq applies it as written (Prisma reads it as prefer)"
    if mode is not None:
        params["sslmode"] = mode
    if "sslcert" in query:
        if "sslrootcert" in query:
            dropped["sslcert"] = "Prisma reads it as the root certificate; sslrootcert, given too, is used for that"
        else:
            params["sslrootcert"] = query["sslcert"]
            translated["sslcert"] = "sslrootcert: Prisma's sslcert is the root certificate (libpq's sslcert is a client's)"
    if "sslaccept" in query:
        _sslaccept(query["sslaccept"], params, dropped, translated)


def _sslaccept(accept: str, params: dict, dropped: dict, translated: dict) -> None:
    mode = params.get("sslmode", "prefer")
    if accept == "accept_invalid_certs":
        if mode in ("verify-ca", "verify-full"):
            dropped["sslaccept"] = f"accept_invalid_certs: ignored, sslmode={mode} asks libpq to verify the certificate"
        else:
            dropped["sslaccept"] = f"accept_invalid_certs: libpq's sslmode={mode} does not verify the certificate either"
        return
    strict = "strict" if accept == "strict" else f"{accept!r}, which Prisma reads as strict"
    if mode == "disable":
        dropped["sslaccept"] = f"{strict}: ignored, sslmode=disable uses no TLS"
    elif mode in ("verify-ca", "verify-full"):
        dropped["sslaccept"] = f"{strict}: libpq verifies the certificate already (sslmode={mode})"
    else:
        params["sslmode"] = "verify-full"
        translated["sslaccept"] = (f"{strict}: sslmode=verify-full (chain and host name verified, as Prisma's strict "
                                   "does; unlike Prisma's prefer, a server without TLS is refused)")
        if "sslrootcert" not in params:
            params["sslrootcert"] = "system"
            translated["sslaccept"] += "; sslrootcert=system: the system's CA store, as Prisma uses"


def _check_paths(query: dict[str, str], source: str) -> None:
    """Certificate paths must be absolute: Prisma resolves relative ones against the prisma folder."""
    for key in CERTIFICATE_PATHS:
        path = query.get(key)
        if path and path != "system" and not os.path.isabs(path):
            raise ConfigError(
                f"{source} names a relative {key} path; Prisma resolves it against the app's prisma folder, "
                "which the runbook cannot know (libpq would read it from the run folder).",
                next_action=f"write the {key} path in {source} as an absolute path.",
                step="config",
            )


def redact_url(url: str) -> str:
    """The connection string with every secret replaced by ***, for display."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:  # libpq's message could quote the password
        return "(a connection string libpq cannot read)"
    for key in SECRET_KEYWORDS:
        if params.get(key):
            params[key] = "***"
    return make_conninfo("", **params)
