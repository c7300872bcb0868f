"""The reverse schema change: what the migration did, read as the difference between the backup's schema and the
live one, and the statements that undo it without touching a row written since.

``reverse(backup, live, conn)`` compares two ``catalog.Schema`` and returns a ``Reversal``:

- ``ddl``: run in ONE transaction before any data moves (``apply.py``): enums and enum values the
  migration dropped, constraints and indexes it added (or left INVALID) dropped, tables it dropped
  created again (columns only), columns it dropped added back with the backup's type and default
  (nullable until their values are back), NOT NULLs it added dropped, changed types and defaults
  changed back (``USING col::type``);
- ``backfills``: the values to bring back from the side restore (``backfill.py``), by primary key:
  the dropped columns of a table, or every row of a dropped table;
- ``after_data``: what needs the data first (one more transaction): the NOT NULLs of re-added
  columns, the constraints and indexes the migration dropped, the sequences of re-created tables;
- ``kept``: what the migration added and the reversal leaves in place, because removing it would
  lose what was written since (an added column, an added table, an enum value);
- ``irreversible``: what cannot be undone without losing data or guessing; the plan stops there.

Every statement is rendered once from the catalog's own text (``format_type``,
``pg_get_expr``, ``pg_get_constraintdef``, ``pg_get_indexdef``); nothing here knows any schema.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from psycopg import sql

from rollbacklib.surgical.catalog import Schema, Table


@dataclass
class Change:
    kind: str  # what the migration did, e.g. column-dropped, type-changed, table-dropped
    object: str  # schema.table[.column] or schema.name
    action: str  # "reverse", "keep" or "irreversible"
    detail: str
    backup: str | None = None
    live: str | None = None


@dataclass
class Backfill:
    schema: str
    table: str
    key: list[str]
    columns: list[str]  # the columns whose values come back (every column for a whole table)
    whole_table: bool = False

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass
class Reversal:
    changes: list[Change] = field(default_factory=list)
    ddl: list[str] = field(default_factory=list)
    after_data: list[str] = field(default_factory=list)
    backfills: list[Backfill] = field(default_factory=list)
    altered: list[list[str]] = field(default_factory=list)  # [schema, table] of live tables the ddl alters
    kept_columns: dict[str, dict[str, str]] = field(default_factory=dict)  # table -> column -> backup's type
    restored_objects: list[list[str]] = field(default_factory=list)  # [schema, table, constraint] / [schema, index]

    @property
    def irreversible(self) -> list[Change]:
        return [c for c in self.changes if c.action == "irreversible"]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Reversal":
        return cls(changes=[Change(**c) for c in data["changes"]], ddl=list(data["ddl"]),
                   after_data=list(data["after_data"]), backfills=[Backfill(**b) for b in data["backfills"]],
                   altered=[list(t) for t in data["altered"]], kept_columns=dict(data["kept_columns"]),
                   restored_objects=[list(o) for o in data.get("restored_objects", [])])


def _q(*parts: str) -> sql.Identifier:
    return sql.Identifier(*parts)


def reverse(backup: Schema, live: Schema, conn) -> Reversal:
    """The reversal of the change from ``backup`` to ``live``; ``conn`` renders identifiers (any connection)."""
    r = Reversal()
    s = lambda composed: composed.as_string(conn)  # noqa: E731
    _enums(backup, live, r, s)
    recreated = [t for k, t in backup.tables.items() if k not in live.tables]
    _sequences(backup, live, recreated, r, s)
    _dropped_by_reversal(backup, live, r, s)
    for table in recreated:
        _recreate_table(table, r, s)
    for key, table in backup.tables.items():
        if key in live.tables:
            _alter_table(table, live.tables[key], r, s)
    for key, table in live.tables.items():
        if key not in backup.tables:
            r.changes.append(Change("table-added", table.qualified, "keep", "added by the migration; kept with "
                                    "the rows written to it since"))
    _restored_objects(backup, live, recreated, r, s)
    return r


def _enums(backup: Schema, live: Schema, r: Reversal, s) -> None:
    for (nsp, name), labels in backup.enums.items():
        now = live.enums.get((nsp, name))
        if now is None:
            r.ddl.append(s(sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
                _q(nsp, name), sql.SQL(", ").join(map(sql.Literal, labels)))))
            r.changes.append(Change("enum-dropped", f"{nsp}.{name}", "reverse", "created again", ", ".join(labels)))
            continue
        for i, label in enumerate(labels):
            if label in now:
                continue
            after = next((p for p in reversed(labels[:i]) if p in now), None)
            before = next((n for n in labels[i + 1:] if n in now), None)
            where = (sql.SQL(" AFTER {}").format(sql.Literal(after)) if after is not None else
                     sql.SQL(" BEFORE {}").format(sql.Literal(before)) if before is not None else sql.SQL(""))
            r.ddl.append(s(sql.SQL("ALTER TYPE {} ADD VALUE {}").format(_q(nsp, name), sql.Literal(label)) + where))
            r.changes.append(Change("enum-value-dropped", f"{nsp}.{name}", "reverse", f"value {label!r} added back",
                                    ", ".join(labels), ", ".join(now)))
            now = now[: now.index(after) + 1] + [label] + now[now.index(after) + 1:] if after is not None else \
                [label] + now
        for label in now:
            if label not in labels:
                r.changes.append(Change("enum-value-added", f"{nsp}.{name}", "keep",
                                        f"value {label!r} kept (rows written since may hold it)"))


def _sequences(backup: Schema, live: Schema, recreated: list[Table], r: Reversal, s) -> None:
    owners = {(t.schema, t.name) for t in recreated}
    for key, seq in backup.sequences.items():
        if key in live.sequences:
            continue
        if seq.owned_by and seq.owned_by[:2] in owners:
            r.ddl.append(s(sql.SQL("CREATE SEQUENCE {} AS {}").format(_q(*key), sql.SQL(seq.type))))
            nsp, rel, col = seq.owned_by
            r.after_data.append(s(sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(_q(*key), _q(nsp, rel, col))))
            r.after_data.append(s(sql.SQL("SELECT setval({}, greatest((SELECT max({}) FROM {}), 1))").format(
                sql.Literal(f"{_q(*key).as_string(None)}"), _q(col), _q(nsp, rel))))
            r.changes.append(Change("sequence-dropped", ".".join(key), "reverse",
                                    f"created again, set past the highest {rel}.{col} copied back"))
        else:
            r.changes.append(Change("sequence-dropped", ".".join(key), "irreversible",
                                    "its last value is data a schema does not hold; create it by hand at a value "
                                    "above every id it handed out"))


def _dropped_by_reversal(backup: Schema, live: Schema, r: Reversal, s) -> None:
    """Constraints and indexes the migration added, changed or left INVALID: dropped before anything else."""
    for key, con in sorted(live.constraints.items(), key=lambda kv: kv[1].kind != "f"):
        old = backup.constraints.get(key)
        if (con.schema, con.table) not in backup.tables or (old is not None and old.definition == con.definition):
            continue
        if con.kind == "p" and old is None:
            continue  # a key where the backup had none: judged with the table
        r.ddl.append(s(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(_q(con.schema, con.table), _q(con.name))))
        r.changes.append(Change("constraint-added" if old is None else "constraint-changed",
                                f"{con.schema}.{con.table}.{con.name}", "reverse",
                                "dropped" if old is None else "dropped, added back as the backup has it after the "
                                "data", old.definition if old else None, con.definition))
    for key, idx in live.indexes.items():
        old = backup.indexes.get(key)
        if (idx.schema, idx.table) not in backup.tables or (old is not None and old.definition == idx.definition
                                                             and idx.valid):
            continue
        r.ddl.append(s(sql.SQL("DROP INDEX {}").format(_q(idx.schema, idx.name))))
        kind = "index-invalid" if not idx.valid else "index-added" if old is None else "index-changed"
        r.changes.append(Change(kind, f"{idx.schema}.{idx.name}", "reverse",
                                "INVALID (a failed CREATE INDEX CONCURRENTLY): dropped" if not idx.valid else
                                "dropped" if old is None else "dropped, created again as the backup has it",
                                old.definition if old else None, idx.definition))


def _column_sql(col, *, not_null: bool) -> sql.Composable:
    parts = [_q(col.name), sql.SQL(col.type)]
    if col.default is not None:
        parts += [sql.SQL("DEFAULT"), sql.SQL(col.default)]
    if not_null:
        parts.append(sql.SQL("NOT NULL"))
    return sql.SQL(" ").join(parts)


def _recreate_table(table: Table, r: Reversal, s) -> None:
    columns = sql.SQL(", ").join(_column_sql(c, not_null=c.not_null) for c in table.columns.values())
    r.ddl.append(s(sql.SQL("CREATE TABLE {} ({})").format(_q(table.schema, table.name), columns)))
    r.backfills.append(Backfill(table.schema, table.name, list(table.key), list(table.columns), whole_table=True))
    r.changes.append(Change("table-dropped", table.qualified, "reverse",
                            f"created again and its {len(table.columns)} columns copied back from the backup"))


def _alter_table(old: Table, now: Table, r: Reversal, s) -> None:
    name = _q(old.schema, old.name)
    alters: list[sql.Composable] = []
    dropped = [c for c in old.columns.values() if c.name not in now.columns]
    if old.key != now.key and old.key:
        r.changes.append(Change("key-changed", old.qualified, "irreversible",
                                "the primary key changed: rows written since cannot be matched to the backup's by "
                                "key; restore instead", ", ".join(old.key), ", ".join(now.key) or "none"))
        return
    if dropped and not old.key:
        r.changes.append(Change("column-dropped", old.qualified, "irreversible",
                                f"{', '.join(c.name for c in dropped)} dropped from a table without a primary key: "
                                "its values cannot be matched to rows by key; restore instead"))
        return
    for col in dropped:
        not_null_now = col.not_null and col.default is not None  # the default fills every row at once
        alters.append(sql.SQL("ADD COLUMN {}").format(_column_sql(col, not_null=not_null_now)))
        if col.not_null and not not_null_now:
            r.after_data.append(s(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(name, _q(col.name))))
        r.changes.append(Change("column-dropped", f"{old.qualified}.{col.name}", "reverse",
                                "added back and its values copied back by key; rows written since keep "
                                + ("its default" if col.default is not None else "NULL"),
                                f"{col.type}{' NOT NULL' if col.not_null else ''}"
                                f"{' DEFAULT ' + col.default if col.default else ''}"))
    kept = {}
    for col in old.columns.values():
        cur = now.columns.get(col.name)
        if cur is None:
            continue
        kept[col.name] = col.type
        if cur.type != col.type:
            if cur.default is not None:
                alters.append(sql.SQL("ALTER COLUMN {} DROP DEFAULT").format(_q(col.name)))
            alters.append(sql.SQL("ALTER COLUMN {} TYPE {} USING {}::{}").format(
                _q(col.name), sql.SQL(col.type), _q(col.name), sql.SQL(col.type)))
            if col.default is not None:
                alters.append(sql.SQL("ALTER COLUMN {} SET DEFAULT {}").format(_q(col.name), sql.SQL(col.default)))
            r.changes.append(Change("type-changed", f"{old.qualified}.{col.name}", "reverse",
                                    "changed back (USING a cast); values written since are kept, cast",
                                    col.type, cur.type))
        elif cur.default != col.default:
            alters.append(sql.SQL("ALTER COLUMN {} SET DEFAULT {}").format(_q(col.name), sql.SQL(col.default))
                          if col.default is not None else sql.SQL("ALTER COLUMN {} DROP DEFAULT").format(_q(col.name)))
            r.changes.append(Change("default-changed", f"{old.qualified}.{col.name}", "reverse", "set back",
                                    col.default, cur.default))
        if cur.not_null and not col.not_null:
            alters.append(sql.SQL("ALTER COLUMN {} DROP NOT NULL").format(_q(col.name)))
            r.changes.append(Change("not-null-added", f"{old.qualified}.{col.name}", "reverse", "dropped",
                                    "NULL allowed", "NOT NULL"))
        elif col.not_null and not cur.not_null:
            r.after_data.append(s(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(name, _q(col.name))))
            r.changes.append(Change("not-null-dropped", f"{old.qualified}.{col.name}", "reverse",
                                    "set again once no row holds NULL", "NOT NULL", "NULL allowed"))
    for col in now.columns.values():
        if col.name in old.columns:
            continue
        if col.not_null and col.default is None:
            alters.append(sql.SQL("ALTER COLUMN {} DROP NOT NULL").format(_q(col.name)))
        r.changes.append(Change("column-added", f"{old.qualified}.{col.name}", "keep",
                                "kept with the values written since" + (
                                    "; its NOT NULL dropped so the old code can insert rows without it"
                                    if col.not_null and col.default is None else ""), None, col.type))
    if alters:
        r.ddl.append(s(sql.SQL("ALTER TABLE {} ").format(name) + sql.SQL(", ").join(alters)))
        r.altered.append([old.schema, old.name])
    if dropped:
        r.backfills.append(Backfill(old.schema, old.name, list(old.key), [c.name for c in dropped]))
    r.kept_columns[old.qualified] = kept


def _restored_objects(backup: Schema, live: Schema, recreated: list[Table], r: Reversal, s) -> None:
    """Constraints and indexes the backup has and the live database lacks (or had changed): after the data."""
    fresh = {(t.schema, t.name) for t in recreated}
    for key, con in sorted(backup.constraints.items(), key=lambda kv: (kv[1].kind == "f", kv[0])):
        now = live.constraints.get(key)
        if now is not None and now.definition == con.definition:
            continue
        if (con.schema, con.table) not in live.tables and (con.schema, con.table) not in fresh:
            continue
        r.after_data.append(s(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(
            _q(con.schema, con.table), _q(con.name)) + sql.SQL(con.definition)))
        r.restored_objects.append([con.schema, con.table, con.name])
        if now is None and (con.schema, con.table) not in fresh:
            r.changes.append(Change("constraint-dropped", f"{con.schema}.{con.table}.{con.name}", "reverse",
                                    "added back after the data", con.definition))
    for key, idx in backup.indexes.items():
        now = live.indexes.get(key)
        if now is not None and now.definition == idx.definition and now.valid:
            continue
        r.after_data.append(idx.definition)
        r.restored_objects.append([idx.schema, idx.name])
        if now is None and (idx.schema, idx.table) not in fresh:
            r.changes.append(Change("index-dropped", f"{idx.schema}.{idx.name}", "reverse",
                                    "created again after the data", idx.definition))
