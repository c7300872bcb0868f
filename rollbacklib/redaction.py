"""Secret-free evidence: which values are secret, and masking them wherever papermill and Jupyter write.

Secrets travel by the NAME of an environment variable only (the config's ``*_env`` keys):

* ``refuse_credentials`` refuses a notebook parameter whose value looks like a credential
  (papermill writes parameters into the executed notebook and its metadata), naming the
  parameter, never its value, and saying how to pass it by env var name instead;
* ``config_secrets`` is every value the config's env vars hold, in each form it could be
  written in (the URL, its password as written and percent-decoded, as libpq quotes it);
* the runner writes each executed notebook through ``masked_output`` (a papermill I/O handler
  that masks every write, autosaves included) and ``scrub_file`` passes over it once more when
  papermill is done; the same pass seals notebooks saved by JupyterLab and the HTML report;
* ``mask_in_kernel`` (called by ``run.open_run``) masks every message the kernel sends (streams,
  displays, tracebacks, replies), so what reaches JupyterLab's screen and its saved notebooks is
  masked too.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Mapping

from rollbacklib.errors import ConfigError
from rollbacklib.journal import read_events

MASK = "***"
MIN_SECRET = 4  # shorter values are not masked (they would mask ordinary text): ``journal.redact``'s rule


# --- which values are secret -----------------------------------------------------------------

def secret_env_names(config) -> list[str]:
    """The environment variables the config names for secrets: every ``*_env`` key, at any depth."""
    from pydantic import BaseModel

    names: list[str] = []

    def walk(value, key: str = "") -> None:
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name), name)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and key.endswith("_env") and value not in names:
            names.append(value)

    walk(config)
    return names


def config_secrets(config) -> list[str]:
    """Every secret value the config's env vars hold now, in every form it could be written in."""
    found: list[str] = []
    for name in secret_env_names(config):
        for form in secret_forms(os.environ.get(name, "")):
            if form not in found:
                found.append(form)
    return sorted(found, key=len, reverse=True)


def secret_forms(value: str) -> list[str]:
    """``value`` and the passwords in it as written, percent-decoded and as libpq quotes them
    (``postgres.urls.secrets_in``), leaving out those too short to mask. Never raises."""
    from rollbacklib.postgres.urls import secrets_in

    if not value:
        return []
    if "-----BEGIN" in value:  # a key (the audit's signing key): whole, JSON-escaped, and each line of its body
        lines = [line.strip() for line in value.strip().splitlines()]
        body = [line for line in lines if line and not line.startswith("-----")]
        forms = [value, value.strip(), json.dumps(value)[1:-1], json.dumps(value.strip())[1:-1], "".join(body), *body]
        return [s for s in dict.fromkeys(forms) if len(s) >= MIN_SECRET]
    return [s for s in secrets_in(value) if len(s) >= MIN_SECRET]


def run_secrets(run_dir: Path) -> list[str]:
    """The secrets of a run, from the config its journal names (for writers outside a phase: the report)."""
    from rollbacklib.config import load_config

    for event in read_events(run_dir):
        config = event.get("evidence", {}).get("config") if isinstance(event.get("evidence"), dict) else None
        if config:
            try:
                return config_secrets(load_config(config))
            except Exception:  # noqa: BLE001 - a moved config: nothing more is known
                return []
    return []


# --- parameters: names and IDs, never values -------------------------------------------------

_CREDENTIALS = (
    ("a URL with a password", re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/+[^\s/@:]*:[^\s@]+@")),  # :/ once a path
    ("a connection string with password=", re.compile(r"(?i)(?:^|[\s?&;])(?:ssl)?password\s*=")),
    ("a Slack token", re.compile(r"\bxox[abposre]-[A-Za-z0-9-]{6,}")),
    ("a bearer token", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{6,}")),
    ("a JSON Web Token", re.compile(r"\beyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}")),
    ("a GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})")),
    ("an AWS access key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("an API key", re.compile(r"\bsk-[A-Za-z0-9_-]{20,}")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
)
_TOKEN = re.compile(r"[A-Za-z0-9+_=-]{32,}")
_HEX = re.compile(r"^[0-9a-fA-F]{32,}$")


def looks_like_credential(value: str) -> str | None:
    """What ``value`` looks like if it looks like a credential (``None`` if it does not)."""
    for what, pattern in _CREDENTIALS:
        if pattern.search(value):
            return what
    for segment in re.split(r"[\s/\\.,;:@'\"]+", value):
        for token in _TOKEN.findall(segment):
            if _HEX.match(token):
                return "a long hex string (a key or a token)"
            if _random_looking(token.rstrip("=")):
                return "a long random string (a key or a token)"
    return None


def _random_looking(token: str) -> bool:
    """Base64-like and high in entropy, unlike names and paths (``ProductionBackup2025December``)."""
    if not (re.search(r"[a-z]", token) and re.search(r"[A-Z]", token) and re.search(r"[0-9]", token)):
        return False
    counts = {c: token.count(c) for c in set(token)}
    entropy = -sum(n / len(token) * math.log2(n / len(token)) for n in counts.values())
    kinds = ["u" if c.isupper() else "l" if c.islower() else "d" if c.isdigit() else "o" for c in token]
    switches = sum(1 for a, b in zip(kinds, kinds[1:]) if a != b) / (len(token) - 1)
    return entropy >= 4.2 and switches >= 0.3


def refuse_credentials(parameters: Mapping[str, object], *, where: str = "notebook parameter") -> None:
    """Raise ConfigError (exit 2) if a parameter's value looks like a credential. Never quotes the value."""
    for name, value in parameters.items():
        if not isinstance(value, str) or not value:
            continue
        what = looks_like_credential(value)
        if what:
            raise ConfigError(
                f"The {where} {name!r} looks like a credential ({what}), so it was refused and nothing ran: "
                "papermill writes parameters, values included, into the executed notebook and its metadata.",
                next_action=(
                    "pass secrets by the NAME of an environment variable, never as a value: export it in the "
                    "shell that runs the runbook (export PRODUCTION_DATABASE_URL='postgresql://...') and name "
                    "the variable in runbook.toml (database_url_env = \"PRODUCTION_DATABASE_URL\"); "
                    f"{name} takes a name, an ID or a path."),
                step="config")


# --- masking files ---------------------------------------------------------------------------

def _usable(secrets: Iterable[str]) -> list[str]:
    return sorted({s for s in secrets if s and len(s) >= MIN_SECRET}, key=len, reverse=True)


def mask_text(text: str, secrets: Iterable[str]) -> str:
    for secret in _usable(secrets):
        text = text.replace(secret, MASK)
    return text


def mask_tree(value, secrets: Iterable[str]):
    """``value`` with every secret masked in each string it holds (keys too); other values untouched."""
    secrets = _usable(secrets)
    if not secrets:
        return value

    def walk(v):
        if isinstance(v, str):
            return mask_text(v, secrets)
        if isinstance(v, dict):
            return {walk(k) if isinstance(k, str) else k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(walk(x) for x in v)
        return v

    return walk(value)


def mask_notebook_json(text: str, secrets: Iterable[str]) -> str:
    """A notebook's JSON with every secret masked in every string (sources, outputs, tracebacks, metadata)."""
    secrets = _usable(secrets)
    if not any(_written(secret, text) for secret in secrets):
        return text  # the common case, papermill saving after every cell: no walk of the whole notebook
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return mask_text(text, secrets)
    masked = mask_tree(data, secrets)
    if masked == data:
        return text
    return json.dumps(masked, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _written(secret: str, text: str) -> bool:
    """Could a JSON string in ``text`` hold ``secret``? A printable ASCII secret without quote or backslash has one
    way to be written in JSON (``/`` may be escaped); any other may be escaped in several: look string by string."""
    if not secret.isascii() or not secret.isprintable() or '"' in secret or "\\" in secret:
        return True
    return re.search(re.escape(secret).replace("/", r"\\?/"), text) is not None


#: Documents people read, written by papermill, Jupyter, nbconvert: masked before they are sealed.
#: Files the library writes and reads back (``plan.json`` with its digest, ``state.json``, ``capture/``)
#: are never rewritten: nothing secret goes into them (the journal's ``redact`` sees every event).
MASKED_SUFFIXES = (".ipynb", ".html", ".md")


def scrub_file(path: Path, secrets: Iterable[str]) -> bool:
    """Mask every secret in the document at ``path`` (a notebook string by string); True if it changed.

    Only documents (``MASKED_SUFFIXES``) are rewritten; any other file is left as it is.
    """
    from rollbacklib.files import atomic_write_text

    secrets = _usable(secrets)
    path = Path(path)
    if not secrets or not path.is_file() or path.suffix not in MASKED_SUFFIXES:
        return False
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return False
    masked = mask_notebook_json(text, secrets) if path.suffix == ".ipynb" else mask_text(text, secrets)
    if masked == text:
        return False
    atomic_write_text(path, masked)
    return True


# --- papermill: every write of the output notebook is masked ---------------------------------

SCHEME = "rollbacklib-masked://"
_masked_paths: dict[str, list[str]] = {}
_lock = threading.Lock()


class _MaskingHandler:
    """A papermill I/O handler for ``rollbacklib-masked:///path``: the local file, masked on every write."""

    @staticmethod
    def _local(path: str) -> str:
        return path[len(SCHEME):]

    def read(self, path):
        with open(self._local(path), encoding="utf-8") as fh:
            return fh.read()

    def write(self, buf, path):
        from rollbacklib.files import atomic_write_text

        local = self._local(path)
        with _lock:
            secrets = _masked_paths.get(local, [])
        buf = buf.replace(f'"{SCHEME}', '"')  # the metadata's output_path: the file, not this handler
        # Atomic but not fsynced: papermill saves after every cell; the runner makes the last save durable.
        atomic_write_text(Path(local), mask_notebook_json(buf, secrets), durable=False)

    def listdir(self, path):
        return os.listdir(self._local(path))

    def pretty_path(self, path):
        return self._local(path)


def _register() -> None:
    from papermill.iorw import papermill_io

    if not any(scheme == SCHEME for scheme, _ in papermill_io._handlers):
        papermill_io.register(SCHEME, _MaskingHandler())


@contextmanager
def masked_output(path: Path, secrets: Iterable[str]):
    """The output path to give papermill so that every save of ``path`` (autosaves too) is masked."""
    _register()
    local = str(Path(path).resolve())
    with _lock:
        _masked_paths[local] = _usable(secrets)
    try:
        yield SCHEME + local
    finally:
        with _lock:
            _masked_paths.pop(local, None)


# --- the kernel: tracebacks, streams and displays masked where they are made ------------------

_kernel_secrets: set[str] = set()


def mask_in_kernel(secrets: Iterable[str]) -> bool:
    """Mask ``secrets`` in what this IPython kernel shows and sends: error tracebacks (``evalue``,
    every traceback line), stdout and stderr, displayed data and replies. A no-op outside IPython.
    """
    _kernel_secrets.update(_usable(secrets))
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with ipykernel
        return False
    shell = get_ipython()
    if shell is None:
        return False
    if getattr(shell, "_rollbacklib_masked", False):
        return True
    original_traceback = shell._showtraceback

    def _showtraceback(etype, evalue, stb):
        return original_traceback(etype, mask_text(str(evalue), _kernel_secrets),
                                  [mask_text(line, _kernel_secrets) for line in stb])

    shell._showtraceback = _showtraceback
    sessions = {id(x): x for x in (getattr(getattr(shell, "kernel", None), "session", None),
                                   getattr(sys.stdout, "session", None), getattr(sys.stderr, "session", None),
                                   getattr(getattr(shell, "display_pub", None), "session", None),
                                   getattr(getattr(shell, "displayhook", None), "session", None)) if x is not None}
    for session in sessions.values():
        _mask_session(session)
    shell._rollbacklib_masked = True
    return True


def _mask_session(session) -> None:
    """Mask every message the kernel sends (streams, displays, errors, replies) at its one way out.

    IPython re-wraps ``sys.stdout.write`` for each cell and ipykernel flushes streams from another
    thread; ``Session.send`` is where every output, from any thread, passes once.
    """
    original = session.send

    def send(stream, msg_or_type, content=None, *args, **kwargs):
        if _kernel_secrets:
            if isinstance(msg_or_type, dict):
                msg_or_type = {**msg_or_type, "content": mask_tree(msg_or_type.get("content"), _kernel_secrets)}
            if content is not None:
                content = mask_tree(content, _kernel_secrets)
        return original(stream, msg_or_type, content, *args, **kwargs)

    session.send = send
