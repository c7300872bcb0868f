"""After a failure in 04 or 05: does the database's rollback stand? Then there is no database way back to give.

``outcome.compute`` gives a failed run the way back the live catalog allows (``LiveView.way_back``).
Once the restored database serves under the live name and passed phase 03's validation, a failure
of the services (start-services, their health, a smoke test, a dependency) or of the close is not a
failure of the database's rollback: running that way back would undo a good rollback and bring
the broken migration back. So the run says the rollback stands and what to do about the services.

Read at the moment of asking, never from the records alone:

* the live catalog (``rollbacklib.live``): the live name serves, open; for ``swap`` it is the
  restored copy (by oid) that carried its validation's marker (``LiveView.copy_validated``);
  for the strategies that change the original in place it is the original, open again;
* the journal: the run's validation passed (``validation`` / ``validate-resolved`` evidence) and
  the failure is in 04_restore_service or 05_close.

When the catalog cannot be read, nothing is claimed: the way back stays as it was.
"""

from __future__ import annotations

from datetime import datetime, timezone

from rollbacklib.live import LiveView, Situation
from rollbacklib.steps import Phase

AFTER_THE_DATABASE = (Phase.RESTORE_SERVICE.value, Phase.CLOSE.value)


def database_rollback_stands(now: LiveView | None, error: dict | None, validation_passed: bool | None,
                             strategy: str | None) -> dict | None:
    """``{"line", "services", "database", "read_at"}`` when the rollback stands after a failure in 04/05; else None."""
    if error is None or error.get("phase") not in AFTER_THE_DATABASE or validation_passed is not True:
        return None
    if now is None or now.catalog is None or now.production_down:
        return None
    live = now.named(now.live)
    if live is None or not live.open:
        return None
    if now.situation is Situation.DONE:
        if not now.copy_validated:
            return None
        what = f"{now.live} is the restored copy (oid {live.oid}), open, validated in 03_validate"
    elif strategy not in (None, "swap") and now.situation is Situation.SERVING_ORIGINAL_AGAIN:
        what = f"{now.live} was rolled back in place ({strategy}), open, validated in 03_validate"
    else:
        return None
    read_at = datetime.now(timezone.utc).strftime("%H:%M:%S UTC")
    step = f"{error.get('phase')} / {error.get('step')}"
    todo = (error.get("evidence") or {}).get("next_action") or error.get("next_action") or ""
    return {
        "database": now.live,
        "read_at": read_at,
        "line": (f"The database rollback stands: {what} (read from the live catalog at {read_at}). No database way "
                 "back is given: running one would undo the rollback and bring the migration back."),
        "services": (f"What failed is after the database: {step}. Fix the services, not the database"
                     + (f": {todo}" if todo else "") + " Then `rollback resume <run folder>` goes on from that step."),
    }
