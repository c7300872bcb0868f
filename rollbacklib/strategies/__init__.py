"""Strategies: the ways a run can undo a migration, each judged against the live situation before the gate.

A strategy is a module holding one object, ``STRATEGY``, with:

- ``name`` (as written in ``runbook.toml``'s ``strategy`` and ``--strategy``) and ``summary``;
- ``assess(ctx, situation) -> Assessment``: whether it applies to the situation phase 01 read
  (``rollbacklib.strategies.situation.Situation``) and why not; what it would discard, in rows
  and updates and in seconds of writes, computed from the live database and the backup, never
  typed; its estimated time;
- ``plan_steps(ctx, admin) -> list[Step]``: its steps for phases 02 to 05, rendered once in
  phase 01 (``rollbacklib.phases.prepare.build_plan``) into ``plan.json``;
- ``executors``: ``{step name: function(ctx)}`` for its steps that have no notebook cell of their
  own. Each phase notebook has one generic cell, ``strategies.run_phase_steps(ctx)``, that runs
  those, in plan order, through the dispatcher. A cell whose step is not in the plan is a
  no-op journaled "not in this plan (strategy X)" (``rollbacklib.dispatch``). A step of the
  swap's own cells that another strategy's plan holds (``in-place``'s window, ``stop-services``)
  is run by that generic cell with the strategy's own preconditions, and its own cell defers
  (``dispatch.run_by_strategy_cell``).

Registered strategies are listed in ``MODULES`` (name -> module), imported when asked for. To
add one: write its module with ``STRATEGY``, add one line to
``MODULES``, and its name to ``rollbacklib.config.StrategyName``. A name configured but not
registered is refused as bad config, naming the registered ones.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

from rollbacklib.errors import ConfigError

MODULES = {
    "in-place": "rollbacklib.strategies.in_place",
    "resolve-only": "rollbacklib.strategies.resolve_only",
    "surgical": "rollbacklib.strategies.surgical",
    "swap": "rollbacklib.strategies.swap",
}
AUTO = "auto"


@dataclass
class Assessment:
    """One strategy judged against the situation now: does it apply, what it discards, how long it takes."""

    name: str
    applies: bool
    why: str  # why it applies, or why not
    discards: str  # what it throws away, in words with the counts
    rows_lost: int | None = None  # rows inserted or deleted after the backup that it discards
    updates_lost: int | None = None  # updates made after the backup that it discards
    seconds_lost: float | None = None  # the window of writes it discards (backup to now)
    estimate_seconds: float | None = None
    estimate_basis: str = ""
    detail: dict = field(default_factory=dict)

    @property
    def loss(self) -> int | None:
        if self.rows_lost is None:
            return None
        return self.rows_lost + (self.updates_lost or 0)

    def to_dict(self) -> dict:
        return {**asdict(self), "loss": self.loss}


class Strategy(Protocol):
    name: str
    summary: str
    executors: dict[str, Callable[[Any], Any]]

    def assess(self, ctx, situation) -> Assessment: ...

    def plan_steps(self, ctx, admin) -> list: ...


def assess(strategy: Strategy, ctx, situation, wanted: str) -> Assessment:
    """``strategy`` judged now; a ``costly`` one (it writes to the server to find out) only when it may be chosen."""
    if getattr(strategy, "costly", False) and wanted not in (AUTO, strategy.name):
        return Assessment(strategy.name, False, f"not assessed: strategy {wanted} was asked for (assessing "
                          f"{strategy.name} reads the backup's schema into a scratch database; --strategy auto "
                          "compares every strategy)", "not assessed")
    return strategy.assess(ctx, situation)


def names() -> list[str]:
    return sorted(MODULES)


def get(name: str) -> Strategy:
    """The registered strategy ``name``; ConfigError naming the registered ones when there is none."""
    if name not in MODULES:
        raise ConfigError(f"Strategy {name!r} is not available in this build of rollbacklib.",
                          next_action=f"use one of: {', '.join(names())} (or {AUTO}: the recommended one), in "
                          "--strategy or the environment's strategy key.", step="strategy",
                          expected=names(), found=name)
    return importlib.import_module(MODULES[name]).STRATEGY


def recommend(assessments: list[Assessment]) -> Assessment | None:
    """The applicable strategy that discards least (rows and updates), then the fastest."""
    usable = [a for a in assessments if a.applies]
    if not usable:
        return None
    return min(usable, key=lambda a: (a.loss if a.loss is not None else float("inf"),
                                      a.estimate_seconds if a.estimate_seconds is not None else float("inf")))


def chosen(ctx) -> str | None:
    """The strategy phase 01 chose for this run (``state.json``), or None before it has."""
    choice = ctx.state().strategy
    return choice["chosen"] if choice else None


def run_phase_steps(ctx) -> list:
    """Run, in plan order, this phase's steps that the chosen strategy runs itself (no cell of their own)."""
    from rollbacklib.steps import Phase

    plan, name = ctx.plan(), chosen(ctx)
    if plan is None or name is None:
        return []
    executors = get(name).executors
    steps = [s for s in plan.for_phase(ctx.phase) if s.name in executors]
    if not steps:
        if ctx.phase != Phase.PREPARE:
            ctx.record("strategy", "info", f"strategy {name}: no step of its own in {ctx.phase}")
        return []
    results = [executors[s.name](ctx) for s in steps]
    return results[0] if len(results) == 1 else results
