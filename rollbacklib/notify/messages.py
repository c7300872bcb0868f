"""The texts, after the seed's templates (its "Comunicación" steps 1.1, 5.1 and 5.2), filled from the run.

What is only known later (the measured RTO, the audit chain's head) is written as a ``<placeholder>`` when the
plan is rendered in phase 01, and filled from the journal and the state when the message is sent.
"""

from __future__ import annotations

import getpass
import os
import socket

from rollbacklib.notify.base import Message

PUBLIC_INITIATED = "We are investigating issues with the service. A rollback is in progress."
PUBLIC_NOT_RESOLVED = "The rollback did not complete as planned: we are still working on it."
PUBLIC_RESOLVED = "Rollback completed successfully. All systems operational. We apologize for the inconvenience."


def started_by() -> str:
    """Who or what started the run: the user and host, and the tool that runs it."""
    from rollbacklib import frontends

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} ({frontends.current()})"


def initiated(migration_id: str, environment: str, reason: str, run_id: str, by: str) -> Message:
    text = (f"🚨 PRODUCTION ROLLBACK INITIATED - Migration {migration_id} - Reason: {reason}\n"
            f"Environment: {environment} · run {run_id} · started by {by}")
    return Message("initiated", f"Production rollback initiated - {migration_id} ({environment})", text,
                   public=PUBLIC_INITIATED, status="investigating")


def completed(migration_id: str, environment: str, *, duration: str, status: str, next_steps: str, head: str,
              verify: str, outcome: str = "succeeded") -> Message:
    """The seed's completion (step 5.2), or, for a run that did not succeed, how it ended (``outcome``)."""
    succeeded = outcome == "succeeded"
    title = "✅ ROLLBACK COMPLETED SUCCESSFULLY" if succeeded else f"⚠️ ROLLBACK {outcome.upper()}"
    text = (f"{title}\nMigration: {migration_id}\nEnvironment: {environment}\nDuration: {duration}\n"
            f"Current Status: {status}\nNext Steps: {next_steps}\nAudit chain head: {head}\nVerify: {verify}")
    subject = ("Production Rollback Completed - Systems Operational" if succeeded
               else f"Production Rollback {outcome.title()} - {migration_id} ({environment})")
    return Message("completed", subject, text, public=PUBLIC_RESOLVED if succeeded else PUBLIC_NOT_RESOLVED,
                   status="resolved" if succeeded else "identified")


def escalation(level: str, who: str, reach: str, migration_id: str, environment: str, run_id: str, step: str,
               reason: str, next_action: str) -> Message:
    contact = f"{who}" + (f" ({reach})" if reach else "")
    text = (f"🆘 ESCALATION {level}: {contact}\nRollback of {migration_id} ({environment}, run {run_id}), "
            f"step {step}: {reason}\nNext: {next_action}")
    return Message("escalation", f"Rollback escalation {level} - {migration_id} ({environment})", text, level=level)
