"""When to roll back: the seed's automatic and manual triggers, measured.

``sampler``: scrapes a Prometheus text endpoint and the database on an interval into a time
series (JSON lines); rates and p95 come from counter and histogram deltas between samples.
``evaluate``: the rules over that series: which fired, their evidence, the recommendation.
``plot``: the series with the thresholds; the run's service plot with the outage window shaded.
``background``: the sampler running beside ``rollback run`` (the service plot's data).
Their config is ``rollbacklib.trigger_settings``; ``rollback watch`` is ``rollbacklib.watch``,
``rollback assess`` and notebook 00 are ``rollbacklib.phases.assess``.
"""
