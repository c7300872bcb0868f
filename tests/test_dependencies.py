"""Dependency probes (rollbacklib/dependencies.py) and their steps in 01 and 04, against real listeners on 127.0.0.1:
a tiny RESP server thread that checks the bytes it receives, a closed port, and the real PostgreSQL."""

from __future__ import annotations

import socket
import secrets
import textwrap
import threading
from pathlib import Path

import pytest

from rollbacklib import dependencies
from rollbacklib.config import load_config
from rollbacklib.errors import EXIT_ABORTED, ConfigError, StepError
from rollbacklib.journal import read_events
from rollbacklib.phases import dependency_probes
from rollbacklib.run import open_run, record_approval
from rollbacklib.steps import Phase, Plan, StepName, write_plan

MIGRATION = "20251202020032_update_user_schema_final"
URL_ENV = "ROLLBACK_TEST_DEPS_DATABASE_URL"
REDIS_PASSWORD_ENV = "ROLLBACK_TEST_DEPS_REDIS_PASSWORD"


class RespServer:
    """A Redis stand-in speaking RESP: records every command's raw bytes; AUTH checks the password."""

    def __init__(self, password: str | None = None):
        self.password = password
        self.received: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as reader:
                authed = self.password is None
                while True:
                    args, raw = _read_command(reader)
                    if args is None:
                        break
                    self.received.append(raw)
                    if args[0].upper() == b"AUTH":
                        authed = args[-1].decode() == self.password
                        conn.sendall(b"+OK\r\n" if authed else b"-WRONGPASS invalid username-password pair\r\n")
                    elif args[0].upper() == b"PING":
                        conn.sendall(b"+PONG\r\n" if authed else b"-NOAUTH Authentication required.\r\n")
                    else:
                        conn.sendall(b"-ERR unknown command\r\n")

    def close(self) -> None:
        self.sock.close()


def _read_command(reader) -> tuple[list[bytes] | None, bytes]:
    """One RESP array of bulk strings, strictly as redis-cli sends it; None at the end of the connection."""
    head = reader.readline()
    if not head:
        return None, b""
    assert head.startswith(b"*") and head.endswith(b"\r\n"), head
    raw, args = head, []
    for _ in range(int(head[1:-2])):
        size = reader.readline()
        assert size.startswith(b"$") and size.endswith(b"\r\n"), size
        data = reader.read(int(size[1:-2]) + 2)
        assert data.endswith(b"\r\n"), data
        raw += size + data
        args.append(data[:-2])
    return args, raw


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: nothing listens there


@pytest.fixture
def redis():
    made: list[RespServer] = []
    yield lambda **kw: made.append(RespServer(**kw)) or made[-1]
    for server in made:
        server.close()


def write_config(folder: Path, deps: str) -> Path:
    path = folder / "runbook.toml"
    path.write_text(textwrap.dedent(f"""
        [environments.deps]
        database_url_env = "{URL_ENV}"
        backup_dir = "backups"
        """) + textwrap.dedent(deps))
    return path


# --- the probes ------------------------------------------------------------------------------------

def test_redis_ping_and_auth_send_resp_and_read_pong(redis, monkeypatch):
    password = secrets.token_hex(8)
    monkeypatch.setenv(REDIS_PASSWORD_ENV, password)
    server = redis(password=password)
    dep = dependencies.Dependency(name="cache", kind="redis", host="127.0.0.1", port=server.port,
                                  password_env=REDIS_PASSWORD_ENV)
    row = dependencies.probe(dep)
    assert row["up"] is True and row["detail"] == "PONG" and row["target"] == f"127.0.0.1:{server.port}"
    assert server.received == [b"*2\r\n$4\r\nAUTH\r\n$16\r\n" + password.encode() + b"\r\n",
                               b"*1\r\n$4\r\nPING\r\n"]
    assert password not in dependencies.describe(dep) and REDIS_PASSWORD_ENV in dependencies.describe(dep)

    monkeypatch.setenv(REDIS_PASSWORD_ENV, "not-" + password)  # the wrong password: down, and the reply says why
    wrong = dependencies.probe(dep)
    assert wrong["up"] is False and "WRONGPASS" in wrong["detail"] and password not in str(wrong)


def test_redis_without_auth_is_down_when_the_server_wants_it(redis):
    server = redis(password="x" * 12)
    row = dependencies.probe(dependencies.Dependency(name="cache", kind="redis", host="127.0.0.1", port=server.port))
    assert row["up"] is False and "NOAUTH" in row["detail"]
    assert server.received == [b"*1\r\n$4\r\nPING\r\n"]


def test_tcp_and_a_closed_port(redis):
    server = redis()
    up = dependencies.probe(dependencies.Dependency(name="svc", kind="tcp", host="127.0.0.1", port=server.port))
    port = _closed_port()
    down = dependencies.probe(dependencies.Dependency(name="gone", kind="tcp", host="127.0.0.1", port=port,
                                                      timeout_seconds=1))
    assert up["up"] is True and down["up"] is False and "ConnectionRefusedError" in down["detail"]
    redis_down = dependencies.probe(dependencies.Dependency(name="cache", kind="redis", host="127.0.0.1", port=port))
    assert redis_down["up"] is False


def test_a_database_dependency_by_env_var_name(fresh_db, monkeypatch):
    monkeypatch.setenv("ROLLBACK_TEST_DEPS_OTHER_URL", fresh_db)
    dep = dependencies.Dependency(name="other", kind="database", url_env="ROLLBACK_TEST_DEPS_OTHER_URL")
    assert dependencies.probe(dep)["detail"] == "SELECT 1 answered 1"
    monkeypatch.delenv("ROLLBACK_TEST_DEPS_OTHER_URL")
    with pytest.raises(ConfigError, match="ROLLBACK_TEST_DEPS_OTHER_URL"):
        dependencies.probe(dep)


def test_bad_declarations_are_refused(tmp_path):
    for bad in ('kind = "redis"', 'kind = "tcp"\nhost = "h"\nport = 1\npassword_env = "X"',
                'kind = "redis"\nhost = "h"\nport = 1\npassword_env = "redis://u:p@h"'):
        path = write_config(tmp_path, f"[[environments.deps.dependencies]]\nname = \"d\"\n{bad}\n")
        with pytest.raises(ConfigError):
            load_config(path)


# --- the steps -------------------------------------------------------------------------------------

def _deps(redis_port: int, closed: int, *, required: bool) -> str:
    return f"""
        [[environments.deps.dependencies]]
        name = "cache"
        kind = "redis"
        host = "127.0.0.1"
        port = {redis_port}

        [[environments.deps.dependencies]]
        name = "mail-relay"
        kind = "tcp"
        host = "127.0.0.1"
        port = {closed}
        timeout_seconds = 1
        required = {"true" if required else "false"}
        """


def test_phase_01_reports_a_dependency_down_and_goes_on_when_not_required(redis, fresh_db, tmp_path, monkeypatch):
    monkeypatch.setenv(URL_ENV, fresh_db)
    config = write_config(tmp_path, _deps(redis().port, _closed_port(), required=False))
    ctx = open_run(migration_id=MIGRATION, environment="deps", config_path=str(config),
                   reports_dir=str(tmp_path / "reports"), phase=Phase.PREPARE)
    step = dependency_probes.before_step(ctx)
    assert [a.target for a in step.actions] == ["database", "cache", "mail-relay"]
    assert "PING to redis" in step.actions[1].text and "not required" in step.actions[2].text

    frame = dependency_probes.check_dependencies(ctx)
    assert dict(zip(frame["name"], frame["up"])) == {"database": True, "cache": True, "mail-relay": False}
    events = [e for e in read_events(ctx.run_dir) if e["step"] == StepName.DEPENDENCIES]
    down = [e for e in events if "is DOWN" in e["message"]]
    assert len(down) == 1 and "mail-relay" in down[0]["message"] and "not required" in down[0]["message"]
    assert events[-1]["status"] == "ok"
    assert fresh_db not in (ctx.run_dir / "journal.jsonl").read_text()


def test_phase_01_aborts_with_exit_3_when_a_required_one_is_down(redis, fresh_db, tmp_path, monkeypatch):
    monkeypatch.setenv(URL_ENV, fresh_db)
    config = write_config(tmp_path, _deps(redis().port, _closed_port(), required=True))
    ctx = open_run(migration_id=MIGRATION, environment="deps", config_path=str(config),
                   reports_dir=str(tmp_path / "reports"), phase=Phase.PREPARE)
    with pytest.raises(StepError) as caught:
        dependency_probes.check_dependencies(ctx)
    err = caught.value
    assert err.exit_code == EXIT_ABORTED and "mail-relay" in err.message and "Nothing was changed" in err.message
    assert "required = false" in err.next_action
    failed = [e for e in read_events(ctx.run_dir) if e["step"] == StepName.DEPENDENCIES and e["status"] == "aborted"]
    assert failed, [e["status"] for e in read_events(ctx.run_dir)]


def test_phase_04_fails_with_l1_when_a_required_one_is_down(redis, fresh_db, tmp_path, monkeypatch):
    monkeypatch.setenv(URL_ENV, fresh_db)
    server = redis()
    closed = _closed_port()
    config = write_config(tmp_path, _deps(server.port, closed, required=True))
    ctx = open_run(migration_id=MIGRATION, environment="deps", config_path=str(config),
                   reports_dir=str(tmp_path / "reports"), phase=Phase.RESTORE_SERVICE)
    plan = Plan([dependency_probes.after_step(ctx)])
    write_plan(ctx.run_dir, plan)
    ctx.update(plan_digest=plan.digest)
    ctx.mark_step(StepName.START_SERVICES, "ok")
    record_approval(ctx.run_dir, MIGRATION, "test", plan.digest)
    with pytest.raises(StepError) as caught:
        dependency_probes.check_dependencies_after(ctx)
    assert caught.value.escalate == "L1" and "rollback stands" in caught.value.message

    # the relay comes back: the step passes, its postcondition read from the listeners now
    with socket.socket() as relay:
        relay.bind(("127.0.0.1", closed))
        relay.listen()
        frame = dependency_probes.check_dependencies_after(ctx)
    assert frame["up"].all()
    assert read_events(ctx.run_dir)[-1]["status"] == "ok"
