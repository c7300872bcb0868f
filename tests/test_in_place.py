"""Strategy in-place, the library: the restore into the live database is all or nothing, on both archive kinds."""

from __future__ import annotations

import csv

import gzip
import subprocess

import psycopg
import pytest

from rollbacklib.errors import StepError
from rollbacklib.postgres import database as db
from rollbacklib.postgres import in_place
from rollbacklib.postgres.client import client_tools, database_name

TOOLS = client_tools("embedded")

SCHEMA = """
CREATE TABLE users (id text PRIMARY KEY, email text NOT NULL, "passwordHash" text, "createdAt" timestamptz DEFAULT now());
CREATE TABLE orders (id bigserial PRIMARY KEY, "userId" text REFERENCES users(id), total numeric(10,2));
CREATE INDEX orders_user ON orders ("userId");
INSERT INTO users (id, email, "passwordHash") SELECT 'u' || i, 'u' || i || '@x.test', md5(i::text)
  FROM generate_series(1, 300) i;
INSERT INTO orders ("userId", total) SELECT 'u' || (1 + i % 300), i / 7.0 FROM generate_series(1, 900) i;
"""

AFTER_THE_BACKUP = """
ALTER TABLE users DROP COLUMN "passwordHash";
INSERT INTO users (id, email) VALUES ('late1', 'late1@x.test'), ('late2', 'late2@x.test');
UPDATE orders SET total = total + 1 WHERE id <= 10;
DELETE FROM orders WHERE id > 890;
CREATE TABLE notes (id serial PRIMARY KEY, body text);
"""


def _as_it_is(url: str) -> dict:
    """The catalog, every row of every table hashed, the sequences: what 'exactly as it was' is judged on."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [t for _s, t in db.user_tables(conn)]
        rows = {t: conn.execute(f'SELECT count(*), md5(coalesce(string_agg(x::text, \'|\' ORDER BY x::text), \'\')) '
                                f'FROM "{t}" x').fetchone() for t in tables}
        return {"fingerprint": db.schema_fingerprint(db.schema_catalog(conn)), "rows": rows,
                "sequences": conn.execute("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1").fetchall()}


def _dump(url: str, path, *args: str) -> None:
    subprocess.run([TOOLS.path("pg_dump"), *args, f"--file={path}", f"--dbname={url}"], check=True,
                   capture_output=True)


def _plain_gz(archive, path) -> None:
    script = subprocess.run([TOOLS.path("pg_restore"), "--clean", "--if-exists", "-f", "-", str(archive)],
                            check=True, capture_output=True).stdout
    path.write_bytes(gzip.compress(script))


def _restore(url: str, backup, admin_url: str) -> in_place.Outcome:
    name = database_name(url)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for statement in db.block_statements(name):
            admin.execute(statement)
        allow, block = (f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {v}' for v in ("true", "false"))
        return in_place.run(in_place.restore_command(backup, name, TOOLS), backup, url, admin, name,
                            app_name=f"rollbacklib-in-place-{name}", open_sql=allow, close_sql=block)


def _reopen(admin_url: str, url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database_name(url)}" WITH ALLOW_CONNECTIONS true')
        admin.execute(f'ALTER DATABASE "{database_name(url)}" WITH CONNECTION LIMIT -1')


@pytest.fixture
def staged(fresh_db, pg_server, tmp_path):
    """A database, a custom archive of it whose LAST statement fails on restore (a GRANT to a role dropped since),
    and writes made after the backup."""
    role = f"ghost_{database_name(fresh_db)}"
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(f'CREATE ROLE "{role}"')
        conn.execute(f'GRANT SELECT ON users TO "{role}"')
    archive = tmp_path / "bad.dump"
    _dump(fresh_db, archive, "-Fc")
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(f'REVOKE ALL ON users FROM "{role}"')
        conn.execute(f'DROP ROLE "{role}"')
        conn.execute(AFTER_THE_BACKUP)
    return fresh_db, archive, pg_server.url()


@pytest.mark.parametrize("kind", ["custom archive", "plain .sql.gz"])
def test_a_backup_whose_last_statement_fails_leaves_the_database_exactly_as_it_was(staged, tmp_path, kind):
    url, archive, admin_url = staged
    backup = archive
    if kind == "plain .sql.gz":
        backup = tmp_path / "bad.sql.gz"
        _plain_gz(archive, backup)
        assert in_place.plain_script_cleans(backup)
    script = subprocess.run([TOOLS.path("pg_restore"), "-f", "-", str(archive)], capture_output=True, text=True)
    statements = [s for s in script.stdout.splitlines() if s and not s.startswith(("--", "\\"))]
    assert statements[-1].startswith("GRANT SELECT ON TABLE public.users TO ghost_")  # the last one fails
    before = _as_it_is(url)

    with pytest.raises(StepError) as err:
        _restore(url, backup, admin_url)

    assert "does not exist" in err.value.message and "nothing was committed" in err.value.next_action
    _reopen(admin_url, url)
    assert _as_it_is(url) == before


def test_a_truncated_gzip_fails_on_the_decompressor_and_commits_nothing(staged, tmp_path):
    url, archive, admin_url = staged
    subprocess.run([TOOLS.path("pg_restore"), "--clean", "--if-exists", "--no-acl", "-f", str(tmp_path / "g.sql"),
                    str(archive)], check=True, capture_output=True)
    whole = gzip.compress((tmp_path / "g.sql").read_bytes())
    cut = tmp_path / "cut.sql.gz"
    cut.write_bytes(whole[: len(whole) * 3 // 4])  # the script goes on well past its COPY of users
    before = _as_it_is(url)

    with pytest.raises(StepError) as err:
        _restore(url, cut, admin_url)

    assert "gzip -dc" in err.value.message and "exited with 1" in err.value.message
    _reopen(admin_url, url)
    assert _as_it_is(url) == before


@pytest.mark.parametrize("kind", ["custom archive", "plain .sql.gz"])
def test_a_good_backup_restores_in_place(fresh_db, pg_server, tmp_path, kind):
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(SCHEMA)
    archive = tmp_path / "good.dump"
    _dump(fresh_db, archive, "-Fc")
    backup = archive
    if kind == "plain .sql.gz":
        backup = tmp_path / "good.sql.gz"
        _plain_gz(archive, backup)
    at_backup = _as_it_is(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(AFTER_THE_BACKUP)
    assert _as_it_is(fresh_db) != at_backup

    outcome = _restore(fresh_db, backup, pg_server.url())

    assert outcome.restore_pid and outcome.seconds > 0
    _reopen(pg_server.url(), fresh_db)
    now = _as_it_is(fresh_db)
    # every object of the backup is back as it was; a table made after the backup is not the archive's to drop
    assert now["rows"] == {**at_backup["rows"], "notes": (0, "d41d8cd98f00b204e9800998ecf8427e")}
    assert dict(now["sequences"]) == {**dict(at_backup["sequences"]), "notes_id_seq": None}


def test_a_plain_script_without_clean_is_named(fresh_db, tmp_path):
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(SCHEMA)
    path = tmp_path / "noclean.sql"
    _dump(fresh_db, path)
    assert not in_place.plain_script_cleans(path)
    assert in_place.describe(path, "x", TOOLS).endswith(f"< {path}")
    assert " | " in in_place.describe(tmp_path / "b.sql.gz", "x", TOOLS)


def test_room_for_a_safety_copy_is_read_from_the_server(fresh_db, pg_server):
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        room = in_place.room_for_copy(admin, database_name(fresh_db), 1.2)
    assert room.needed > 0 and room.fits is True and str(room.free) != "None"


# --- the steps, on a staged incident: phase 01 as it runs, then the in-place window ---------------

from conftest import CONFIG_HOME, MIGRATION, before_the_migration  # noqa: E402

from rollbacklib.phases import compare_rows, execute, in_place as steps  # noqa: E402
from rollbacklib.postgres import rowdiff  # noqa: E402
from rollbacklib.pipeline import run_phases  # noqa: E402
from rollbacklib.run import open_run  # noqa: E402
from rollbacklib.lost_rows import export_lost_rows  # noqa: E402
from rollbacklib.steps import Phase, Plan, StepName, read_plan, write_plan  # noqa: E402


def _in_place_run(incident, run_id: str, backup):
    """Phase 01 done; its plan's later phases replaced by the in-place window (what the strategy seam renders);
    approved."""
    result = run_phases(migration_id=MIGRATION, environment="drill", config_path=str(incident.config),
                        reports_dir=str(incident.reports), run_id=run_id, backup=str(backup), phases=(Phase.PREPARE,))
    assert result.summary["phases"][0]["status"] == "succeeded", result.summary["error"]
    ctx = open_run(migration_id=MIGRATION, environment="drill", config_path=str(incident.config), run_id=run_id,
                   reports_dir=str(incident.reports), phase=Phase.EXECUTE)
    with db.connect(ctx.admin_url) as admin:
        window = steps.plan_steps(ctx, execute.read_live_facts(ctx, admin), admin)
        safety = next(s for s in window if s.name == StepName.SAFETY_COPY)
        plan = Plan(read_plan(ctx.run_dir).for_phase(Phase.PREPARE) + [steps.gate_step(ctx)] + window
                    + [compare_rows.in_place_step(ctx, admin, safety_planned=bool(safety.actions))])
    write_plan(ctx.run_dir, plan)
    ctx.update(plan_digest=plan.digest)
    ctx.approve = MIGRATION  # what `approve` / --yes gives the gate
    assert steps.approve(ctx) == "approved (approve parameter)"
    return ctx, plan


# Written after the backup, on top of the scenario's own (5 users and 4 workflows inserted): rows the restore discards.
LATER_WRITES = """
UPDATE users SET name = 'renamed after the backup' WHERE id IN (SELECT id FROM users WHERE id NOT LIKE 'user_post_%'
                                                              ORDER BY id LIMIT 2);
DELETE FROM workflows WHERE id = (SELECT id FROM workflows WHERE id NOT LIKE 'wf_post_%' ORDER BY id LIMIT 1);
"""


def _sessions_ever(incident, database: str) -> int | None:
    """pg_stat_database.sessions, once it stops moving: every session ever opened on ``database``."""
    from rollbacklib.live import settled_session_count

    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        return settled_session_count(admin, database)


def test_the_in_place_steps_restore_validate_and_keep_a_safety_copy(incident):
    with psycopg.connect(incident.url, autocommit=True) as conn:
        conn.execute(LATER_WRITES)
    before = _as_it_is(incident.url)
    ctx, plan = _in_place_run(incident, "inplace", incident.backup)
    restore = plan.step(StepName.RESTORE_IN_PLACE)
    command = next(a for a in restore.actions if a.kind == "command")
    assert {"--clean", "--if-exists", "--single-transaction", "--exit-on-error"} <= set(command.argv)
    assert plan.step(StepName.SAFETY_COPY).actions[0].text.startswith("CREATE DATABASE ")
    safety = steps.safety_name(incident.database, "inplace")
    validate = plan.step(StepName.VALIDATE_IN_PLACE)  # the window reads the restored side only
    assert {a.target for a in validate.actions} == {incident.database} and "hashed by key" in validate.summary
    assert plan.step(StepName.COMPARE_ROWS).target == safety

    for act in (steps.block, steps.drain, steps.terminate, steps.take_safety_copy):
        act(ctx)
    taken = _sessions_ever(incident, safety)
    for act in (steps.restore_in_place, steps.validate_in_place, steps.reopen, steps.health):
        act(ctx)
    # the window never opened the safety copy: the server counted no session on it
    assert _sessions_ever(incident, safety) == taken == 0
    with psycopg.connect(incident.url, autocommit=True) as conn:  # production writes again: not the count's business
        conn.execute("UPDATE users SET name = 'written after the reopen' WHERE id = (SELECT max(id) FROM users)")
    compare_rows.compare_rows(ctx)

    assert _sessions_ever(incident, safety) == 1  # compare-rows' private session, after health
    lost = next(e for e in reversed(ctx.journal.events()) if "rows_lost" in e["evidence"])
    assert lost["step"] == StepName.COMPARE_ROWS and lost["evidence"]["kept"] == safety
    rows = lost["evidence"]["rows_lost"]
    assert (rows["total"], rows["inserted"], rows["updated"], rows["deleted"]) == (12, 9, 2, 1)
    assert {t: (d["inserted"], d["updated"], d["deleted"]) for t, d in rows["tables"].items() if d["lost"]} == {
        "users": (5, 2, 0), "workflows": (4, 0, 1)}
    health_at = next(i for i, e in enumerate(ctx.journal.events()) if e["step"] == StepName.HEALTH
                     and e["status"] == "ok")
    on_safety = [i for i, e in enumerate(ctx.journal.events()) if e["evidence"].get("target") == safety
                 and e["evidence"].get("kind") == "sql" and "ALLOW_CONNECTIONS true" in e["message"]]
    assert on_safety and min(on_safety) > health_at  # its private session is compare-rows', after the window

    with psycopg.connect(incident.url) as conn:
        names = [r[0] for r in conn.execute("SELECT migration_name FROM _prisma_migrations")]
        columns = [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns "
                                              "WHERE table_name = 'users'")]
    assert MIGRATION not in names and "passwordHash" in columns
    safety = steps.safety_name(incident.database, "inplace")
    statements = [s.as_string(None) for s in db.private_connection_statements(safety)]
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        with db.private_connection(admin, incident.url, safety, statements) as conn:
            kept = {"fingerprint": db.schema_fingerprint(db.schema_catalog(conn))}
            with psycopg.connect(incident.url) as restored:  # the old way, both sides read now: the same answer
                assert rowdiff.diff_databases(conn, restored)["tables"]["users"]["updated"] == 3
    assert kept["fingerprint"] == before["fingerprint"]  # the database as it was before the restore
    states = {e["step"]: e["status"] for e in ctx.journal.events() if e["status"] in ("ok", "failed")}
    assert all(states[s.name] == "ok" for s in plan.for_phase(Phase.EXECUTE))
    assert states[StepName.COMPARE_ROWS] == "ok"

    # `rollback lost-rows`: exactly the rows compare-rows counted, from the safety copy; the application's writes
    # since the reopen (a row updated above, a user inserted here) are not among them
    with psycopg.connect(incident.url, autocommit=True) as conn:
        conn.execute("INSERT INTO users SELECT (jsonb_populate_record(u, jsonb_build_object('id', 'user_after_reopen', "
                     "'email', 'after-reopen@example.com', 'authorizerId', NULL))).* FROM users u ORDER BY id LIMIT 1")
    sessions = _sessions_ever(incident, safety)
    exported = export_lost_rows(ctx.run_dir, incident.reports.parent / "lost")
    assert {e.table: e.rows for e in exported if e.rows} == {"users": {"inserted": 5, "updated": 2},
                                                              "workflows": {"inserted": 4, "deleted": 1}}
    with open(next(e.path for e in exported if e.table == "users"), newline="") as fh:
        ids = [row["id"] for row in csv.DictReader(fh)]
    assert "user_after_reopen" not in ids and len(ids) == 7
    assert _sessions_ever(incident, safety) == sessions + 1  # the export's private session; closed again
    with psycopg.connect(incident.admin_url) as admin:
        assert admin.execute("SELECT datallowconn, datconnlimit FROM pg_database WHERE datname = %s",
                             (safety,)).fetchone() == (False, 0)


def test_the_in_place_step_with_a_failing_last_statement_changes_nothing(incident, tmp_path):
    scratch = incident.database + "_scratch"
    role = f"ghost_{incident.database}"
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{scratch}"')
    subprocess.run([TOOLS.path("pg_restore"), "--exit-on-error", f"--dbname={scratch}", str(incident.backup)],
                   check=True, capture_output=True, env=_env(incident.url))
    scratch_url = incident.url.replace(f"/{incident.database}?", f"/{scratch}?")
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}"')
        conn.execute(f'GRANT SELECT ON users TO "{role}"')
    backup = tmp_path / "grant_fails.dump"
    _dump(scratch_url, backup, "-Fc")
    before_the_migration(backup)
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute(f'REVOKE ALL ON users FROM "{role}"')
        conn.execute(f'DROP ROLE "{role}"')
    before = _as_it_is(incident.url)
    ctx, plan = _in_place_run(incident, "inplace-fails", backup)
    for act in (steps.block, steps.drain, steps.terminate, steps.take_safety_copy):
        act(ctx)

    with pytest.raises(StepError) as err:
        steps.restore_in_place(ctx)

    assert "is exactly as it was" in err.value.message and f'"{role}" does not exist' in err.value.message
    assert "ALLOW_CONNECTIONS true" in err.value.next_action  # the way back: reopen it
    _reopen(incident.admin_url, incident.url)
    assert _as_it_is(incident.url) == before


def _env(url: str) -> dict:
    from rollbacklib.postgres.client import libpq_env

    return libpq_env(url)


def test_a_restore_that_cannot_connect_fails_and_leaves_the_database_closed(fresh_db, pg_server, tmp_path):
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(SCHEMA)
    archive = tmp_path / "good.dump"
    _dump(fresh_db, archive, "-Fc")
    name = database_name(fresh_db)
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        for statement in db.block_statements(name):
            admin.execute(statement)
        with pytest.raises(StepError) as err:  # a database name the server does not have: pg_restore cannot connect
            in_place.run(in_place.restore_command(archive, name + "_missing", TOOLS), archive, fresh_db, admin,
                         name, app_name="rollbacklib-in-place-missing", open_sql=f'ALTER DATABASE "{name}" WITH '
                         "ALLOW_CONNECTIONS true", close_sql=f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        allow = admin.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (name,)).fetchone()[0]
    assert "pg_restore exited with 1" in err.value.message and allow is False


def test_without_a_safety_copy_the_rows_lost_are_not_measured_and_nothing_is_hashed(incident, tmp_path):
    text = incident.config.read_text().replace('in_place_safety_copy = "auto"', 'in_place_safety_copy = "never"')
    incident.config = tmp_path / "runbook.toml"
    incident.config.write_text(text.replace('"scenarios/', f'"{CONFIG_HOME}/scenarios/'))
    ctx, plan = _in_place_run(incident, "nosafety", incident.backup)
    assert not plan.step(StepName.COMPARE_ROWS).actions and "NOT measured" in plan.step(StepName.COMPARE_ROWS).summary
    assert "hashed" not in plan.step(StepName.VALIDATE_IN_PLACE).summary

    for act in (steps.block, steps.drain, steps.terminate, steps.take_safety_copy, steps.restore_in_place,
                steps.validate_in_place, steps.reopen, steps.health, compare_rows.compare_rows):
        act(ctx)

    lost = [e for e in ctx.journal.events() if "rows_lost" in e["evidence"]]
    assert [(e["step"], e["evidence"]["rows_lost"]) for e in lost] == [(StepName.COMPARE_ROWS, None)]
    assert "not measured" in lost[0]["message"] and not (ctx.run_dir / rowdiff.SNAPSHOT_FOLDER).exists()
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        assert admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                             (steps.safety_name(incident.database, "nosafety"),)).fetchone()[0] == 0


def test_hashes_not_the_ones_validate_in_place_took_are_not_compared(incident):
    ctx, plan = _in_place_run(incident, "tampered", incident.backup)
    for act in (steps.block, steps.drain, steps.terminate, steps.take_safety_copy, steps.restore_in_place,
                steps.validate_in_place, steps.reopen, steps.health):
        act(ctx)
    index = ctx.run_dir / rowdiff.SNAPSHOT_FOLDER / rowdiff.SNAPSHOT_INDEX
    index.write_text(index.read_text().replace('"rows": ', '"rows":  '))  # edited after it was journaled

    compare_rows.compare_rows(ctx)  # a measurement that cannot be made does not fail the run

    lost = next(e for e in reversed(ctx.journal.events()) if "rows_lost" in e["evidence"])
    assert lost["evidence"]["rows_lost"] is None and "is not the one validate-in-place wrote" in lost["message"]
    safety = steps.safety_name(incident.database, "tampered")
    assert _sessions_ever(incident, safety) == 0  # not opened for a comparison it would not make
