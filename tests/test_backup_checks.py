"""Every backup check rejects its bad backup, and the database is left exactly as it was."""

from __future__ import annotations

import gzip
import json
import shutil
from datetime import datetime, timedelta

import pytest
from typer.testing import CliRunner

from rollbacklib.postgres import identity
from rollbacklib.postgres.backup import manifest_path
from rollbacklib.cli import app

from conftest import before_the_migration, journal_events, plain_gz, server_snapshot, with_manifest_change

runner = CliRunner()


def missing(incident, tmp_path):
    return tmp_path / "no_such_backup.dump"


def truncated_plain_sql(incident, tmp_path):
    return before_the_migration(plain_gz(incident.backup, tmp_path, keep_end=False))


def corrupt_gzip(incident, tmp_path):
    path = plain_gz(incident.backup, tmp_path)
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return before_the_migration(path)


def unreadable_archive(incident, tmp_path):
    path = tmp_path / incident.backup.name
    data = bytearray(incident.backup.read_bytes())
    data[:5] = b"NOPE!"  # the custom format's magic is PGDMP
    path.write_bytes(bytes(data))
    shutil.copy(manifest_path(incident.backup), manifest_path(path))
    return path


def too_old(incident, tmp_path):
    def age(m):
        m["taken_at"] = (datetime.fromisoformat(m["taken_at"]) - timedelta(hours=2)).isoformat()
    return with_manifest_change(incident.backup, tmp_path, age)


def sha256_mismatch(incident, tmp_path):
    return with_manifest_change(incident.backup, tmp_path, lambda m: m.update(sha256="0" * 64))


def too_small(incident, tmp_path):
    config = tmp_path / "runbook.toml"
    text = incident.config.read_text().replace("min_backup_bytes = 1024", "min_backup_bytes = 1073741824")
    config.write_text(text.replace('"scenarios/', f'"{incident.config.resolve().parent}/scenarios/'))
    incident.config = config
    return incident.backup


@pytest.mark.parametrize("make_bad_backup, failing_check", [
    (missing, "present"),
    (truncated_plain_sql, "archive readable"),
    (corrupt_gzip, "archive readable"),
    (unreadable_archive, "archive readable"),
    (too_small, "size over minimum"),
    (too_old, "age under limit"),
    (sha256_mismatch, "sha256 equals manifest"),
])
def test_bad_backup_aborts_with_nothing_changed(incident, tmp_path, make_bad_backup, failing_check):
    bad = make_bad_backup(incident, tmp_path)
    before = server_snapshot(incident)

    result = runner.invoke(app, incident.run_args("--backup", str(bad), "--yes"))

    assert result.exit_code == 3, result.output
    assert server_snapshot(incident) == before
    run = json.loads(next(incident.reports.rglob("run.json")).read_text())
    assert run["status"] == "aborted" and run["changes_made"] is False
    assert run["error"]["phase"] == "01_prepare" and run["error"]["step"] == "verify-backup"
    assert failing_check in run["error"]["message"]
    assert "ABORT ROLLBACK: nothing was changed" in run["error"]["next_action"]
    assert [p["name"] for p in run["phases"]] == ["01_prepare"]


def test_the_plans_plain_gzip_backup_is_accepted_end_to_end(incident, tmp_path):
    plain = before_the_migration(plain_gz(incident.backup, tmp_path))

    result = runner.invoke(app, incident.run_args("--backup", str(plain), "--yes"))

    assert result.exit_code == 0, result.output
    run = json.loads(next(incident.reports.rglob("run.json")).read_text())
    assert run["validation"]["passed"] is True
    assert run["backup"]["format"] == "plain-gzip" and run["backup"]["has_manifest"] is False
    # No manifest: phase 01 says which identity checks it cannot make and why; phase 02 checks the history.
    events = journal_events(incident)
    skipped = [e["message"] for e in events if e["step"] == "verify-backup" and e["status"] == "skipped"]
    assert [m.split(":")[0] for m in skipped] == [identity.DATABASE_CHECK, identity.SERVER_CHECK,
                                                  identity.HISTORY_CHECK]
    assert all("not checked: no manifest beside this plain-gzip backup" in m for m in skipped)
    assert "phase 02 checks the restored copy's _prisma_migrations" in skipped[2]
    assert f"- verify-backup: {identity.DATABASE_CHECK}: not checked: no manifest" in result.output
    restored = next(e for e in events if e["step"] == "validate-copy" and "checks" in e["evidence"])
    history = next(c for c in restored["evidence"]["checks"] if c["name"] == identity.RESTORED_HISTORY_CHECK)
    assert history["passed"] is True and not history["skipped"]


def test_a_backup_with_a_failing_statement_aborts_and_drops_its_copy(incident, tmp_path):
    """It passes every file check; only restoring it shows the fault. The live database is never touched."""
    good = gzip.decompress(plain_gz(incident.backup, tmp_path).read_bytes())
    marker = b"CREATE TABLE public.users"
    bad_sql = good.replace(marker, b"SELECT 1/0;\n" + marker, 1)
    assert bad_sql != good
    bad = tmp_path / "backup_prod_pre_migration_failing.sql.gz"
    bad.write_bytes(gzip.compress(bad_sql))
    before_the_migration(bad)
    before = server_snapshot(incident)

    result = runner.invoke(app, incident.run_args("--backup", str(bad), "--yes"))

    assert result.exit_code == 3, result.output
    assert server_snapshot(incident) == before  # the half-restored copy was dropped again
    run = json.loads(next(incident.reports.rglob("run.json")).read_text())
    assert run["error"]["phase"] == "02_execute" and run["error"]["step"] == "restore"
    assert "division by zero" in run["error"]["message"]
    assert "the live database was not touched" in run["error"]["message"]
