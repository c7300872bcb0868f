"""Signed chain heads: what a writer of the run folder without the key cannot forge.

With ``audit.signing_key_env`` in ``runbook.toml`` (the NAME of an env var holding an Ed25519
private key in PEM; ``rollback audit keygen`` makes a pair), the runner signs the journal's
head at every phase end and when the run closes: a ``head`` event holds the head (the sha256
of the line before it), its number and the signature, and ``run.json``'s ``audit`` holds the
signature of the head it was computed at. ``rollback verify-audit --public-key FILE`` checks
every signature. Without a key the ``head`` events are written all the same (unsigned).

Each ``head`` event also goes to the system log (``logger -t rollbacklib``): a place that
writing the run folder cannot rewrite. It is best effort: a missing ``logger`` is noted in the
event, never a failure.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

from rollbacklib.errors import ConfigError
from rollbacklib.journal import GENESIS, JOURNAL_NAME, Journal, line_hash, read_events
from rollbacklib.outcome import HEAD

ALGORITHM = "ed25519"
SYSLOG_TAG = "rollbacklib"


def chain_head(run_dir: Path) -> dict:
    """The hash of the journal's last line and how many events it holds: what anchors the chain."""
    import json

    path = Path(run_dir) / JOURNAL_NAME
    lines = [line for line in path.read_bytes().split(b"\n") if line.strip()] if path.exists() else []
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(event, dict):
            events.append(event)
    head = line_hash(lines[-1]) if lines else GENESIS
    return {"algorithm": "sha256", "head": head, "events": len(events),
            "seq": events[-1].get("seq") if events else 0,
            "verify": f"rollback verify-audit {Path(run_dir)} --head {head}"}


def message(head: str, seq: int, run_id: str) -> bytes:
    """What is signed: the head, its event number and the run, so a signature cannot be moved to another run."""
    return f"rollbacklib-head:{run_id}:{seq}:{head}".encode()


def _config_of(run_dir: Path):
    from rollbacklib.config import load_config

    for event in read_events(run_dir):
        config = event.get("evidence", {}).get("config") if isinstance(event.get("evidence"), dict) else None
        if config:
            try:
                return load_config(config)
            except Exception:  # noqa: BLE001 - a moved config: no key is known
                return None
    return None


def private_key(run_dir: Path, config=None):
    """The run's signing key from the env var its config names; None when the config names none.

    A variable named but unset or unreadable is a ConfigError: a run meant to be signed is never
    silently unsigned.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    config = config or _config_of(Path(run_dir))
    name = config.audit.signing_key_env if config is not None else None
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"audit.signing_key_env names {name}, which is not set.",
                          next_action=f"export {name}=\"$(cat signing-key.pem)\" (make one with `rollback audit "
                                      "keygen`), or remove audit.signing_key_env from the config.", step="audit")
    try:
        key = load_pem_private_key(value.encode(), password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{name} does not hold an Ed25519 private key in PEM.",
                          next_action="make a pair with `rollback audit keygen` and export the private one.",
                          step="audit")
    return key


def key_id(public_key) -> str:
    """A short fingerprint of a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def sign(key, head: str, seq: int, run_id: str) -> dict:
    return {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()),
            "signature": base64.b64encode(key.sign(message(head, seq, run_id))).decode()}


def signed_head(run_dir: Path) -> dict:
    """The chain head now, with its signature when the run has a signing key (``run.json``'s ``audit``)."""
    run_dir = Path(run_dir)
    head = chain_head(run_dir)
    key = private_key(run_dir)
    if key is not None:
        head["signature"] = sign(key, head["head"], head["seq"], run_dir.name)
    return head


def record_head(run_dir: Path, why: str, *, phase: str = "run", secrets=None) -> dict:
    """Sign the journal's head (when there is a key), send it to the system log, and journal it as a ``head`` event.

    Returns the chain head after that event: the one to keep with the incident.
    """
    from rollbacklib import redaction

    run_dir = Path(run_dir)
    secrets = redaction.run_secrets(run_dir) if secrets is None else list(secrets)
    try:
        head, unsigned = signed_head(run_dir), None
    except ConfigError as err:  # the key named but unset or unreadable: the head is journaled unsigned, and says why
        head, unsigned = chain_head(run_dir), f"{err.message} Next: {err.next_action}"
    syslog = to_syslog(f"run {run_dir.name} ({why}): chain head {head['head']} at event #{head['seq']}")
    extra = {"signature": head["signature"]} if "signature" in head else {}
    if unsigned:
        extra["not_signed"] = unsigned
    Journal(run_dir / JOURNAL_NAME, secrets=secrets).record(
        phase, HEAD, "info", f"chain head {head['head'][:12]} at event #{head['seq']} ({why})", head=head["head"],
        head_seq=head["seq"], reason=why, syslog=syslog, **extra)
    return chain_head(run_dir)


def to_syslog(text: str) -> str:
    """Send ``text`` to the system log with ``logger``; say what happened (never raises)."""
    logger = shutil.which("logger")
    if logger is None:
        return "not sent: no `logger` on this machine"
    try:
        done = subprocess.run([logger, "-t", SYSLOG_TAG, text], capture_output=True, timeout=5, text=True)
    except (OSError, subprocess.SubprocessError) as err:
        return f"not sent: {type(err).__name__}"
    return "sent" if done.returncode == 0 else f"not sent: logger exited {done.returncode}"


def keygen(out_dir: Path, name: str = "rollback-audit") -> tuple[Path, Path]:
    """Write a new Ed25519 pair: ``<name>.key.pem`` (private, mode 600) and ``<name>.pub.pem`` in ``out_dir``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption, PrivateFormat,
                                                              PublicFormat)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    private, public = out_dir / f"{name}.key.pem", out_dir / f"{name}.pub.pem"
    for path in (private, public):
        if path.exists():
            raise ConfigError(f"{path} already exists.", next_action="choose another --out folder or --name; a key "
                              "is never overwritten.", step="audit")
    key = Ed25519PrivateKey.generate()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return private, public


def load_public_key(path: Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is not a readable PEM public key ({type(err).__name__}).",
                          next_action="pass the .pub.pem that `rollback audit keygen` wrote.", step="audit") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key.",
                          next_action="pass the .pub.pem that `rollback audit keygen` wrote.", step="audit")
    return key


def check(public_key, head: str, seq: int, run_id: str, signature: dict) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(base64.b64decode(signature["signature"]), message(head, seq, run_id))
    except (InvalidSignature, KeyError, TypeError, ValueError):
        return False
    return True
