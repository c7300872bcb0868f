"""Protected environments (``protected = true``, production in the packaged config): approval bound to the digest.

In a protected environment a plan is approved only by its digest: ``rollback run --approve
DIGEST`` with the sha256 of the plan as it stands now (phase 01 renders it again, so a plan
that changed since it was read is refused, exit 4), or the digest's first 12 characters typed
at the gate (the terminal's or the notebook's). ``--yes`` (the migration ID as the answer) is
refused there before anything runs. Elsewhere the migration ID approves, as it always did, and
so does the digest.
"""

from __future__ import annotations

import re

from rollbacklib.errors import RefusedError

SHORT = 12
_DIGEST = re.compile(r"[0-9a-f]{64}")


def unless_digest(approve: str) -> str:
    """``approve`` for the credential check: a plan's sha256 is what it takes (no secret), so it is not checked."""
    return "" if isinstance(approve, str) and _DIGEST.fullmatch(approve) else approve


def expected_answer(env, migration_id: str, digest: str) -> str:
    """What must be typed at the gate."""
    return digest[:SHORT] if env.protected else migration_id


def answer_name(env) -> str:
    return f"the plan digest's first {SHORT} characters" if env.protected else "the migration ID"


def question(env, migration_id: str, digest: str) -> str:
    if env.protected:
        return (f"Protected environment {env.name}: type the plan digest's first {SHORT} characters "
                f"({digest[:SHORT]}) to approve it, anything else to stop")
    return f"Type the migration ID ({migration_id}) to go on, anything else to stop"


def advice(env, migration_id: str, digest: str) -> str:
    """How to approve in the tool in use; in a protected environment, with the plan's digest."""
    from rollbacklib import frontends

    if not env.protected:
        return frontends.approve_advice(migration_id)
    return (f"environment {env.name} is protected: set approve to the plan's digest {digest} (the parameters cell, "
            f"papermill's -p approve, rollback run --approve), or type its first {SHORT} characters ({digest[:SHORT]}) "
            "when the gate asks")


def approves(env, approve: str, migration_id: str, digest: str) -> bool:
    """Does the ``approve`` given (parameter, ``--approve``, ``--yes``) approve the plan with ``digest``?"""
    if not approve:
        return False
    if env.protected:
        return approve == digest
    return approve in (migration_id, digest)


def refuse_unbound_approval(env, approve: str, migration_id: str) -> None:
    """Before anything runs: in a protected environment only a digest approves (``--yes`` is refused, exit 4)."""
    if not env.protected or not approve:
        return
    if not _DIGEST.fullmatch(approve):
        what = "--yes (the migration ID)" if approve == migration_id else f"approve {approve!r}"
        raise RefusedError(
            f"Environment {env.name!r} is protected: {what} does not approve a plan there; only the plan's digest "
            "does. Nothing was run.",
            next_action=f"run `rollback run --env {env.name} -m {migration_id} --dry-run --run-id RUN`, read the plan "
            "and its sha256, then `rollback run --env {env} -m {m} --run-id RUN --approve SHA256`; or run without "
            f"--yes and type the digest's first {SHORT} characters at the gate.".replace("{env}", env.name)
            .replace("{m}", migration_id), step="gate", expected="the plan's sha256", found=what)
