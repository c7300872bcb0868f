"""The database URL as a Prisma app writes it: parsed, used by every command, and never shown.

Every form is checked three ways: parsed alone, by `rollback backup`, and by `rollback run --dry-run`,
against the session's real server (reached through its Unix socket, the embedded server's form).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from typer.testing import CliRunner

from rollbacklib.cli import app
from rollbacklib.config import load_config
from rollbacklib.drill import stage_incident
from rollbacklib.drill.scenario import load_scenario
from rollbacklib.errors import ConfigError
from rollbacklib.postgres import database as db
from rollbacklib.postgres.client import client_tools, display_command, redact_url
from rollbacklib.postgres.urls import parse_database_url, search_path_option, secrets_in
from rollbacklib.resources import scenarios_dir

from conftest import CONFIG, CONFIG_HOME, DRILL_URL_ENV, MIGRATION

runner = CliRunner()
SOCK = "/tmp/sock"

# The forms a Prisma app's DATABASE_URL takes, written for a server whose socket is in {sock}.
FORMS = {
    "schema": "postgresql://postgres@localhost/{db}?host={sock}&schema=public",
    "socket": "postgresql://postgres@/{db}?host={sock}",
    "sslmode-disable": "postgresql://postgres@localhost/{db}?host={sock}&sslmode=disable&schema=public",
    "sslmode-prefer": "postgresql://postgres@localhost/{db}?sslmode=prefer&host={sock}",
    "pool": "postgresql://postgres@localhost/{db}?host={sock}&schema=public&connection_limit=5&pool_timeout=20",
}


def form(name: str, url: str) -> str:
    """The form ``name`` pointed where the libpq URL ``url`` points."""
    params = conninfo_to_dict(url)
    return FORMS[name].format(db=params["dbname"], sock=params["host"])


# --- parsing alone --------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected, dropped", [
    ("schema", {"host": SOCK, "dbname": "app", "user": "postgres", "options": '-c search_path="public"'}, []),
    ("socket", {"host": SOCK, "dbname": "app", "user": "postgres"}, []),
    ("sslmode-disable", {"host": SOCK, "sslmode": "disable", "options": '-c search_path="public"'}, []),
    ("sslmode-prefer", {"host": SOCK, "sslmode": "prefer"}, []),
    ("pool", {"host": SOCK, "options": '-c search_path="public"'}, ["connection_limit", "pool_timeout"]),
])
def test_each_prisma_form_becomes_a_libpq_conninfo(name, expected, dropped):
    url = parse_database_url(FORMS[name].format(db="app", sock=SOCK))
    params = conninfo_to_dict(url.conninfo)
    assert params.items() >= expected.items()
    assert sorted(url.dropped) == dropped
    assert "schema" not in params and "connection_limit" not in params


def test_the_url_host_gives_way_to_the_socket_folder_as_in_prisma():
    url = parse_database_url("postgresql://u:pw@localhost/db?host=/var/run/postgresql/")
    assert conninfo_to_dict(url.conninfo)["host"] == "/var/run/postgresql/"
    assert conninfo_to_dict(parse_database_url("postgresql://u@/db").conninfo)["host"] == "localhost"


def test_user_password_and_database_are_percent_decoded_leniently_like_prisma():
    url = parse_database_url("postgresql://jane%40corp:p%40ss%zz%25@db.internal:6543/my%20db?schema=app")
    params = conninfo_to_dict(url.conninfo)
    assert (params["user"], params["password"], params["dbname"], params["port"]) == (
        "jane@corp", "p@ss%zz%", "my db", "6543")
    assert url.schema == "app"
    assert {"p%40ss%zz%25", "p@ss%zz%"} <= set(url.secrets)


@pytest.mark.parametrize("query, sslmode, rootcert, dropped, says", [
    ("sslaccept=strict", "verify-full", "system", [], "sslmode=verify-full"),
    ("sslmode=require&sslaccept=strict&sslcert=/etc/ssl/ca.pem", "verify-full", "/etc/ssl/ca.pem", [], "verify-full"),
    ("sslmode=require&sslaccept=accept_invalid_certs", "require", None, ["sslaccept"], "does not verify"),
    ("sslmode=disable&sslaccept=strict", "disable", None, ["sslaccept"], "no TLS"),
    ("sslmode=verify-full&sslrootcert=/ca.pem&sslaccept=strict", "verify-full", "/ca.pem", ["sslaccept"], "already"),
    ("sslmode=bogus", "prefer", None, [], "reads it as prefer"),
    ("sslcert=/etc/ssl/ca.pem", None, "/etc/ssl/ca.pem", [], "root certificate"),
])
def test_ssl_arguments_keep_prisma_s_meaning_and_say_how(query, sslmode, rootcert, dropped, says):
    url = parse_database_url(f"postgresql://u@h/db?{query}")
    params = conninfo_to_dict(url.conninfo)
    assert params.get("sslmode") == sslmode and params.get("sslrootcert") == rootcert
    assert "sslcert" not in params  # libpq's sslcert is a client certificate; Prisma's is the CA
    assert sorted(url.dropped) == dropped
    assert says in " ".join([*url.dropped.values(), *url.translated.values()])


def test_prisma_only_arguments_are_dropped_with_the_reason_and_libpq_ones_kept():
    url = parse_database_url(
        "postgresql://u:pw@h/db?pgbouncer=true&statement_cache_size=0&socket_timeout=3&sslidentity=/id.p12"
        "&sslpassword=p12secret&max_connection_lifetime=60&connect_timeout=7&application_name=api&sslkey=/k.pem"
        "&target_session_attrs=read-write&colour=blue")
    params = conninfo_to_dict(url.conninfo)
    assert sorted(url.dropped) == ["colour", "max_connection_lifetime", "pgbouncer", "socket_timeout",
                                   "sslidentity", "sslpassword", "statement_cache_size"]
    assert "directUrl" in url.dropped["pgbouncer"] and "PKCS12" in url.dropped["sslidentity"]
    assert params.items() >= {"connect_timeout": "7", "application_name": "api", "sslkey": "/k.pem",
                              "target_session_attrs": "read-write"}.items()
    assert "Prisma itself ignores it" in url.translated["sslkey"]
    assert "p12secret" in url.secrets and "p12secret" not in json.dumps(url.evidence())


SECRET = "S3cr%t"  # as written in the URLs below, a '%' that is no escape (Prisma keeps it as written)


@pytest.mark.parametrize("value, says", [
    (f"postgresql://u:{SECRET}/x@h/db", "host and port cannot be told apart"),
    (f"postgresql://u:{SECRET}#x@h/db", "'#'"),
    (f"postgresql://u:{SECRET}@h:54x2/db", "host and port cannot be told apart"),
    (f"mysql://u:{SECRET}@h/db", "does not start with postgresql://"),
    (f"{SECRET}", "does not start with postgresql://"),
    (f"host=h password='{SECRET}", "nor a key=value string libpq can read"),
    (f"postgresql://u:{SECRET}@h/db?connection_limit=ten", "connection_limit argument is not a whole number"),
    (f"postgresql://u:{SECRET}@h/db?pgbouncer=yes", "pgbouncer argument is neither true nor false"),
    (f"postgresql://u:{SECRET}@h/db?schema=", "schema argument is empty"),
    (f"postgresql://u:{SECRET}@h/db?sslcert=certs/ca.pem", "relative sslcert path"),
    (f"prisma+postgres://accelerate.prisma-data.net/?api_key={SECRET}", "directUrl"),
])
def test_a_malformed_url_is_bad_usage_that_never_quotes_it(value, says):
    with pytest.raises(ConfigError) as caught:
        parse_database_url(value, source="$APP_DATABASE_URL")
    error = caught.value
    assert error.exit_code == 2
    assert says in str(error) and "$APP_DATABASE_URL" in str(error)
    assert SECRET not in str(error) and value not in str(error)


def test_a_libpq_key_value_string_is_taken_as_it_is():
    url = parse_database_url("host=/tmp/sock dbname=shop user=ops password='it\\'s secret'")
    assert conninfo_to_dict(url.conninfo) == {"host": "/tmp/sock", "dbname": "shop", "user": "ops",
                                              "password": "it's secret"}
    assert {"it's secret", "it\\'s secret"} <= set(url.secrets) and not url.dropped


def test_secrets_are_found_even_in_a_url_that_does_not_parse():
    found = secrets_in("postgresql://u:pa/ss%40word@h/db")
    assert "pa/ss%40word" in found and "pa/ss@word" in found
    assert found[0] == "postgresql://u:pa/ss%40word@h/db"


def test_redaction_uses_libpq_s_own_form_and_keeps_socket_hosts():
    conninfo = parse_database_url("postgresql://postgres:it's%20a%20secret@/db?host=/tmp/sock&sslpassword=xyzw").conninfo
    shown = redact_url(conninfo)
    assert conninfo_to_dict(shown) == {"user": "postgres", "password": "***", "host": "/tmp/sock", "dbname": "db"}
    assert "secret" not in shown


def test_commands_are_shown_as_a_shell_reads_them():
    cmd = ["/opt/pg/bin/pg_restore", "--dbname=shop", "/backups/it's here.dump"]
    assert display_command(cmd) == shlex.join(cmd)
    assert shlex.split(display_command(cmd)) == cmd


# --- against the real server ----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FORMS))
def test_each_form_connects_and_reads_the_app_schema(name, fresh_db):
    url = parse_database_url(form(name, fresh_db))
    with db.connect(url.conninfo) as conn:
        assert db.default_schema(conn) == "public"
        assert conn.execute("SELECT current_database()").fetchone()[0] == conninfo_to_dict(fresh_db)["dbname"]


def test_a_schema_with_odd_characters_is_the_search_path(fresh_db):
    schema = 'odd "name", with\\slash'
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema.replace(chr(34), chr(34) * 2)}"')
        conn.execute(f'CREATE TABLE "{schema.replace(chr(34), chr(34) * 2)}".users (id int PRIMARY KEY)')
        conn.execute("CREATE TABLE public.users (id int PRIMARY KEY, extra text)")
    url = parse_database_url(form("socket", fresh_db) + "&schema=" + quote(schema, safe=""))
    assert search_path_option(schema) in conninfo_to_dict(url.conninfo)["options"]
    with db.connect(url.conninfo) as conn:
        assert db.default_schema(conn) == schema
        assert db.row_counts(conn) == {"users": 0, "public.users": 0}
        assert db.column_info(conn, "users", "extra") is None  # not public.users
        assert db.column_info(conn, "public.users", "extra") == {"data_type": "text", "nullable": True}


# --- through the CLI --------------------------------------------------------------------------

def local_config(tmp_path: Path) -> Path:
    """The repository's config, with the drill's backups in ``tmp_path`` and its paths absolute."""
    text = CONFIG.read_text().replace('backup_dir = "backups/drill"', f'backup_dir = "{tmp_path / "backups"}"')
    path = tmp_path / "runbook.toml"
    path.write_text(text.replace('"scenarios/', f'"{CONFIG_HOME}/scenarios/'))
    return path


def run_json(reports: Path) -> dict:
    return json.loads(next(reports.rglob("run.json")).read_text())


@pytest.mark.parametrize("name", sorted(FORMS))
def test_backup_and_dry_run_take_each_form(name, incident, tmp_path, monkeypatch):
    config = local_config(tmp_path)
    monkeypatch.setenv(DRILL_URL_ENV, form(name, incident.url))

    backup = runner.invoke(app, ["backup", "--env", "drill", "--config", str(config)])
    assert backup.exit_code == 0, backup.output
    manifest = json.loads(next((tmp_path / "backups").glob("*.manifest.json")).read_text())
    assert manifest["database"] == incident.database and manifest["row_counts"]["users"] >= 200
    if name == "pool":
        assert "connection_limit: a setting of Prisma's connection pool" in backup.output

    incident.config = config
    dry = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--dry-run"))
    assert dry.exit_code == 0, dry.output
    assert run_json(incident.reports)["status"] == "succeeded"


def test_a_malformed_url_stops_backup_and_run_with_exit_2_and_no_secret(tmp_path, monkeypatch):
    value = f"postgresql://postgres:{SECRET}/x@localhost/db?schema=public"
    monkeypatch.setenv(DRILL_URL_ENV, value)
    config = local_config(tmp_path)
    for args in (["backup", "--env", "drill", "--config", str(config)],
                 ["run", "--env", "drill", "-m", MIGRATION, "--config", str(config), "--reports-dir",
                  str(tmp_path / "reports"), "--dry-run"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert f"${DRILL_URL_ENV} is not a PostgreSQL URL" in result.output
        assert SECRET not in result.output
    assert not (tmp_path / "reports").exists() and not (tmp_path / "backups").exists()


def test_a_rollback_in_a_non_public_schema_with_an_odd_password(fresh_db, tmp_path, monkeypatch):
    """Tables in schema ``app``; the app's URL says ``?schema=app`` and has a password full of odd characters."""
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA app")
    config = load_config(CONFIG)
    backup = stage_incident(fresh_db + "&options=-c%20search_path%3Dapp", load_scenario(scenarios_dir() / "auth-platform"),
                            MIGRATION, users=200, backup_dir=tmp_path / "backups", tools=client_tools("embedded"),
                            probes=config.all_queries(), say=lambda _line: None)
    password = "P@ss w%rd:/'\"\\é"  # the server trusts the socket, so any password connects
    written = quote(password, safe="") + "%zz"  # and a '%' that is no escape, kept as written
    params = conninfo_to_dict(fresh_db)
    monkeypatch.setenv(DRILL_URL_ENV, f"postgresql://postgres:{written}@localhost/{params['dbname']}"
                                      f"?host={params['host']}&schema=app&connection_limit=3")
    reports = tmp_path / "reports"

    result = runner.invoke(app, ["run", "--env", "drill", "-m", MIGRATION, "--config", str(CONFIG), "--reports-dir",
                                 str(reports), "--backup", str(backup), "--yes"])

    assert result.exit_code == 0, result.output
    run = run_json(reports)
    checks = {c["name"]: c for c in run["validation"]["checks"]}
    for name in ("users.passwordHash exists", "users.emailVerified nullable", "users.authorizerId nullable",
                 "rows in users equal pre-migration", "foreign key workflows.userId -> users.id exists"):
        assert checks[name]["passed"] and not checks[name]["skipped"], checks[name]
    with psycopg.connect(fresh_db) as conn:  # the columns came back in app.users; public has no users at all
        columns = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'app' AND table_name = 'users'")}
        assert {"passwordHash", "emailVerified", "authorizerId"} <= columns
        assert conn.execute("SELECT to_regclass('public.users')").fetchone()[0] is None
    dropped = "connection_limit"
    assert dropped in next(reports.rglob("01_prepare.ipynb")).read_text()  # the header names what was not used
    decoded = password + "%zz"
    forms = {written, decoded, json.dumps(decoded)[1:-1], json.dumps(decoded, ensure_ascii=False)[1:-1]}
    files = [path for path in reports.rglob("*") if path.is_file()]
    assert len(files) > 10
    for secret in forms:
        assert secret not in result.output
        for path in files:
            assert secret not in path.read_text(errors="replace"), path
