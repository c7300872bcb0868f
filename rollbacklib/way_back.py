"""The way back: the statements that return the server to a serving state after a failure.

Computed from the run's state (what was blocked, how far the swap went), run on the
maintenance database, in order. Every failure after a change prints them, journals them and
writes them into ``run.json``; a test runs them literally and then connects through the
application's URL.
"""

from __future__ import annotations

from rollbacklib.postgres import database as db
from rollbacklib.state import RunState


def way_back(state: RunState, run_id: str) -> list[str]:
    """Statements that put the pre-rollback database back in service, as it was before the run."""
    statements = []
    swap, blocked = state.swap, state.blocked
    live = blocked.database if blocked else (swap.live if swap else None)
    if swap is not None:
        if swap.completed:  # the restored copy carries the live name: move it aside, keep it for inspection
            statements.append(db.rename_statement(swap.live, f"{swap.live}__failed_{run_id}"[:63]).as_string(None))
        statements.append(db.rename_statement(swap.kept, swap.live).as_string(None))
    if blocked is not None and live is not None:
        statements += [s.as_string(None) for s in db.unblock_statements(live, blocked.previous)]
    return statements


def describe(statements: list[str], maintenance_database: str | None = None) -> str:
    if not statements:
        return "nothing to undo: the live database was not changed."
    where = f" (connected to {maintenance_database})" if maintenance_database else ""
    return "to return the original database to service, run" + where + ": " + " ".join(
        s if s.endswith(";") else s + ";" for s in statements)
