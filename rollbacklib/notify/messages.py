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
PUBLIC_WINDOW_OPEN = ("We have identified the issue and are applying the fix now: the service will be briefly "
                      "unavailable while it is applied.")
PUBLIC_WINDOW_CLOSED = "The fix has been applied and the service is restored. We are monitoring the results."
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


def window_open(migration_id: str, environment: str, run_id: str) -> Message:
    """The services are about to stop: the status page says the fix is being applied (``identified``)."""
    text = (f"⏸️ OUTAGE WINDOW OPENING - Migration {migration_id} - the rollback is being applied; the services "
            f"stop now and are briefly unavailable\nEnvironment: {environment} · run {run_id}")
    return Message("window-open", f"Rollback applying, services briefly unavailable - {migration_id} ({environment})",
                   text, public=PUBLIC_WINDOW_OPEN, status="identified")


def window_closed(migration_id: str, environment: str, run_id: str) -> Message:
    """The services are back and passed their smoke tests: the status page says restored, monitoring."""
    text = (f"▶️ SERVICE RESTORED - Migration {migration_id} - the services are back and passed their smoke tests; "
            f"monitoring until the rollback closes\nEnvironment: {environment} · run {run_id}")
    return Message("window-closed", f"Service restored, monitoring - {migration_id} ({environment})", text,
                   public=PUBLIC_WINDOW_CLOSED, status="monitoring")


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
