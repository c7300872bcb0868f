"""Strategy ``surgical``: undo a migration's schema change in the live database, bring back only what it destroyed
(from the backup, by primary key) and keep every row written since. README: "Strategy: surgical".

One module per concern: ``catalog`` (a schema read from a catalog), ``side`` (the backup's schema in a
scratch database; the affected tables' rows in a side database), ``reverse`` (the reverse DDL),
``apply`` (one transaction, lock_timeout, retries), ``backfill``, ``verify``, ``bookkeeping``
(``_prisma_migrations``), ``plain_dump`` (a plain dump read table by table), ``plan`` (phase 01:
compare, ``surgical.json``, the ``Step``s) and ``execute`` (the executors, ``(ctx, step) -> evidence``,
and one function per notebook cell).

Its settings are ``rollbacklib.config.SurgicalSettings`` (``[defaults.surgical]``).
"""
