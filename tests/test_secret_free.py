"""Secret-free evidence, proven: no secret the config names reaches any file of a run or the terminal.

The password is really used (the server asks for it: scram-sha-256 for the test's role), and
runs that fail after it was used are checked too: a wrong password, a password with a bad
percent-encoding, a cell whose exception message quotes the whole URL, and a cell handing the
URL to libpq, whose error quotes the password as written (``invalid percent-encoded token``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import quote

import nbformat
import psycopg
import pytest
from nbclient import NotebookClient
from papermill.iorw import load_notebook_node, papermill_io
from papermill.parameterize import parameterize_notebook
from psycopg.conninfo import conninfo_to_dict
from typer.testing import CliRunner

from rollbacklib.cli import app
from rollbacklib.config import load_config
from rollbacklib.errors import ConfigError
from rollbacklib.redaction import (looks_like_credential, mask_notebook_json, masked_output, scrub_file,
                                   secret_env_names, secret_forms)
from rollbacklib.resources import notebooks_dir
from rollbacklib.run import open_run

from conftest import CONFIG, DRILL_URL_ENV, MIGRATION

runner = CliRunner()


# --- what is refused as a parameter ----------------------------------------------------------

# Assembled at run time: a token-shaped literal in the tree reads as a leaked secret to scanners.
SLACK_PREFIX = "xo" + "x"


CREDENTIAL_SHAPED = [
    ("postgresql://app:s3cret@db.internal:5432/prod", "a URL with a password"),
    ("postgres://user:pass@localhost/automation_platform_prod", "a URL with a password"),
    ("https://admin:hunter22@status.example.com/api", "a URL with a password"),
    ("host=db.internal user=app password=s3cret dbname=prod", "a connection string with password="),
    ("dbname=prod password = 'x y'", "a connection string with password="),
    (SLACK_PREFIX + "b-" + "-".join(("1" * 10, "2" * 10, "Marker" * 4)), "a Slack token"),
    (SLACK_PREFIX + "p-12345-67890-abcdef", "a Slack token"),
    ("Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "a bearer token"),
    ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc", "a JSON Web Token"),
    ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "a GitHub token"),
    ("AKIAIOSFODNN7EXAMPLE", "an AWS access key"),
    ("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "a long hex string"),
    ("/tmp/backups/Tqc16BGE-WJIpq9c2fvot3Olpfu7UHTlDZzXDiBSsT0.dump", "a long random string"),
    ("P6avR+CjkLbdogP4QOVBEFCJpqSGSgwe4Kh+V2dEzs==", "a long random string"),
]


# ids by what each value is: a test id holding the value would put it in .pytest_cache's node ids
@pytest.mark.parametrize("value, what", CREDENTIAL_SHAPED,
                         ids=[f"{n}-{what.replace(' ', '-')}" for n, (_, what) in enumerate(CREDENTIAL_SHAPED)])
def test_a_value_that_looks_like_a_credential_is_recognised(value, what):
    assert looks_like_credential(value).startswith(what)


@pytest.mark.parametrize("value", [
    MIGRATION, "20251202020032_AddPasswordHashToUsersTable", "production", "staging-eu", "20251202T0300Z",
    "incident-2025-12-02-users-table-rollback", "/home/Ops/Rollbacks2025/ProductionDatabaseBackup2025December/reports",
    "/srv/backups/production/automation_platform_prod_20251202T020000Z.dump", "runbook.toml",
    "postgresql://app@db.internal:5432/prod", "PRODUCTION_DATABASE_URL", "",
])
def test_names_ids_and_paths_pass(value):
    assert looks_like_credential(value) is None


@pytest.mark.parametrize("option, parameter", [("--config", "config_path"), ("--reports-dir", "reports_dir"),
                                               ("--backup", "backup")])
def test_the_run_refuses_a_credential_as_a_parameter_before_anything_runs(option, parameter, tmp_path, monkeypatch):
    monkeypatch.setenv(DRILL_URL_ENV, "postgresql://nobody@/nowhere")
    marker = "Refused-Pw-7731"
    options = {"--config": str(CONFIG), "--reports-dir": str(tmp_path), option: f"postgresql://app:{marker}@db/prod"}
    result = runner.invoke(app, ["run", "--env", "drill", "-m", MIGRATION, *(x for kv in options.items() for x in kv),
                                 "--yes"])
    assert result.exit_code == 2, result.output
    assert f"{parameter}' looks like a credential (a URL with a password)" in result.output
    assert "NAME of an environment variable" in result.output and "database_url_env" in result.output
    assert marker not in result.output
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing ran, nothing was written


def test_open_run_refuses_a_credential_too(tmp_path, monkeypatch):
    """A notebook run by hand under plain papermill stops at its first cell."""
    monkeypatch.setenv(DRILL_URL_ENV, "postgresql://nobody@/nowhere")
    with pytest.raises(ConfigError, match="'approve' looks like a credential") as raised:
        open_run(migration_id=MIGRATION, environment="drill", config_path=str(CONFIG), reports_dir=str(tmp_path),
                 approve=SLACK_PREFIX + "b-1111-2222-SlackToken")
    assert "SlackToken" not in str(raised.value)


# --- the secrets' forms and the papermill writes ------------------------------------------------

def test_every_form_of_a_password_is_a_secret():
    forms = secret_forms("postgresql://app:p%2Fw%40rd's@db/prod?sslpassword=k3y-pass")
    assert {"p%2Fw%40rd's", "p/w@rd's", "p/w@rd\\'s", "k3y-pass"} <= set(forms)
    assert "pa%zzss-bad" in secret_forms("postgresql://app:pa%zzss-bad@db/prod")  # libpq would refuse to parse it
    assert "s3cr et" in secret_forms("host=db password='s3cr et' dbname=prod")


def test_every_save_papermill_makes_is_masked(tmp_path):
    secret = "Autosave-Secret-99"
    path = tmp_path / "out.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=f"connected with {secret}\n")])])
    with masked_output(path, [secret]) as target:
        papermill_io.write(nbformat.writes(nb), target)  # what papermill's autosave and final save call
        assert secret not in path.read_text() and "connected with ***" in path.read_text()
    text = json.dumps({"a": [f'he said "{secret}"']})
    assert secret not in mask_notebook_json(text, [secret])


def test_documents_are_masked_and_files_the_library_reads_back_are_left_alone(tmp_path):
    secret = "swap-Secret-1"
    for name in ("report.html", "postmortem.md", "plan.json", "state.json"):
        (tmp_path / name).write_text(f"strategy {secret}\n")
    assert scrub_file(tmp_path / "report.html", [secret]) and scrub_file(tmp_path / "postmortem.md", [secret])
    assert (tmp_path / "report.html").read_text() == "strategy ***\n"
    assert not scrub_file(tmp_path / "plan.json", [secret])  # its digest must still hold
    assert (tmp_path / "plan.json").read_text() == f"strategy {secret}\n"


# --- runs with every secret set to markers --------------------------------------------------------

@pytest.fixture
def password_role(incident, pg_server):
    """A superuser role the server really asks a password of, and a URL with a marker password for it."""
    role = f"secretive_{incident.database}"
    password = f"Mk-{incident.database}/pw@!"  # '/' and '@' make the URL carry it percent-encoded
    hba = Path(pg_server.pgdata) / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"local all {role} scram-sha-256\nhost all {role} all scram-sha-256\n" + original)
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        admin.execute("SET password_encryption = 'scram-sha-256'")
        admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'")
        admin.execute("SELECT pg_reload_conf()")
    socket = conninfo_to_dict(incident.url)["host"]
    url = f"postgresql://{role}:{quote(password, safe='')}@/{incident.database}?host={socket}"
    yield role, password, url
    hba.write_text(original)
    with psycopg.connect(incident.admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_reload_conf()")


def _set_every_secret(monkeypatch, url: str) -> list[str]:
    """The database URL, and a unique marker in every other env var the config names."""
    markers = []
    for name in secret_env_names(load_config(CONFIG)):
        if name == DRILL_URL_ENV:
            monkeypatch.setenv(name, url)
        else:
            value = SLACK_PREFIX + f"b-Marker-{name}-5150"  # Slack's shape, built at run time
            monkeypatch.setenv(name, value)
            markers.append(value)
    return markers


def _assert_nowhere(incident, output: str, markers: list[str]) -> list[Path]:
    files = [p for p in incident.reports.rglob("*") if p.is_file()]
    for marker in markers:
        assert marker not in output, f"{marker!r} reached the terminal"
        for path in files:
            assert marker.encode() not in path.read_bytes(), f"{marker!r} leaked into {path}"
    return files


def test_a_run_with_every_secret_set_to_markers_leaves_none_anywhere(incident, password_role, monkeypatch):
    role, password, url = password_role
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(url.replace(quote(password, safe=""), "wrong"))  # the server really checks it
    markers = [password, quote(password, safe=""), url] + _set_every_secret(monkeypatch, url)

    result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--yes"))

    assert result.exit_code == 0, result.output
    files = _assert_nowhere(incident, result.output, markers)
    names = {p.name for p in files}
    assert {"journal.jsonl", "run.json", "state.json", "plan.json", "05_close.ipynb"} <= names
    run_dir = next(incident.reports.rglob("run.json")).parent
    assert runner.invoke(app, ["verify-audit", str(run_dir)]).exit_code == 0


def _use_password(monkeypatch, url: str, password: str, instead: str) -> tuple[str, list[str]]:
    """Set the URL with ``instead`` for the password, and every other secret; return it and the markers."""
    bad_url = url.replace(quote(password, safe=""), instead)
    return bad_url, [instead, bad_url] + _set_every_secret(monkeypatch, bad_url)


@pytest.mark.parametrize("instead", ["Wrong-Pw-Marker-", "Bad%zzPercent-"])
def test_a_wrong_or_badly_encoded_password_fails_the_run_and_leaks_nothing(incident, password_role, monkeypatch,
                                                                          instead):
    role, password, url = password_role
    _, markers = _use_password(monkeypatch, url, password, instead + incident.database)

    result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--yes"))

    assert result.exit_code == 3, result.output
    assert "password authentication failed" in result.output
    _assert_nowhere(incident, result.output, markers)


def test_libpq_quoting_the_password_in_its_error_is_masked(incident, password_role, monkeypatch, tmp_path):
    """libpq's own URI parser quotes a bad percent-encoded password: a cell that hands it the URL."""
    role, password, url = password_role
    raw = "Bad%zzPercent-" + incident.database
    bad_url, markers = _use_password(monkeypatch, url, password, raw)
    with pytest.raises(psycopg.ProgrammingError, match=f'invalid percent-encoded token: "{raw}"'):
        conninfo_to_dict(bad_url)
    cell = f"import os, psycopg\npsycopg.connect(os.environ[{DRILL_URL_ENV!r}])"
    monkeypatch.setenv("ROLLBACK_NOTEBOOKS", str(_notebooks_with_a_cell(tmp_path, cell)))

    result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--yes"))

    assert result.exit_code == 3, result.output
    assert 'invalid percent-encoded token: "***"' in result.output
    files = _assert_nowhere(incident, result.output, markers)
    notebook = next(p for p in files if p.name == "01_prepare.ipynb").read_text()
    assert 'invalid percent-encoded token: \\"***\\"' in notebook


QUOTE_THE_URL = (f"import os\nurl = os.environ[{DRILL_URL_ENV!r}]\nprint('using', url)\n"
                 "raise RuntimeError(f'could not use {url}')")


def _notebooks_with_a_cell(tmp_path: Path, source: str = QUOTE_THE_URL) -> Path:
    """The packaged notebooks, with a cell added to 01_prepare after it opened the run (by default one
    that prints the URL and raises with it)."""
    folder = tmp_path / "notebooks"
    shutil.copytree(notebooks_dir(), folder)
    nb = nbformat.read(folder / "01_prepare.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "open_run" in c.source) + 1
    nb.cells.insert(at, nbformat.v4.new_code_cell(source))
    nbformat.write(nb, folder / "01_prepare.ipynb")
    return folder


def test_a_traceback_that_quotes_the_url_is_masked(incident, password_role, monkeypatch, tmp_path):
    role, password, url = password_role
    markers = [password, quote(password, safe=""), url] + _set_every_secret(monkeypatch, url)
    monkeypatch.setenv("ROLLBACK_NOTEBOOKS", str(_notebooks_with_a_cell(tmp_path)))

    result = runner.invoke(app, incident.run_args("--backup", str(incident.backup), "--yes"))

    assert result.exit_code == 3, result.output
    assert "RuntimeError: could not use ***" in result.output
    files = _assert_nowhere(incident, result.output, markers)
    executed = nbformat.read(next(p for p in files if p.name == "01_prepare.ipynb"), as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert any(o.output_type == "error" and o.evalue == "could not use ***" for o in outputs)
    assert any(o.output_type == "stream" and "using ***" in o.text for o in outputs)


def test_the_kernel_masks_before_anything_is_written(incident, password_role, monkeypatch, tmp_path):
    """No runner, no post-processing: what the kernel sends (to JupyterLab too) is masked already."""
    role, password, url = password_role
    markers = [password, quote(password, safe=""), url] + _set_every_secret(monkeypatch, url)
    source = _notebooks_with_a_cell(tmp_path) / "01_prepare.ipynb"
    nb = parameterize_notebook(load_notebook_node(str(source)), {
        "migration_id": MIGRATION, "environment": "drill", "config_path": str(incident.config),
        "reports_dir": str(incident.reports), "run_id": "in-kernel", "backup": str(incident.backup)})
    NotebookClient(nb, kernel_name="python3", allow_errors=True, timeout=300,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = nbformat.writes(nb)
    assert "could not use ***" in shown and "using ***" in shown
    for marker in markers:
        assert marker not in shown
