"""Phase 01's checklists: the seed's technical, communication and team checklists, before anything changes.

An item the runbook can verify is ticked from evidence (this run's journal, or a succeeded staging run of the same
migration); every other item is an acknowledgement: typed in JupyterLab, or read headless from the acknowledgements
file (``[checklists] acknowledgements_file``), in the ``manual`` platform's format and with its code
(``{"<key>": {"by": "<who>", "at": "<when>"}}``). Each acknowledgement is journaled with who and when, and the
report shows them. Items left open do not stop the run unless ``require_acknowledgements = true`` (then the run
aborts, exit 3, nothing changed, naming the keys).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from rollbacklib import frontends
from rollbacklib.checks import Check
from rollbacklib.dispatch import dispatch
from rollbacklib.errors import AbortedError
from rollbacklib.notify.delivery import outcomes
from rollbacklib.platforms.manual import ManualPlatform
from rollbacklib.run import RunContext
from rollbacklib.steps import Action, Phase, Step, StepName

PROVED, ACKNOWLEDGED, OPEN = "proved", "acknowledged", "for people"

# (group, item, how the run can prove it: a function of the run's evidence, or None: a person acknowledges it)
TECHNICAL = "Technical"
COMMUNICATION = "Communication"
TEAM = "Team"
ITEMS: list[tuple[str, str, str | None]] = [
    (TECHNICAL, "Production backup created and verified (taken < 1 h before the migration)", "backup"),
    (TECHNICAL, "Backup stored in several places (local + cloud)", None),
    (TECHNICAL, "Rollback plan reviewed and approved by the technical team", None),
    (TECHNICAL, "Rollback tested in staging", "staging"),
    (TECHNICAL, "Emergency access to production configured", "access"),
    (TECHNICAL, "Maintenance window communicated (if any)", "announced"),
    (COMMUNICATION, "Stakeholders notified of the critical problem", "team-notified"),
    (COMMUNICATION, "Status page updated", "status-page"),
    (COMMUNICATION, "Support team notified", None),
    (COMMUNICATION, "Critical customers contacted directly (enterprise clients)", None),
    (TEAM, "Lead Engineer available", None),
    (TEAM, "DevOps Lead available", None),
    (TEAM, "Database Specialist available", None),
    (TEAM, "Product Owner informed", None),
    (TEAM, "Legal/Compliance informed (if data is lost)", None),
]


def key(group: str, item: str) -> str:
    """``checklist:team:lead-engineer-available``: the item's key in the acknowledgements file."""
    slug = re.sub(r"[^a-z0-9]+", "-", item.lower().split(" (")[0]).strip("-")
    return f"checklist:{group.lower()}:{slug}"


def _file(ctx: RunContext) -> Path | None:
    return ctx.config.checklists.acknowledgements_file


def checklists_step(ctx: RunContext) -> Step:
    actions = []
    for group, item, proof in ITEMS:
        if proof:
            actions.append(Action("read", group, f"{item}: ticked from the evidence ({proof})"))
        else:
            actions.append(Action("prompt", group, f"{item}: acknowledged by a person as {key(group, item)!r} "
                                                   "(typed in JupyterLab, or the acknowledgements file)"))
    return Step(StepName.CHECKLISTS, Phase.PREPARE, "people", "the seed's technical, communication and team checklists",
                tuple(actions), requires=(StepName.VERIFY_BACKUP,),
                postcondition="every item proved, acknowledged (who, when) or reported open")


def _delivered(events: list[dict], kinds: tuple[str, ...]) -> dict | None:
    return next((n for n in outcomes(events) if n["event"] == "initiated" and n["delivered"] and n["kind"] in kinds),
                None)


def _staging_run(ctx: RunContext) -> Path | None:
    """A succeeded run of this migration in the staging environment, beside this run's folder."""
    folder = ctx.run_dir.parent.parent / "staging"
    for summary in sorted(folder.glob("*/run.json")) if folder.is_dir() else []:
        try:
            if json.loads(summary.read_text()).get("status") == "succeeded":
                return summary.parent
        except (OSError, ValueError):
            continue
    return None


def _proof(ctx: RunContext, proof: str, events: list[dict]) -> str | None:
    """The evidence that proves an item, or None when this run has none."""
    state = ctx.state()
    if proof == "backup":
        done = state.steps.get(StepName.VERIFY_BACKUP)
        return (f"step verify-backup passed: {state.backup.path} (taken {state.backup.taken_at})"
                if done and done.status == "ok" and state.backup else None)
    if proof == "access":
        done = state.steps.get(StepName.MIGRATION)
        return f"step migration read the live database {ctx.database} with this run's credentials" if done else None
    if proof == "staging":
        found = _staging_run(ctx)
        return f"a succeeded staging run of this migration: {found}" if found else None
    if proof in ("announced", "team-notified"):
        sent = _delivered(events, ("slack", "slack-webhook", "email"))
        return f"notification {sent['channel']} delivered at {sent['at'][11:19]} UTC" if sent else None
    if proof == "status-page":
        sent = _delivered(events, ("statuspage",))
        return (f"Statuspage incident {sent.get('incident_id')} opened at {sent['at'][11:19]} UTC" if sent else None)
    return None


def _acknowledged(ctx: RunContext, manual: ManualPlatform, group: str, item: str) -> dict | None:
    task_key = key(group, item)
    found = manual._from_file(task_key)
    if found is None and manual.ask is not None:
        found = manual._typed(task_key, f"Checklist ({group}): {item}")
    return found


def run_checklists(ctx: RunContext) -> pd.DataFrame:
    """Tick what the evidence proves; ask for (or read) the acknowledgement of each other item; journal both."""
    return dispatch(ctx, checklists_step(ctx), _run, postcondition=lambda c, s: Check("checklists answered", True))


def _run(ctx: RunContext, step: Step) -> pd.DataFrame:
    events = ctx.journal.events()
    ask = input if frontends.current() in (frontends.LAB, frontends.JUPYTER) else None
    manual = ManualPlatform(None, acknowledgements=_file(ctx), ask=ask)
    groups: dict[str, list[dict]] = {}
    for group, item, proof in ITEMS:
        evidence = _proof(ctx, proof, events) if proof else None
        if evidence:
            row = {"item": item, "state": PROVED, "evidence": evidence}
        else:
            ack = _acknowledged(ctx, manual, group, item)
            if ack:
                row = {"item": item, "state": ACKNOWLEDGED, "evidence": f"acknowledged by {ack['acknowledged_by']} "
                       f"at {ack['acknowledged_at'] or '(no time given)'} ({ack['source']})",
                       "by": ack["acknowledged_by"], "at": ack["acknowledged_at"]}
                ctx.record(step.name, "info", f"{key(group, item)} acknowledged by {ack['acknowledged_by']}",
                           acknowledgement={"key": key(group, item), "item": item, **ack})
            else:
                row = {"item": item, "state": OPEN, "evidence": f"not acknowledged: add {key(group, item)!r} to the "
                       "acknowledgements file, or type it in JupyterLab"}
        groups.setdefault(group, []).append(row)
    open_items = [key(g, r["item"]) for g, rows in groups.items() for r in rows if r["state"] == OPEN]
    ctx.record(step.name, "info", f"checklists: {sum(r['state'] == PROVED for rows in groups.values() for r in rows)} "
               f"proved, {sum(r['state'] == ACKNOWLEDGED for rows in groups.values() for r in rows)} acknowledged, "
               f"{len(open_items)} open", checklists=groups)
    if open_items and ctx.config.checklists.require_acknowledgements:
        where = _file(ctx) or "an acknowledgements file ([checklists] acknowledgements_file)"
        raise AbortedError(f"{len(open_items)} checklist item(s) not acknowledged: {', '.join(open_items)}.",
                           next_action=f"have each acknowledged: type your name in JupyterLab, or add to {where} "
                           '{"<key>": {"by": "<who>", "at": "<ISO time>"}}; then run again.',
                           step=step.name, expected="every item acknowledged", found=open_items)
    return pd.DataFrame([{"checklist": g, **{k: r[k] for k in ("item", "state", "evidence")}}
                         for g, rows in groups.items() for r in rows])
