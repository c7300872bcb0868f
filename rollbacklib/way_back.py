"""A run's view of the live system from its folder alone: for the summary, resume and the way back.

The runner, ``rollback resume`` and ``run.json`` ask what the catalog shows for a run they
have no ``RunContext`` for: the config and environment are found from the run's journal and
folder, the names and oids from its state. The way back is computed from that view at the
moment it is asked for (``LiveView.way_back``), never from what the run wrote down.
"""

from __future__ import annotations

from pathlib import Path

from rollbacklib.config import load_config
from rollbacklib.journal import changes_made, read_events
from rollbacklib.live import LiveView, view
from rollbacklib.postgres.client import database_name, with_database
from rollbacklib.state import load_state


def run_view(run_dir: Path, config_path: str | None = None) -> LiveView | None:
    """The catalog now, seen through the run in ``run_dir``; None when the run's config or URL cannot be read."""
    run_dir = Path(run_dir)
    events = read_events(run_dir)
    try:
        _, env = run_environment(run_dir, config_path, events)
        url = env.database_url()
    except Exception:  # noqa: BLE001 - no view is an answer: the summary says it could not look
        return None
    state = load_state(run_dir)
    copy = state.restored
    return view(with_database(url, env.maintenance_database), live=database_name(url), run_id=run_dir.name,
                original_oid=state.original_oid, copy_oid=copy.oid if copy else None,
                marker=copy.marker if copy else None, changes_made=changes_made(events))


def run_environment(run_dir: Path, config_path: str | None = None, events: list[dict] | None = None):
    """The config and environment a run used: ``config_path``, else the one its journal names."""
    events = read_events(Path(run_dir)) if events is None else events
    config_path = config_path or next((e["evidence"].get("config") for e in events if e["step"] == "phase"
                                       and e["status"] == "started" and e["evidence"].get("config")), None)
    config = load_config(config_path)
    return config, config.environment(Path(run_dir).parent.name)


def previous_settings(run_dir: Path) -> dict | None:
    state = load_state(run_dir)
    return state.blocked.previous if state.blocked else state.original_settings
