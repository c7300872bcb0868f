"""One exception base for the runbook.

Every error carries the step it happened in, what was expected and what was found, and a
message that says what to do next. The exit code tells the outcome apart:

    2  bad usage or config            (ConfigError)
    3  aborted safely, nothing changed (AbortedError)
    4  refused by a gate or a lock     (RefusedError)
    5  failed after changes began      (FailedError: a person must act)

Lower layers (client programs, catalog reads, renames) raise ``StepError``, which says what
went wrong but not what it means for the run. The step dispatcher (``rollbacklib.steps``)
decides: aborted (exit 3) when no change was made yet in the run, failed (exit 5) after one.
It applies the same rule to every error but ``ConfigError`` and ``RefusedError``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_REFUSED = 4
EXIT_FAILED = 5

ESCALATION = {
    "L1": "On-Call Engineer",
    "L2": "Lead Engineer",
    "L3": "DevOps Lead",
    "L4": "CTO",
    "L5": "CEO + Legal",
}


class RollbackError(Exception):
    """Base of every error the runbook raises on purpose."""

    exit_code = EXIT_FAILED
    outcome = "failed"

    def __init__(
        self,
        message: str,
        *,
        next_action: str,
        step: str | None = None,
        expected: object = None,
        found: object = None,
        escalate: str | None = None,
    ):
        self.message = message
        self.next_action = next_action
        self.step = step
        self.expected = expected
        self.found = found
        self.escalate = escalate
        super().__init__(self.__str__())

    def __str__(self) -> str:
        lines = [self.message]
        if self.expected is not None or self.found is not None:
            lines.append(f"expected: {self.expected}; found: {self.found}")
        lines.append(f"Next: {self.next_action}")
        if self.escalate:
            who = getattr(self, "contact", None) or f"{self.escalate} ({ESCALATION.get(self.escalate, '?')})"
            lines.append(f"Escalate to {who}.")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "error": type(self).__name__,
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "message": self.message,
            "next_action": self.next_action,
            "step": self.step,
            "expected": self.expected,
            "found": self.found,
            "escalate": self.escalate,
            "contact": getattr(self, "contact", None),
        }


class ConfigError(RollbackError):
    """The config, a parameter or the command line is wrong; nothing was touched."""

    exit_code = EXIT_USAGE
    outcome = "bad-usage"


class AbortedError(RollbackError):
    """A check failed before any change was made; everything is as it was."""

    exit_code = EXIT_ABORTED
    outcome = "aborted"


class BackupCheckFailed(AbortedError):
    """The backup can not be trusted for a restore."""


class RefusedError(RollbackError):
    """A confirmation gate or a lock refused to go on; nothing was changed by this step."""

    exit_code = EXIT_REFUSED
    outcome = "refused"


class FailedError(RollbackError):
    """Something failed after changes began; the message names the state and the way forward."""

    exit_code = EXIT_FAILED
    outcome = "failed"


class ValidationFailed(FailedError):
    """The restored database does not match what the backup promised."""


class StepError(RollbackError):
    """A step could not do its work; the dispatcher decides whether that aborts or fails the run."""

    exit_code = EXIT_ABORTED
    outcome = "aborted"


def unexpected(err: Exception, step: str) -> RollbackError:
    """``err`` as the run reports it: a ``RollbackError`` as it is; anything else a ``StepError`` escalating to L1."""
    if isinstance(err, RollbackError):
        return err
    return StepError(f"{type(err).__name__}: {err}", next_action="read the traceback in the executed notebook; "
                     "escalate to L1.", step=step, escalate="L1")


OUTCOME_EXIT = {"aborted": EXIT_ABORTED, "failed": EXIT_FAILED, "refused": EXIT_REFUSED, "bad-usage": EXIT_USAGE}
