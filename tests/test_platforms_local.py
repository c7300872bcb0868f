"""Compose against a fake ``docker`` on PATH that records its argv; manual acknowledgements; the
platform settings in runbook.toml, validated, with tokens by env var name only and redacted."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import stat
import sys
import textwrap

import pytest

from rollbacklib.config import Service, load_config
from rollbacklib.errors import ConfigError, StepError
from rollbacklib.journal import redact
from rollbacklib.platform_settings import ComposeSettings
from rollbacklib.platforms import platform_for
from rollbacklib.platforms.base import Unsupported
from rollbacklib.redaction import config_secrets, secret_env_names

GATEWAY = Service(name="api-gateway", replicas=2)

FAKE_DOCKER = """\
#!{python}
import json, os, sys
folder = os.environ["FAKE_DOCKER_DIR"]
with open(os.path.join(folder, "argv.jsonl"), "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
state = os.path.join(folder, "running")
args = sys.argv[1:]
if "up" in args:
    svc, n = args[args.index("--scale") + 1].split("=")
    if os.environ.get("FAKE_DOCKER_STUCK") != "1":
        open(state, "w").write(n)
elif "stop" in args:
    open(state, "w").write("0")
elif "ps" in args:
    n = int(open(state).read()) if os.path.exists(state) else 0
    print("\\n".join(f"c{{i}}" for i in range(n)))
elif "logs" in args:
    print("api-gateway-1  | listening")
"""


@pytest.fixture
def docker(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text(FAKE_DOCKER.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_DIR", str(tmp_path))
    return tmp_path


class Env:
    def __init__(self, settings):
        self.name, self.platform, self.service_platform = "test", settings, settings.kind


def compose(tmp_path, **extra):
    return platform_for(Env(ComposeSettings(kind="compose", project="autoplat", files=[tmp_path / "compose.yml"],
                                            services={"api-gateway": {"service": "gateway"}}, poll_seconds=0.05,
                                            **extra)))


def calls(folder) -> list[list[str]]:
    return [json.loads(line) for line in (folder / "argv.jsonl").read_text().splitlines()]


def test_compose_runs_the_argv_it_describes_and_reads_back(docker, tmp_path):
    platform = compose(tmp_path)
    base = ["compose", "-p", "autoplat", "-f", str(tmp_path / "compose.yml")]
    up = platform.describe(GATEWAY, 2)
    assert up.argv == ("docker", *base, "up", "-d", "--no-recreate", "--scale", "gateway=2", "gateway")
    assert up.text.startswith(shlex.join(up.argv))
    evidence = platform.scale(GATEWAY, 2)
    assert evidence["replicas_before"] == 0 and evidence["replicas"] == 2 and evidence["argv"] == list(up.argv)
    ps = [*base, "ps", "--status", "running", "-q", "gateway"]
    assert calls(docker) == [ps, list(up.argv[1:]), ps]
    down = platform.describe(GATEWAY, 0)
    assert down.argv == ("docker", *base, "stop", "gateway")
    assert platform.scale(GATEWAY, 0)["replicas"] == 0 and calls(docker)[-2] == list(down.argv[1:])
    assert platform.logs(GATEWAY, 5) == ["api-gateway-1  | listening"]
    assert calls(docker)[-1] == [*base, "logs", "--no-color", "--tail", "5", "gateway"]
    with pytest.raises(Unsupported, match="no way to deploy a given release"):
        platform.redeploy(GATEWAY, "gw:1.4.2")


def test_compose_that_never_reaches_the_count_escalates(docker, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_STUCK", "1")
    with pytest.raises(StepError) as err:
        compose(tmp_path, timeout_seconds=0.3).scale(GATEWAY, 2)
    assert err.value.escalate == "L1" and "2 running container(s)" in err.value.message


def test_compose_without_docker_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StepError, match="docker is not installed or not on PATH"):
        compose(tmp_path).scale(GATEWAY, 0)


# --- manual ---------------------------------------------------------------------------------------

def test_manual_acknowledgement_from_a_file_typed_or_missing(tmp_path):
    acks = tmp_path / "acks.json"
    acks.write_text(json.dumps({"api-gateway:scale=0": {"by": "dana", "at": "2026-12-02T02:10:00Z"}}))
    from_file = platform_for("manual", acknowledgements=acks, ask=None)
    assert "api-gateway:scale=0" in from_file.describe(GATEWAY, 0).text
    evidence = from_file.scale(GATEWAY, 0)
    assert evidence["acknowledged_by"] == "dana" and evidence["source"] == str(acks)

    asked = []
    typed = platform_for("manual", ask=lambda prompt: asked.append(prompt) or "  lee ")
    assert typed.maintenance(GATEWAY, True)["acknowledged_by"] == "lee" and "maintenance mode on" in asked[0]

    with pytest.raises(StepError) as err:  # headless, and the file does not hold this task
        from_file.scale(GATEWAY, 2)
    assert "api-gateway:scale=2" in err.value.message and str(acks) in err.value.next_action

    def no_terminal(prompt):
        raise EOFError
    with pytest.raises(StepError, match="Nobody acknowledged"):
        platform_for("manual", ask=no_terminal).scale(GATEWAY, 0)
    with pytest.raises(StepError, match="Nobody acknowledged"):
        platform_for("manual", ask=lambda prompt: "").scale(GATEWAY, 0)


# --- settings in runbook.toml ---------------------------------------------------------------------

BASE = """\
[environments.production]
database_url_env = "PRODUCTION_DATABASE_URL"
backup_dir = "backups"
services = [{ name = "api-gateway", replicas = 2 }, { name = "reports-client", replicas = 1 }]
"""


def write(tmp_path, text: str):
    path = tmp_path / "runbook.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_railway_settings_validate_and_their_token_is_a_secret(tmp_path, monkeypatch):
    path = write(tmp_path, BASE + """\
[environments.production.platform]
kind = "railway"
token_env = "ROLLBACK_TEST_RAILWAY_TOKEN"
environment_id = "env-1"
timeout_seconds = 120
services.api-gateway = { service_id = "svc-1" }
services.reports-client = { service_id = "svc-2" }
""")
    config = load_config(path)
    env = config.environment("production")
    assert env.service_platform == "railway" and env.platform.services["reports-client"].service_id == "svc-2"
    assert "ROLLBACK_TEST_RAILWAY_TOKEN" in secret_env_names(config)
    token = "tok-" + secrets.token_hex(12)
    monkeypatch.setenv("ROLLBACK_TEST_RAILWAY_TOKEN", token)
    assert token in config_secrets(config)
    assert token not in redact(f"Authorization: Bearer {token}", config_secrets(config))
    assert token not in platform_for(env).describe(env.services[0], 0).text
    monkeypatch.delenv("ROLLBACK_TEST_RAILWAY_TOKEN")
    with pytest.raises(ConfigError, match="ROLLBACK_TEST_RAILWAY_TOKEN is not set"):
        platform_for(env).replicas(env.services[0])


@pytest.mark.parametrize("platform, problem", [
    ('kind = "railway"\ntoken_env = "T"\nenvironment_id = "e"\nservices.api-gateway = { service_id = "s" }',
     "no entry for reports-client"),
    ('kind = "railway"\ntoken_env = "NAME=value"\nenvironment_id = "e"\nservices = {}', "NAME of an environment"),
    ('kind = "kubernetes"\nserver = "https://k"\ntoken_env = "T"\nsurprise = 1', "surprise"),
    ('kind = "heroku"', "heroku"),
])
def test_bad_platform_settings_are_config_errors(tmp_path, platform, problem):
    with pytest.raises(ConfigError, match=problem):
        load_config(write(tmp_path, BASE + "[environments.production.platform]\n" + platform + "\n"))


def test_kind_and_service_platform_must_agree_and_settings_are_required(tmp_path):
    with pytest.raises(ConfigError, match="service_platform = 'compose' but platform.kind = 'manual'"):
        load_config(write(tmp_path, BASE.replace('backup_dir = "backups"', 'backup_dir = "backups"\n'
                                                 'service_platform = "compose"')
                          + '[environments.production.platform]\nkind = "manual"\n'))
    env = load_config(write(tmp_path, BASE.replace('backup_dir = "backups"', 'backup_dir = "backups"\n'
                                                   'service_platform = "kubernetes"'))).environment("production")
    with pytest.raises(ConfigError, match=r"\[environments.production.platform\]"):
        platform_for(env)


def test_process_paths_resolve_against_the_config_folder(tmp_path):
    env = load_config(write(tmp_path, BASE.replace(', { name = "reports-client", replicas = 1 }', "") + """\
[environments.production.platform]
kind = "process"
services.api-gateway = { command = ["{python}", "gw.py"], pid_file = "run/gw.pid", port = 8080 }
""")).environment("production")
    assert env.platform.services["api-gateway"].pid_file == tmp_path / "run" / "gw.pid"
    assert platform_for(env).describe(env.services[0], 1).argv == (sys.executable, "gw.py")


def test_the_shipped_configs_still_load_with_no_platform():
    from rollbacklib.resources import default_config
    from tests.conftest import CONFIG
    for path in (CONFIG, default_config()):
        for name, env in load_config(path).environments.items():
            assert load_config(path).environment(name).service_platform == "none"


def test_the_commented_platform_example_in_the_shipped_config_is_valid(tmp_path):
    from rollbacklib.resources import default_config
    text = default_config().read_text()
    start = text.index("# [environments.production.platform]")
    end = text.index("\n\n", start)
    example = "\n".join(line[2:] for line in text[start:end].splitlines())
    uncommented = text[:start] + example + text[end:]
    env = load_config(write(tmp_path, uncommented.replace('"scenarios/', f'"{default_config().parent}/scenarios/')
                            )).environment("production")
    assert env.service_platform == "railway" and env.platform.token_env == "RAILWAY_TOKEN"
    assert sorted(env.platform.services) == sorted(s.name for s in env.services)
