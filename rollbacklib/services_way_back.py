"""The services' way back: every service ``stop-services`` scaled down, brought back to the replicas it had.

``stop-services`` journals each service as the platform scales it, with the replicas the platform
reported just before: that record says which services to look at and how many replicas each had.
Whether one is still down is read from the platform at the moment it is asked, never from the
journal (a person may have started it by hand since).

* A failure of ``stop-services`` itself: the window never opened, the database is untouched, so
  the services it had stopped are brought back at once (``undo_stop``), each read back until it
  holds; what could not be brought back is named with the call that does it.
* A failure later, before the rollback stands: the database's way back comes first (the SQL
  printed), then ``rollback services-back <run folder>`` (``bring_back``), which first checks that
  the live database accepts connections again.

After the rollback stands (a failure in 04 or 05), the services go forward, not back: a resume
runs ``start-services``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rollbacklib.errors import RefusedError, RollbackError
from rollbacklib.journal import read_events
from rollbacklib.steps import StepName

Record = Callable[..., dict]  # RunContext.record's signature: (step, status, message, **evidence)
STEP = StepName.STOP_SERVICES
SCALING = "scaling_down"  # the evidence key journaled before a service's stop is asked of the platform
SCALED_DOWN = "scaled_down"  # ... and after it held, with the replicas the platform reported before


def stopped_by_run(events: list[dict]) -> dict[str, int | None]:
    """Each service this run's ``stop-services`` began to scale down, with the replicas it had (None: not read)."""
    before: dict[str, int | None] = {}
    for e in events:
        if e["step"] != STEP:
            continue
        if isinstance(e["evidence"].get(SCALING), str):
            before.setdefault(e["evidence"][SCALING], None)
        one = e["evidence"].get(SCALED_DOWN)
        if isinstance(one, dict) and isinstance(one.get("replicas_before"), int) and before.get(one["service"]) is None:
            before[one["service"]] = one["replicas_before"]
    return before


def _read(platform, service) -> tuple[int | None, str | None]:
    try:
        return platform.replicas(service), None
    except RollbackError as err:
        return None, err.message
    except Exception as err:  # noqa: BLE001 - a platform that cannot be read is said, not hidden
        return None, f"{type(err).__name__}: {err}"


def pending(env, events: list[dict]) -> list[dict]:
    """Each service this run stopped that the platform does not report back at its replicas now, in start order.

    A service whose stop was asked but never held (or was cut short) is looked at with its configured replicas;
    one the platform cannot be read for is listed with ``replicas`` None and why.
    """
    from rollbacklib.platforms import platform_for

    before = stopped_by_run(events)
    if not before or not env.services:
        return []
    platform = platform_for(env)
    found = []
    for service in env.start.ordered(env.services):
        if service.name not in before:
            continue  # never touched by this run: not ours to bring back
        target = service.replicas if before[service.name] is None else before[service.name]
        if target <= 0:
            continue
        now, error = _read(platform, service)
        if now is not None and now >= target:
            continue
        found.append({"service": service.name, "platform": platform.name, "replicas": now, "target": target,
                      "action": platform.describe(service, target).text, "error": error})
    return found


def still_down(run_dir: Path, events: list[dict]) -> list[dict]:
    """``pending`` for a run folder (``run.json``'s ``services_way_back``): its environment found from its journal."""
    from rollbacklib.way_back import run_environment

    before = stopped_by_run(events)
    if not before:
        return []
    try:
        _, env = run_environment(run_dir, None, events)
        return pending(env, events)
    except Exception as err:  # noqa: BLE001 - the summary says it could not look, and what to look at
        return [{"service": name, "replicas": None, "target": target, "action": "look at it on its platform",
                 "error": f"{type(err).__name__}: {err}"} for name, target in before.items()]


def _scale_back(env, todo: list[dict], record: Record, step: str) -> tuple[list[dict], list[dict]]:
    from rollbacklib.platforms import platform_for

    platform = platform_for(env)
    by_name = {s.name: s for s in env.services}
    back, left = [], []
    for item in todo:
        try:
            evidence = platform.scale(by_name[item["service"]], item["target"])
        except RollbackError as err:
            left.append({**item, "error": err.message})
            record(step, "info", f"{item['service']} not brought back: {err.message}", service_back=left[-1])
            continue
        back.append(evidence)
        record(step, "changed", f"{item['service']} brought back to {item['target']} replica(s), read back from the "
               f"{platform.name} platform", service_back=evidence, why="the way back of stop-services")
    return back, left


def describe(items: list[dict]) -> str:
    return "; ".join(f"{i['service']} ({'?' if i['replicas'] is None else i['replicas']} -> {i['target']}): "
                     f"{i['action']}" for i in items)


def undo_stop(ctx, err: RollbackError) -> None:
    """``stop-services`` failed: bring back what it had stopped, and say so in ``err``.

    Only while the live database serves (the window never opened in this run; a resume whose window had begun
    leaves them down and says how to bring them back once the database serves)."""
    todo = pending(ctx.env, read_events(ctx.run_dir))
    if not todo:
        return
    live = ctx.live().named(ctx.database)
    if live is None or not live.open:  # a resume past the window's start: the services would meet no database
        ctx.record(STEP, "info", "the services stay down: the live database does not accept connections",
                   services_down=todo)
        err.message += (" The services it stopped stay down: the live database does not accept connections now; "
                        "bring them back after it serves again.")
        err.next_action += f" Then: rollback services-back {ctx.run_dir}"
        return
    back, left = _scale_back(ctx.env, todo, ctx.record, STEP)
    said = []
    if back:
        said.append("The services it had stopped were brought back, read back from the platform: "
                    + ", ".join(f"{b['service']} ({b.get('replicas')})" for b in back) + ".")
    if left:
        said.append("NOT brought back (production is missing them): " + describe(left) + ".")
    err.message += " " + " ".join(said)
    err.next_action = ((f"bring back by hand: {describe(left)}; then " if left else "")
                       + err.next_action)


BACK = "services-back"  # the journal's step for ``rollback services-back``, after the run stopped


def _database_serves(run_dir: Path, config_path: str | None) -> RefusedError | None:
    from rollbacklib.way_back import run_view

    now = run_view(run_dir, config_path)
    live = now.named(now.live) if now is not None else None
    if live is not None and live.open:
        return None
    seen = now.describe() if now is not None else "the server did not answer"
    return RefusedError(
        f"The live database does not accept connections now ({seen}): the services would come back against a "
        "database that refuses them. Nothing was changed.",
        next_action=f"run the database's way back first (rollback status {run_dir} prints it, read from the catalog "
        f"now), then rollback services-back {run_dir}.", step=BACK)


def bring_back(run_dir: Path, config_path: str | None = None, *, dry_run: bool = False) -> dict:
    """``rollback services-back``: the services this run stopped, back to their replicas, once the database serves.

    Journaled into the run's journal (step ``services-back``), so its audit chain holds the way back too.
    """
    from rollbacklib.journal import JOURNAL_NAME, Journal
    from rollbacklib.redaction import config_secrets
    from rollbacklib.way_back import run_environment

    run_dir = Path(run_dir)
    config, env = run_environment(run_dir, config_path)
    todo = pending(env, read_events(run_dir))
    if dry_run or not todo:
        return {"pending": todo, "brought_back": [], "left": [], "dry_run": dry_run}
    refused = _database_serves(run_dir, config_path)
    if refused is not None:
        raise refused
    journal = Journal(run_dir / JOURNAL_NAME, secrets=config_secrets(config))

    def record(step: str, status: str, message: str = "", **evidence) -> dict:
        return journal.record(BACK, step, status, message, **evidence)

    record(BACK, "started", "the services this run stopped, back to their replicas: " + describe(todo),
           services=[i["service"] for i in todo])
    back, left = _scale_back(env, todo, record, BACK)
    record(BACK, "ok" if not left else "failed", f"{len(back)} brought back, {len(left)} left", brought_back=back,
           left=left)
    return {"pending": todo, "brought_back": back, "left": left, "dry_run": False}
