"""The completion notification, sent once the run has ended, carrying the chain head it ended at.

The step ``notify-completed`` is in the plan (phase 05: the dry run shows its requests), but what it sends must carry
the head ``rollback verify-audit --head`` checks the run against, and that head is only known once the run has
ended (``rollbacklib.conclude``: ``run.json``, the report and the post-mortem sealed, then the head). So it is sent
right after it: a copy of the final head lives outside the run folder. Its events come after the head as those of a
later command do (step ``notified``, each with its ``reason``), so the head stays the evidence's end; they are
not part of ``run.json`` or the report already written (the journal and the terminal have them; ``rollback report``
renders them). Sent once per run, never under a dry run, never raising.
"""

from __future__ import annotations

from pathlib import Path

from rollbacklib.journal import JOURNAL_NAME, Journal, read_events
from rollbacklib.metrics import duration
from rollbacklib.notify import delivery, messages
from rollbacklib.outcome import NOTIFIED

REASON = "the completion notification, sent after the end of the run with the chain head it ended at"


def _config(events: list[dict]):
    from rollbacklib.config import load_config

    path = next((e["evidence"]["config"] for e in events if isinstance(e.get("evidence"), dict)
                 and e["evidence"].get("config")), None)
    return load_config(path) if path else None


def _sent_already(events: list[dict]) -> bool:
    return any(e["step"] == NOTIFIED for e in events)


def message(summary: dict, head: dict, run_dir: Path) -> messages.Message:
    """The seed's completion text, from the run's summary: the measured RTO, the outcome, the next steps, the head."""
    succeeded = summary["status"] == "succeeded"
    passed = (summary.get("validation") or {}).get("passed")
    status = ("All systems operational: the restored database serves and passed every validation check"
              if succeeded and passed else f"{summary['status'].upper()}: {summary.get('outcome', '')}")
    return messages.completed(
        summary["migration_id"], summary["environment"],
        duration=f"{duration(summary.get('rto_seconds'))} (RTO, measured from the journal)", status=status,
        next_steps=f"post-mortem within 48 h: draft {Path(run_dir) / 'postmortem.md'}",
        head=f"{head['head']} (event #{head['seq']})", verify=head["verify"],
        outcome="succeeded" if succeeded and passed else summary["status"])


def send(run_dir: Path, summary: dict, head: dict, secrets=()) -> list[dict]:
    """Send the completion to the environment's channels that carry it; journal every attempt after the head."""
    try:
        run_dir = Path(run_dir)
        events = read_events(run_dir)
        if summary.get("dry_run") or _sent_already(events):
            return []
        config = _config(events)
        env = config.environments.get(summary["environment"]) if config else None
        settings = env.notify if env else None
        if settings is None or not delivery.channels(settings, "completed"):
            return []
        journal = Journal(run_dir / JOURNAL_NAME, secrets=secrets)

        def record(_step, status, what="", **evidence):
            return journal.record("run", NOTIFIED, status, what, reason=REASON, **evidence)

        from rollbacklib.state import load_state

        stores = {name: dict(store) for name, store in load_state(run_dir).notifications.items()}
        text = message(summary, head, run_dir)
        record(NOTIFIED, "info", f"sending: {text.subject}", text=text.text, event=text.event)
        return delivery.send_all(settings, text, record, NOTIFIED, stores=stores)
    except Exception as err:  # noqa: BLE001 - the run has ended: nothing here changes its outcome
        try:
            Journal(Path(run_dir) / JOURNAL_NAME, secrets=secrets).record(
                "run", NOTIFIED, "info", f"the completion could not be sent: {type(err).__name__}: {err}",
                reason=REASON, error=type(err).__name__)
        except Exception:  # noqa: BLE001
            pass
        return []
