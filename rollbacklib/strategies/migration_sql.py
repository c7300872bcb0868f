"""What a migration's ``migration.sql`` sets out to change, read well enough to tell which parts applied.

Prisma's PostgreSQL driver adapter runs a migration statement by statement, each committed on
its own, so a failure can leave part of it applied. ``intended_effects`` reads the script into
effects (a column dropped, a NOT NULL set, an index created, ...), one per ``ALTER TABLE``
subcommand; ``effect_status`` says, from the live catalog and the backup's (the manifest's
``schema``), whether each is applied, not applied, or cannot be told. Anything the reader does
not know is kept as an ``other`` effect with its text, never dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from rollbacklib import sql_script
from rollbacklib.sql_script import split_top_level, without_comments

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QUALIFIED = rf"(?:{_IDENT}\s*\.\s*)?{_IDENT}"


@dataclass(frozen=True)
class Effect:
    kind: str  # drop-column, add-column, set-not-null, drop-not-null, alter-type, drop-table, create-table,
    #            create-index, drop-index, other
    table: str | None
    name: str | None  # the column or index
    statement: str  # the statement (or ALTER TABLE subcommand) it comes from, as written

    def to_dict(self) -> dict:
        return asdict(self)


def _unquote(name: str) -> str:
    """The last part of a (possibly schema-qualified) identifier, unquoted as PostgreSQL reads it."""
    last = re.findall(_IDENT, name)[-1]
    return last[1:-1].replace('""', '"') if last.startswith('"') else last.lower()


def split_statements(script: str) -> list[str]:
    """The script's statements, comments dropped, split on ``;`` outside quotes, dollar quotes and comments."""
    return [s for s in map(without_comments, sql_script.split_statements(script)) if s]


_ALTER_TABLE = re.compile(rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?({_QUALIFIED})\s+(.*)$", re.S | re.I)
_SUB = [
    ("drop-column", re.compile(rf"^DROP\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?({_IDENT})", re.I)),
    ("add-column", re.compile(rf"^ADD\s+(?:COLUMN\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(?!CONSTRAINT\b)({_IDENT})", re.I)),
    ("set-not-null", re.compile(rf"^ALTER\s+(?:COLUMN\s+)?({_IDENT})\s+SET\s+NOT\s+NULL", re.I)),
    ("drop-not-null", re.compile(rf"^ALTER\s+(?:COLUMN\s+)?({_IDENT})\s+DROP\s+NOT\s+NULL", re.I)),
    ("alter-type", re.compile(rf"^ALTER\s+(?:COLUMN\s+)?({_IDENT})\s+(?:SET\s+DATA\s+)?TYPE\b", re.I)),
]
_DROP_TABLE = re.compile(rf"^DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?({_QUALIFIED})", re.I)
_CREATE_TABLE = re.compile(rf"^CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?({_QUALIFIED})", re.I)
_CREATE_INDEX = re.compile(rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?({_IDENT})\s+"
                           rf"ON\s+(?:ONLY\s+)?({_QUALIFIED})", re.I)
_DROP_INDEX = re.compile(rf"^DROP\s+INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+EXISTS\s+)?({_QUALIFIED})", re.I)


def intended_effects(script: str) -> list[Effect]:
    """Each change the script means to make, in order (one per ALTER TABLE subcommand)."""
    effects = []
    for statement in split_statements(script):
        flat = " ".join(statement.split())
        alter = _ALTER_TABLE.match(flat)
        if alter:
            table = _unquote(alter.group(1))
            for sub in split_top_level(alter.group(2)):
                kind, name = "other", None
                for candidate, pattern in _SUB:
                    m = pattern.match(sub)
                    if m:
                        kind, name = candidate, _unquote(m.group(1))
                        break
                effects.append(Effect(kind, table, name, f'ALTER TABLE {alter.group(1)} {sub}'))
            continue
        for kind, pattern, table_group, name_group in (("drop-table", _DROP_TABLE, 1, None),
                                                       ("create-table", _CREATE_TABLE, 1, None),
                                                       ("create-index", _CREATE_INDEX, 2, 1),
                                                       ("drop-index", _DROP_INDEX, None, 1)):
            m = pattern.match(flat)
            if m:
                effects.append(Effect(kind, _unquote(m.group(table_group)) if table_group else None,
                                      _unquote(m.group(name_group)) if name_group else None, flat))
                break
        else:
            effects.append(Effect("other", None, None, flat))
    return effects


def _column(catalog: dict, table: str, column: str) -> dict | None:
    return next((c for c in catalog.get("columns", []) if c["table"] == table and c["column"] == column), None)


def _table(catalog: dict, table: str) -> bool:
    return any(c["table"] == table for c in catalog.get("columns", []))


def _index(catalog: dict, name: str) -> dict | None:
    return next((i for i in catalog.get("indexes", []) if i["name"] == name), None)


def effect_status(effect: Effect, live: dict, backup: dict, invalid_indexes: set[str] = frozenset()) -> str:
    """``applied``, ``not applied``, ``applied, INVALID`` (an index) or ``unknown``, from the two catalogs."""
    t, name = effect.table, effect.name
    if effect.kind == "drop-column":
        return "applied" if _column(live, t, name) is None and _column(backup, t, name) is not None else \
            "not applied" if _column(live, t, name) is not None else "unknown"
    if effect.kind == "add-column":
        return "applied" if _column(live, t, name) is not None and _column(backup, t, name) is None else \
            "not applied" if _column(live, t, name) is None else "unknown"
    if effect.kind in ("set-not-null", "drop-not-null"):
        column = _column(live, t, name)
        if column is None:
            return "unknown"
        return "applied" if column["nullable"] == (effect.kind == "drop-not-null") else "not applied"
    if effect.kind == "alter-type":
        now, before = _column(live, t, name), _column(backup, t, name)
        if now is None or before is None:
            return "unknown"
        return "applied" if now["type"] != before["type"] else "not applied"
    if effect.kind == "drop-table":
        return "applied" if not _table(live, t) and _table(backup, t) else "not applied" if _table(live, t) else "unknown"
    if effect.kind == "create-table":
        return "applied" if _table(live, t) and not _table(backup, t) else "not applied" if not _table(live, t) \
            else "unknown"
    if effect.kind == "create-index":
        if _index(live, name) is None:
            return "not applied"
        return "applied, INVALID" if name in invalid_indexes else "applied"
    if effect.kind == "drop-index":
        return "applied" if _index(live, name) is None and _index(backup, name) is not None else \
            "not applied" if _index(live, name) is not None else "unknown"
    return "unknown"
