"""The report's communication groups: each notification (delivered, or "notification X failed: ..."), the status
page's transitions (when it was first updated, each status it took and when), each escalation (level, who, when,
why, next action) and each acknowledgement of the pre-rollback checklists (who, when), all read from the journal.
"""

from __future__ import annotations

from rollbacklib.metrics import DRILL_TARGETS, seconds_between
from rollbacklib.notify.delivery import outcomes

PROVED, FAILED, PEOPLE = "proved", "failed", "for people"


def _item(item: str, state: str, evidence: str) -> dict:
    return {"item": item, "state": state, "evidence": evidence}


def notifications(events: list[dict]) -> list[dict]:
    rows = []
    for n in outcomes(events):
        what = f"Notification {n['channel']} ({n['kind']}): {n['event']}"
        if n["delivered"]:
            rows.append(_item(what, PROVED, f"delivered at {n['at'][11:19]} UTC after {n['attempts']} attempt(s): "
                                            f"{n['request']}"))
        else:
            rows.append(_item(what, FAILED, f"notification {n['channel']} failed: {n['error']} (after "
                                            f"{n['attempts']} attempt(s), {n['seconds']} s; the run went on)"))
    return rows


STATUS_PAGE_TARGET = next(target for name, target, _ in DRILL_TARGETS if name == "status page updated")


def status_page(events: list[dict]) -> list[dict]:
    """How long after the run's start the status page was first updated, then each update it accepted, in order.

    Measured from the journal: the run's first event to each delivered ``statuspage`` notification; the status is
    the one Statuspage answered with (else the message's event).
    """
    accepted = [n for n in outcomes(events) if n["kind"] == "statuspage" and n["delivered"]]
    if not accepted:
        return []
    start = events[0]["ts"]
    first = seconds_between(start, accepted[0]["at"])
    rows = [_item(f"Status page first updated {first:.1f} s after the run's start (the drill's target: under "
                  f"{STATUS_PAGE_TARGET} s)", PROVED if first < STATUS_PAGE_TARGET else FAILED,
                  f"{accepted[0]['channel']}: {accepted[0]['request']} accepted at {accepted[0]['at'][11:19]} UTC")]
    for n in accepted:
        rows.append(_item(f"Status page {n['channel']}: {n.get('incident_status') or n['event']}", PROVED,
                          f"at {n['at'][11:19]} UTC, {seconds_between(start, n['at']):.1f} s after the start "
                          f"({n['event']}): {n['request']}"))
    return rows


# The post-rollback checklist's communication items a delivered "completed" notification proves (its kinds).
COMPLETED_BY = {'Status page set to "Resolved"': ("statuspage",), "Team notified via Slack": ("slack", "slack-webhook"),
                "Stakeholders notified by email": ("email",)}


def post_rollback(events: list[dict], items) -> list[dict]:
    """The seed's post-rollback communication items: proved by a delivered completion notification, else for people."""
    done = [n for n in outcomes(events) if n["event"] == "completed" and n["delivered"]]
    rows = []
    for item in items:
        sent = next((n for n in done if n["kind"] in COMPLETED_BY.get(item, ())), None)
        rows.append(_item(item, PROVED, f"notification {sent['channel']} delivered at {sent['at'][11:19]} UTC") if sent
                    else _item(item, PEOPLE, "for people: the run cannot see it"))
    return rows


def escalations(events: list[dict]) -> list[dict]:
    rows = []
    for e in events:
        found = e.get("evidence", {}).get("escalation") if isinstance(e.get("evidence"), dict) else None
        if not found:
            continue
        who = found["who"] + (f", {found['reach']}" if found.get("reach") else "")
        rows.append(_item(f"Escalated to {found['level']} ({found['role']}): {who}", PEOPLE,
                          f"at {e['ts'][11:19]} UTC, step {found['step']}: {found['reason']}. Next: "
                          f"{found['next_action']}"))
    return rows


def acknowledgements(events: list[dict]) -> list[tuple[str, list[dict]]]:
    """The pre-rollback checklists as phase 01 journaled them: each item proved, acknowledged (who, when) or open."""
    latest = next((e["evidence"]["checklists"] for e in reversed(events)
                   if isinstance(e.get("evidence"), dict) and "checklists" in e["evidence"]), None)
    if not latest:
        return []
    return [(f"Before the rollback: {group}", [_item(i["item"], i["state"], i["evidence"]) for i in items])
            for group, items in latest.items()]


def groups(events: list[dict]) -> list[tuple[str, list[dict]]]:
    found = acknowledgements(events)
    if (rows := notifications(events)):
        found.append(("Notifications", rows))
    if (rows := status_page(events)):
        found.append(("Status page", rows))
    if (rows := escalations(events)):
        found.append(("Escalations", rows))
    return found


def timeline_rows(events: list[dict]) -> list[tuple[str, str, str]]:
    """(time, event, evidence) for the post-mortem's timeline: each notification delivered, each escalation."""
    rows = [(n["at"], f"Notification {n['channel']} ({n['kind']}) delivered: {n['event']}", "journal, notification")
            for n in outcomes(events) if n["delivered"]]
    for e in events:
        found = e.get("evidence", {}).get("escalation") if isinstance(e.get("evidence"), dict) else None
        if found:
            rows.append((e["ts"], f"Escalated to {found['level']} ({found['role']}: {found['who']})",
                         f"journal, escalation ({found['why']})"))
    return rows


def failed_lines(events: list[dict]) -> list[str]:
    """What went wrong on the communication side: each notification that was not delivered."""
    return [f"Notification {n['channel']} ({n['kind']}, {n['event']}) failed: {n['error']} after {n['attempts']} "
            f"attempt(s); people were told by other means, or not at all" for n in outcomes(events) if not n["delivered"]]
