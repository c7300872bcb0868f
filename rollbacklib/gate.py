"""The confirmation gate at a terminal: what the approval lets happen, asked for only once it is shown.

``rollback run`` asks for the migration ID between phase 01 and phase 02. What a person typed
while phase 01 was still running was never an answer to that question: ``flush_typed_ahead``
drops it before the prompt (termios ``TCIFLUSH``). ``what_changes`` is the plan in one line:
the databases blocked and renamed, the sessions terminated, the services stopped.
"""

from __future__ import annotations

import re
import sys
from typing import Callable, TextIO

from rollbacklib.steps import Plan, StepName

_RENAME = re.compile(r'ALTER DATABASE (".+?") RENAME TO (".+?")')


def what_changes(plan: Plan) -> str:
    """One line: what the approved plan changes on the server and the platform."""
    names = {step.name: step for step in plan.steps}
    parts = []
    if StepName.BLOCK in names:
        parts.append(f"{names[StepName.BLOCK].target} blocked to new connections")
    if StepName.TERMINATE in names:
        parts.append(f"the sessions still on {names[StepName.TERMINATE].target} terminated")
    renames = [f"{a} -> {b}" for step in plan.steps if step.name in (StepName.SWAP_KEEP, StepName.SWAP_PROMOTE)
               for action in step.actions for a, b in _RENAME.findall(action.text)]
    if renames:
        parts.append("renamed " + ", then ".join(renames))
    known = {StepName.BLOCK, StepName.TERMINATE, StepName.SWAP_KEEP, StepName.SWAP_PROMOTE, StepName.STOP_SERVICES,
             StepName.START_SERVICES, StepName.REOPEN, StepName.COMPARE_ROWS}
    parts += [step.summary for step in plan.steps if step.destructive and step.name not in known]  # other strategies'
    services = [a.text for a in names[StepName.STOP_SERVICES].actions] if StepName.STOP_SERVICES in names else []
    parts.append(f"{len(services)} service(s) stopped" if services else "no service stopped (none configured)")
    if StepName.SALVAGE_CARRY in names:
        parts.append("after the reopen, the rows written after the backup carried from the kept database into the "
                     "restored one (salvage; the count is shown before the window)")
    return "; ".join(parts) + "."


def flush_typed_ahead(stream: TextIO | None = None) -> bool:
    """Drop what was typed before the prompt; True when the stream is a terminal and it was flushed."""
    stream = stream or sys.stdin
    try:
        import termios

        if not stream.isatty():
            return False
        termios.tcflush(stream.fileno(), termios.TCIFLUSH)
    except (ImportError, OSError, ValueError):  # no termios (Windows), a closed or odd stream: nothing to drop
        return False
    return True


def ask_at_terminal(plan: Plan, environment: str, say: Callable[[str], None],
                    prompt: Callable[[str], str], protected: bool = False) -> str:
    """Show what the approval is for, drop input typed ahead, then ask for the migration ID (protected: the digest's
    first 12 characters)."""
    chosen = (plan.strategy or {}).get("chosen") or "swap"
    if chosen == "swap":
        say(f"Phase 01 checked the backup and captured the state. Next, phase 02 restores {environment} to the backup "
            f"by plan {plan.digest[:12]} (above; the live database is kept, never dropped).")
    else:
        say(f"Phase 01 checked the backup and captured the state. Next, strategy {chosen} acts on {environment} by "
            f"plan {plan.digest[:12]} (above).")
    say(f"It changes: {what_changes(plan)}")
    flush_typed_ahead()
    if protected:
        return prompt(f"Protected environment: type the first 12 characters of plan {plan.digest} to approve it, "
                      "anything else to stop")
    return prompt(f"Type the migration ID to approve plan {plan.digest[:12]}, anything else to stop")
