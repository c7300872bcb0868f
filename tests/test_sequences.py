"""After a full restore no sequence hands out an id the database before the rollback already handed out."""

from __future__ import annotations

import json
import subprocess

import psycopg
from typer.testing import CliRunner

from conftest import before_the_migration, journal_events
from rollbacklib.cli import app
from rollbacklib.postgres import sequences as sq
from rollbacklib.postgres.client import client_tools, with_database
from rollbacklib.steps import StepName

TABLES = """
CREATE TABLE tickets (id bigserial PRIMARY KEY, note text);
CREATE TABLE audit (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text);
CREATE SEQUENCE countdown INCREMENT BY -1 START WITH 1000 MAXVALUE 1000;
CREATE SEQUENCE never_used;
"""


def _take(conn, n: int) -> list[int]:
    """``n`` real inserts through each sequence; the ids handed out (as a client sees them)."""
    ids = [conn.execute("INSERT INTO tickets (note) VALUES ('x') RETURNING id").fetchone()[0] for _ in range(n)]
    ids += [conn.execute("INSERT INTO audit (note) VALUES ('x') RETURNING id").fetchone()[0] for _ in range(n)]
    ids += [conn.execute("SELECT nextval('countdown')").fetchone()[0] for _ in range(n)]
    return ids


def _dump(url: str, path) -> None:
    subprocess.run([client_tools("embedded").path("pg_dump"), "-Fc", f"--file={path}", f"--dbname={url}"],
                   check=True, capture_output=True)


def test_ids_taken_after_the_backup_are_never_handed_out_again(fresh_db, pg_server, tmp_path):
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(TABLES)
        _take(conn, 5)
    backup = tmp_path / "b.dump"
    _dump(fresh_db, backup)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        seen = _take(conn, 7)  # after the backup: clients have seen these ids
        before = sq.read_sequences(conn)
    restored = fresh_db.rsplit("/", 1)[1] + "_restored"
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{restored}"')
    subprocess.run([client_tools("embedded").path("pg_restore"), "--exit-on-error", f"--dbname={restored}",
                    str(backup)], check=True, capture_output=True, env=_libpq(pg_server.url()))
    with psycopg.connect(with_database(fresh_db, restored), autocommit=True) as conn:
        moves = sq.moves(before, sq.read_sequences(conn), conn)
        by_name = {m.sequence: m for m in moves}
        assert {k: m.action for k, m in by_name.items()} == {
            "public.audit_id_seq": "set", "public.countdown": "set", "public.never_used": "never used",
            "public.tickets_id_seq": "set"}
        assert by_name["public.tickets_id_seq"].statement == "SELECT setval('\"public\".\"tickets_id_seq\"', 12, true)"
        assert all(not c.passed for c in sq.verify(conn, before))  # the restore alone would hand them out again
        sq.apply(conn, moves)
        assert all(c.passed for c in sq.verify(conn, before)) and len(sq.verify(conn, before)) == 3
        after = _take(conn, 20)
    assert not set(after) & set(seen)
    assert min(after[:20]) == 13 and min(after[20:40]) == 13 and max(after[40:]) == 1000 - 12


def _libpq(url: str) -> dict:
    from rollbacklib.postgres.client import libpq_env

    return libpq_env(url)


def test_a_swap_sets_the_restored_sequences_between_the_renames(incident, tmp_path):
    """A real run: ids taken on the live database after the backup are not handed out by the restored one."""
    scratch = incident.database + "_scratch"
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{scratch}"')
    scratch_url = with_database(incident.url, scratch)
    subprocess.run([client_tools("embedded").path("pg_restore"), "--exit-on-error", f"--dbname={scratch}",
                    str(incident.backup)], check=True, capture_output=True, env=_libpq(incident.url))
    for url in (scratch_url, incident.url):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(TABLES)
            _take(conn, 5)
    backup = tmp_path / "with_sequences.dump"  # no manifest: dated by its mtime
    _dump(scratch_url, backup)
    before_the_migration(backup)
    with psycopg.connect(incident.url, autocommit=True) as conn:
        seen = _take(conn, 7)

    result = CliRunner().invoke(app, incident.run_args("--backup", str(backup), "--yes"))

    assert result.exit_code == 0, result.output
    with psycopg.connect(incident.url, autocommit=True) as conn:
        after = _take(conn, 3)
    assert not set(after) & set(seen), (after, seen)
    events = journal_events(incident)
    info = next(e for e in events if e["step"] == StepName.SEQUENCES and "before_rollback" in e["evidence"])
    assert {m["sequence"]: m["action"] for m in info["evidence"]["moves"] if m["action"] == "set"} == {
        "public.audit_id_seq": "set", "public.countdown": "set", "public.tickets_id_seq": "set"}
    order = [e["step"] for e in events if e["status"] == "ok"]
    assert order.index(StepName.SWAP_KEEP) < order.index(StepName.SEQUENCES) < order.index(StepName.SWAP_PROMOTE)
    run = json.loads(next(incident.reports.rglob("run.json")).read_text())
    assert run["rows_lost"]["tables"]["tickets"]["inserted"] == 7
    assert {m["sequence"] for m in run["sequences"]} == {"public.audit_id_seq", "public.countdown",
                                                       "public.tickets_id_seq"}
