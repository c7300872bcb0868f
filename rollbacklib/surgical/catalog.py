"""A database's schema as the surgical reversal compares it: tables, columns, keys, constraints, indexes, enums.

Read from the catalog of one connection (the live database, or the scratch database the
backup's schema was restored into), in the form the reverse DDL is written from: column types
as ``format_type`` spells them, defaults as ``pg_get_expr``, constraints as
``pg_get_constraintdef`` and indexes as ``pg_get_indexdef``, so every statement rendered from
it is PostgreSQL's own text, not retyped. Prisma's ``_prisma_migrations`` is left out: its
rows are the bookkeeping step's concern, not the schema's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from rollbacklib.prisma import MIGRATIONS_TABLE

_USER = ("n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp_%%' "
         "AND n.nspname NOT LIKE 'pg_toast_temp_%%'")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    not_null: bool
    default: str | None


@dataclass
class Table:
    schema: str
    name: str
    columns: dict[str, Column] = field(default_factory=dict)  # in attnum order
    key: tuple[str, ...] = ()  # the primary key's columns, in key order

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Constraint:
    schema: str
    table: str
    name: str
    kind: str  # p primary key, f foreign key, u unique, c check, x exclusion
    definition: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Index:
    schema: str
    table: str
    name: str
    definition: str
    valid: bool
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Sequence:
    schema: str
    name: str
    owned_by: tuple[str, str, str] | None  # (schema, table, column) when a column owns it (serial)
    type: str = "bigint"


@dataclass
class Schema:
    tables: dict[tuple[str, str], Table] = field(default_factory=dict)
    constraints: dict[tuple[str, str, str], Constraint] = field(default_factory=dict)
    indexes: dict[tuple[str, str], Index] = field(default_factory=dict)  # those not backing a constraint
    enums: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    sequences: dict[tuple[str, str], Sequence] = field(default_factory=dict)

    def table(self, schema: str, name: str) -> Table | None:
        return self.tables.get((schema, name))


def read_schema(conn: psycopg.Connection) -> Schema:
    """The schema of the database ``conn`` is connected to (every user schema)."""
    schema = Schema()
    for nsp, rel, col, typ, not_null, default in conn.execute(f"""
            SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   pg_get_expr(d.adbin, d.adrelid)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {_USER} AND c.relname <> %s
            ORDER BY n.nspname, c.relname, a.attnum""", (MIGRATIONS_TABLE,)).fetchall():
        table = schema.tables.setdefault((nsp, rel), Table(nsp, rel))
        if col is not None:
            table.columns[col] = Column(col, typ, not_null, default)
    for nsp, rel, name, kind, definition, columns in conn.execute(f"""
            SELECT n.nspname, c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid),
                   ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(num, i)
                         JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.num ORDER BY u.i)
            FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE k.contype IN ('p', 'f', 'u', 'c', 'x') AND {_USER} AND c.relname <> %s
            ORDER BY 1, 2, 3""", (MIGRATIONS_TABLE,)).fetchall():
        schema.constraints[(nsp, rel, name)] = Constraint(nsp, rel, name, kind, definition, tuple(columns))
        if kind == "p" and (nsp, rel) in schema.tables:
            schema.tables[(nsp, rel)].key = tuple(columns)
    for nsp, rel, name, definition, valid, columns in conn.execute(f"""
            SELECT n.nspname, t.relname, i.relname, pg_get_indexdef(x.indexrelid), x.indisvalid,
                   ARRAY(SELECT a.attname FROM unnest(x.indkey) WITH ORDINALITY u(num, o)
                         JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = u.num ORDER BY u.o)
            FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
            JOIN pg_namespace n ON n.oid = t.relnamespace
            WHERE {_USER} AND t.relname <> %s
              AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid AND k.contype IN ('p', 'u', 'x'))
            ORDER BY 1, 2, 3""", (MIGRATIONS_TABLE,)).fetchall():
        schema.indexes[(nsp, name)] = Index(nsp, rel, name, definition, valid, tuple(columns))
    for nsp, name, labels in conn.execute(f"""
            SELECT n.nspname, t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)
            FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace JOIN pg_enum e ON e.enumtypid = t.oid
            WHERE {_USER} GROUP BY 1, 2 ORDER BY 1, 2""").fetchall():
        schema.enums[(nsp, name)] = list(labels)
    for nsp, name, owner_nsp, owner_rel, owner_col, typ in conn.execute(f"""
            SELECT n.nspname, s.relname, tn.nspname, t.relname, a.attname, format_type(q.seqtypid, NULL)
            FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace JOIN pg_sequence q ON q.seqrelid = s.oid
            LEFT JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                                 AND d.refclassid = 'pg_class'::regclass
            LEFT JOIN pg_class t ON t.oid = d.refobjid LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
            LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
            WHERE s.relkind = 'S' AND {_USER} ORDER BY 1, 2""").fetchall():
        owner = (owner_nsp, owner_rel, owner_col) if owner_col else None
        schema.sequences[(nsp, name)] = Sequence(nsp, name, owner, typ)
    if not conn.autocommit:
        conn.commit()
    return schema
