"""Backups against a real server: `rollback backup`, its manifest, `verify-backup --restore-test`, client programs.

Every test that touches a database touches a real embedded PostgreSQL; nothing of ours is mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from typer.testing import CliRunner

from rollbacklib.postgres import database as db
from rollbacklib.postgres.backup import manifest_path, take_backup
from rollbacklib.postgres.restore import restore_into
from rollbacklib.checks import describe_failures, failed
from rollbacklib.cli import app
from rollbacklib.config import load_config
from rollbacklib.errors import ConfigError
from rollbacklib.postgres.client import PROGRAMS, client_tools, with_database
from rollbacklib.prisma import applied_migrations
from rollbacklib.validation import against_manifest

from conftest import CONFIG, DRILL_URL_ENV, server_snapshot

runner = CliRunner()

PROBE = "users with a clientId"
PROBE_SQL = 'SELECT count(*) FROM users WHERE "clientId" IS NOT NULL'


def _config(tmp_path: Path, backup_dir: Path, client_binaries: str | None = None) -> Path:
    """A copy of runbook.toml whose drill backups go to ``backup_dir`` (relative scenario paths made absolute)."""
    text = CONFIG.read_text()
    assert 'backup_dir = "backups/drill"' in text
    text = text.replace('backup_dir = "backups/drill"', f'backup_dir = "{backup_dir}"')
    text = text.replace('"scenarios/', f'"{CONFIG.resolve().parent}/scenarios/')
    if client_binaries is not None:
        assert 'client_binaries = "embedded"' in text
        text = text.replace('client_binaries = "embedded"', f'client_binaries = "{client_binaries}"', 1)
    path = tmp_path / "runbook.toml"
    path.write_text(text)
    return path


def _words(output: str) -> str:
    """The output with rich's line wrapping undone (for phrases)."""
    return " ".join(output.split())


def _unwrapped(output: str) -> str:
    """The output with all whitespace removed (for long paths rich may fold mid-word)."""
    return "".join(output.split())


def _restore_test_databases(url: str) -> list[str]:
    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as admin:
        return [r[0] for r in admin.execute(
            "SELECT datname FROM pg_database WHERE strpos(datname, '__restore_test_') > 0").fetchall()]


def _server_version_num(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT current_setting('server_version_num')::int").fetchone()[0]


def _copy_with_manifest(backup: Path, folder: Path, change=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / backup.name
    shutil.copy(backup, path)
    manifest = json.loads(manifest_path(backup).read_text())
    if change:
        change(manifest)
    manifest_path(path).write_text(json.dumps(manifest))
    return path


# --- 1. rollback backup ----------------------------------------------------------------------

def test_backup_writes_a_dump_and_a_manifest_that_describe_the_live_database(incident, tmp_path):
    backups = tmp_path / "drill-backups"
    cfg = _config(tmp_path, backups)
    before = datetime.now(timezone.utc)

    result = runner.invoke(app, ["backup", "--env", "drill", "--config", str(cfg)])

    assert result.exit_code == 0, result.output
    dumps = sorted(backups.glob("*.dump"))
    assert len(dumps) == 1, sorted(p.name for p in backups.iterdir())
    dump = dumps[0]
    assert dump.name.startswith(incident.database + "_")
    assert manifest_path(dump).is_file() and manifest_path(dump).name == dump.name + ".manifest.json"
    assert not list(backups.glob("*.partial"))
    assert str(dump) in _unwrapped(result.output) and str(manifest_path(dump)) in _unwrapped(result.output)

    manifest = json.loads(manifest_path(dump).read_text())
    with psycopg.connect(incident.url, autocommit=True) as conn:
        live_counts = db.row_counts(conn)
        live_fingerprint = db.schema_fingerprint(db.schema_catalog(conn))
        live_migrations = applied_migrations(conn)
        live_version = conn.execute("SHOW server_version").fetchone()[0]
        live_probe = conn.execute(PROBE_SQL).fetchone()[0]

    taken_at = datetime.fromisoformat(manifest["taken_at"])
    assert taken_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= taken_at <= datetime.now(timezone.utc)
    assert manifest["server_version"] == live_version
    assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", manifest["wal_lsn"]), manifest["wal_lsn"]
    assert manifest["database"] == incident.database and manifest["file"] == dump.name
    assert manifest["row_counts"] == live_counts
    assert {"users", "clients", "workflows", "_prisma_migrations"} <= set(live_counts)
    assert manifest["schema_fingerprint"] == live_fingerprint
    assert manifest["prisma_migrations"] == live_migrations
    assert [m["migration_name"] for m in manifest["prisma_migrations"]][-1] == incident.migration_id
    assert manifest["size_bytes"] == dump.stat().st_size
    assert manifest["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    probes = {p["name"]: p for p in manifest["probes"]}
    assert probes[PROBE]["sql"] == PROBE_SQL
    assert "error" not in probes[PROBE], probes[PROBE]
    assert probes[PROBE]["value"] == live_probe

    listing = subprocess.run([client_tools("embedded").path("pg_restore"), "--list", str(dump)],
                             capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    for table in ("users", "clients", "workflows", "_prisma_migrations"):
        assert f"TABLE DATA public {table} " in listing.stdout, listing.stdout


# --- 2. the manifest and the dump share one snapshot ------------------------------------------

def test_manifest_matches_the_dump_while_writes_go_on(incident, tmp_path):
    tools = client_tools("embedded")
    with psycopg.connect(incident.url, autocommit=True) as conn:
        clients_before = db.row_counts(conn)["clients"]

    stop, writing = threading.Event(), threading.Event()
    inserted: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        deadline = time.monotonic() + 5  # bounded even if the backup hangs
        try:
            with psycopg.connect(incident.url, autocommit=True) as conn:
                while not stop.is_set() and time.monotonic() < deadline:
                    n = len(inserted)
                    conn.execute('INSERT INTO clients (id, name, "updatedAt") VALUES (%s, %s, now())',
                                 (f"during-backup-{n}", "written while the backup ran"))
                    inserted.append(n)
                    if n == 20:
                        writing.set()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            writing.set()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        assert writing.wait(5)
        path = take_backup(incident.url, tmp_path / "backups", tools, probes=load_config(CONFIG).all_queries())
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert not errors, errors

    manifest = json.loads(manifest_path(path).read_text())
    with psycopg.connect(incident.url, autocommit=True) as conn:
        clients_after = db.row_counts(conn)["clients"]
    assert clients_after == clients_before + len(inserted)
    # Rows went in before the snapshot, and more while the backup ran.
    assert clients_before < manifest["row_counts"]["clients"] < clients_after, (clients_before, manifest["row_counts"],
                                                                               clients_after)

    restored = f"{incident.database}_snapshot_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        admin.execute(db.sql.SQL("CREATE DATABASE {}").format(db.sql.Identifier(restored)))
    try:
        restore_into(path, incident.url, restored, tools)
        with psycopg.connect(with_database(incident.url, restored), autocommit=True) as conn:
            assert db.row_counts(conn) == manifest["row_counts"]
            checks = against_manifest(conn, manifest)
        assert not failed(checks), describe_failures(checks)
    finally:
        with psycopg.connect(incident.admin_url, autocommit=True) as admin:
            admin.execute(db.drop_database_statement(restored))


# --- 3 and 4. verify-backup --restore-test ----------------------------------------------------

def test_restore_test_passes_drops_its_database_and_leaves_the_live_one_alone(incident, tmp_path):
    cfg = _config(tmp_path, tmp_path / "drill-backups")
    before = server_snapshot(incident)

    result = runner.invoke(app, ["verify-backup", "--env", "drill", "--config", str(cfg),
                                 "--backup", str(incident.backup), "--restore-test"])

    assert result.exit_code == 0, result.output
    said = _words(result.output)
    match = re.search(r"Restore test: (\d+)/(\d+) checks passed", said)
    assert match, result.output
    assert match.group(1) == match.group(2) and int(match.group(2)) > 0, result.output
    assert re.search(r"throwaway database \S+__restore_test_\S+ dropped", said), result.output
    assert _restore_test_databases(incident.url) == []
    assert server_snapshot(incident) == before


def test_restore_test_against_a_lying_manifest_fails_and_still_drops_its_database(incident, tmp_path):
    cfg = _config(tmp_path, tmp_path / "drill-backups")

    def one_user_more(manifest):
        manifest["row_counts"]["users"] += 1

    lying = _copy_with_manifest(incident.backup, tmp_path / "edited", one_user_more)
    expected_users = json.loads(manifest_path(lying).read_text())["row_counts"]["users"]
    before = server_snapshot(incident)

    result = runner.invoke(app, ["verify-backup", "--env", "drill", "--config", str(cfg),
                                 "--backup", str(lying), "--restore-test"])

    assert result.exit_code == 3, result.output
    said = _words(result.output)
    assert "rows in users equal backup" in said, result.output
    assert f"expected {expected_users}, found {expected_users - 1}" in said, result.output
    assert "dropped" in said, result.output
    assert _restore_test_databases(incident.url) == []
    assert server_snapshot(incident) == before


# --- 5. verify-backup on a file that is not a backup -----------------------------------------

def _missing(tmp_path):
    return tmp_path / "no_such_backup.dump"


def _garbage_dump(tmp_path):
    path = tmp_path / "garbage.dump"
    path.write_bytes(os.urandom(4096))
    return path


def _garbage_gzip(tmp_path):
    path = tmp_path / "garbage.sql.gz"
    path.write_bytes(os.urandom(4096))
    return path


def _empty_dump(tmp_path):
    path = tmp_path / "empty.dump"
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("make_file, failing_check", [
    (_missing, "present"),
    (_garbage_dump, "archive readable"),
    (_garbage_gzip, "archive readable"),
    (_empty_dump, "size over minimum"),
])
def test_verify_backup_rejects_what_is_not_a_backup(make_file, failing_check, tmp_path, fresh_db, monkeypatch):
    monkeypatch.setenv(DRILL_URL_ENV, fresh_db)
    cfg = _config(tmp_path, tmp_path / "drill-backups")
    bad = make_file(tmp_path)

    result = runner.invoke(app, ["verify-backup", "--env", "drill", "--config", str(cfg), "--backup", str(bad),
                                 "--restore-test"])

    assert result.exit_code == 3, result.output
    said = _words(result.output)
    assert f"- {failing_check}: expected" in said, result.output
    assert "ABORT: nothing was changed" in said and "--backup PATH" in said, result.output
    assert "Restore test:" not in said  # it never got as far as restoring
    assert _restore_test_databases(fresh_db) == []


def _truncated_dump_without_manifest(incident, tmp_path):
    """pg_restore --list reads only the table of contents: the check must read every data block."""
    path = tmp_path / "truncated" / incident.backup.name
    path.parent.mkdir()
    data = incident.backup.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path, "- archive readable: expected"


def _manifest_without_fingerprint(incident, tmp_path):
    return (_copy_with_manifest(incident.backup, tmp_path / "incomplete", lambda m: m.pop("schema_fingerprint")),
            "lacks schema_fingerprint")


@pytest.mark.parametrize("make_backup", [_truncated_dump_without_manifest, _manifest_without_fingerprint])
def test_verify_backup_rejects_a_damaged_backup_of_the_incident(incident, tmp_path, make_backup):
    cfg = _config(tmp_path, tmp_path / "drill-backups")
    bad, says = make_backup(incident, tmp_path)

    result = runner.invoke(app, ["verify-backup", "--env", "drill", "--config", str(cfg), "--backup", str(bad),
                                 "--restore-test"])

    assert result.exit_code == 3, result.output
    assert says in _words(result.output), result.output
    assert _restore_test_databases(incident.url) == []


def test_verify_backup_names_the_formats_it_knows(tmp_path):
    cfg = _config(tmp_path, tmp_path / "drill-backups")
    odd = tmp_path / "backup.tar"
    odd.write_bytes(b"not a backup")

    result = runner.invoke(app, ["verify-backup", "--env", "drill", "--config", str(cfg), "--backup", str(odd)])

    assert result.exit_code == 3, result.output
    said = _words(result.output)
    assert "is not a backup format the runbook knows" in said, result.output
    assert "*.dump" in said and "*.sql.gz" in said, result.output


# --- 6. client programs ------------------------------------------------------------------------

def _fake_bin(folder: Path, programs=PROGRAMS, banner: str = "{program} (PostgreSQL) 15.4") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for program in programs:
        script = folder / program
        script.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then echo "{banner.format(program=program)}"; '
                          'exit 0; fi\necho "not a real $0" >&2\nexit 1\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


def test_embedded_client_programs_exist_and_accept_the_server(pg_server):
    tools = client_tools("embedded")
    for program in PROGRAMS:
        path = Path(tools.path(program))
        assert path.is_file() and os.access(path, os.X_OK), path
    server_version_num = _server_version_num(pg_server.url())
    banner = tools.check_server(server_version_num)
    assert banner.startswith("pg_dump (PostgreSQL) ")
    assert tools.version("pg_dump")[0] >= server_version_num // 10000


@pytest.mark.parametrize("present, missing", [
    ((), "pg_dump, pg_restore, psql"),
    (("psql",), "pg_dump, pg_restore"),
    (("pg_dump", "psql"), "pg_restore"),
])
def test_a_client_folder_lacking_programs_is_a_config_error(tmp_path, present, missing):
    folder = _fake_bin(tmp_path / "bin", present)

    with pytest.raises(ConfigError) as caught:
        client_tools(str(folder))

    assert f"client_binaries folder {folder} lacks {missing}." in caught.value.message
    assert "point client_binaries at a PostgreSQL bin folder" in caught.value.next_action


def test_path_client_programs_with_an_empty_path_is_a_config_error(pg_server, monkeypatch):
    monkeypatch.setenv("PATH", "")
    tools = client_tools("path")

    with pytest.raises(ConfigError) as caught:
        tools.path("pg_dump")
    assert caught.value.message == "pg_dump is not on PATH."
    assert 'client_binaries = "embedded"' in caught.value.next_action

    with pytest.raises(ConfigError) as caught:
        tools.check_server(_server_version_num(pg_server.url()))
    assert caught.value.message == "pg_dump is not on PATH."


def test_a_client_older_than_the_server_is_refused(pg_server, tmp_path):
    server_major = _server_version_num(pg_server.url()) // 10000
    assert server_major > 15
    tools = client_tools(str(_fake_bin(tmp_path / "pg15" / "bin")))
    assert tools.version("pg_dump") == (15, "pg_dump (PostgreSQL) 15.4")

    with pytest.raises(ConfigError) as caught:
        tools.check_server(_server_version_num(pg_server.url()))

    error = caught.value
    assert error.expected == f">= {server_major}" and error.found == 15
    assert f"version 15, the server is {server_major}" in error.message
    assert "client_binaries" in error.next_action and f"version {server_major} or newer" in error.next_action
    assert f"expected: >= {server_major}; found: 15" in str(error)


@pytest.mark.parametrize("folder_name, present, says", [
    ("bin", ("psql",), ("lacks pg_dump, pg_restore",)),
    ("pg15/bin", None, ("pg_dump from", "is version 15")),
])
def test_backup_with_unusable_client_programs_exits_2_and_writes_nothing(fresh_db, tmp_path, monkeypatch,
                                                                          folder_name, present, says):
    monkeypatch.setenv(DRILL_URL_ENV, fresh_db)
    folder = _fake_bin(tmp_path / folder_name, present or PROGRAMS)
    backups = tmp_path / "drill-backups"
    cfg = _config(tmp_path, backups, client_binaries=str(folder))

    result = runner.invoke(app, ["backup", "--env", "drill", "--config", str(cfg)])

    assert result.exit_code == 2, result.output
    said = _words(result.output)
    assert all(phrase in said for phrase in says) and "client_binaries" in said, result.output
    assert not backups.exists() or not list(backups.iterdir())


# --- 7. the URL's password never lands in a manifest or the output ----------------------------

def _role_with_password(admin_url: str) -> tuple[str, str]:
    role = f"backup_{uuid.uuid4().hex[:12]}"
    password = f"Pw{uuid.uuid4().hex}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(db.sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            db.sql.Identifier(role), db.sql.Literal(password)))
    return role, password


def _url_with_password(url: str, role: str, password: str, dbname: str) -> str:
    host = conninfo_to_dict(url)["host"]
    return f"postgresql://{role}:{password}@/{dbname}?host={host}"


def test_the_urls_password_is_in_neither_the_manifest_nor_the_output(incident, tmp_path, monkeypatch):
    role, password = _role_with_password(incident.admin_url)
    url = _url_with_password(incident.url, role, password, incident.database)
    with psycopg.connect(url, autocommit=True) as conn:  # the URL works, as that role
        assert conn.execute("SELECT current_user").fetchone()[0] == role
    monkeypatch.setenv(DRILL_URL_ENV, url)
    backups = tmp_path / "drill-backups"
    cfg = _config(tmp_path, backups)

    result = runner.invoke(app, ["backup", "--env", "drill", "--config", str(cfg)])

    assert result.exit_code == 0, result.output
    assert password not in result.output
    [dump] = backups.glob("*.dump")
    manifest_text = manifest_path(dump).read_text()
    assert password not in manifest_text
    assert password.encode() not in dump.read_bytes()
    manifest = json.loads(manifest_text)
    assert manifest["database"] == incident.database and manifest["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()

    verified = runner.invoke(app, ["verify-backup", "--env", "drill", "--config", str(cfg), "--restore-test"])
    assert verified.exit_code == 0, verified.output
    assert password not in verified.output
    assert _restore_test_databases(incident.url) == []


def test_a_failing_backup_does_not_print_the_password(incident, tmp_path, monkeypatch):
    role, password = _role_with_password(incident.admin_url)
    monkeypatch.setenv(DRILL_URL_ENV, _url_with_password(incident.url, role, password, "no_such_database"))
    backups = tmp_path / "drill-backups"
    cfg = _config(tmp_path, backups)

    result = runner.invoke(app, ["backup", "--env", "drill", "--config", str(cfg)])

    assert result.exit_code == 3, result.output
    assert "Cannot connect to the database" in _words(result.output), result.output
    assert password not in result.output
    assert not backups.exists() or not list(backups.iterdir())
