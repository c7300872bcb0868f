"""When to roll back: the seed's automatic and manual triggers, measured.

``settings``: the ``[triggers]`` config (rules, checks, metric names) and each environment's
``[environments.X.triggers]`` (metrics URL, intervals, ``auto_rollback``).
``sampler``: scrapes a Prometheus text endpoint and the database on an interval into a time
series (JSON lines); rates and p95 come from counter and histogram deltas between samples.
``evaluate``: the rules over that series: which fired, their evidence, the recommendation.
``plot``: the series with the thresholds; the run's service plot with the outage window shaded.
``watch``: ``rollback watch``; ``background``: the sampler running beside ``rollback run``.
"""
