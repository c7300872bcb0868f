"""Sequences after a full restore: no id is handed out twice.

A restore puts every sequence back where the backup found it, but the database it replaces
went on handing out ids after the backup: clients have seen them (in URLs, in other systems,
in logs). The restored database must never hand one of them out again. So, once the database
that is being replaced takes no more writes (blocked, its sessions ended: its sequences are
final), each of its sequences is read from ``pg_sequences`` and the restored database's
sequence of the same name is set to at least that value (``setval(..., true)``: the next
``nextval`` returns the one after it). A sequence the restored database already has past that
point is left alone; one that only one side has is named, not guessed at. Every statement is
a catalog update of one sequence: the cost grows with the number of sequences, never with the
data. The result is read back from ``pg_sequences`` of the restored database.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psycopg
from psycopg import sql

from rollbacklib.checks import Check

_READ = ("SELECT schemaname, sequencename, last_value, increment_by FROM pg_sequences "
         "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2")


@dataclass(frozen=True)
class Sequence:
    schema: str
    name: str
    last_value: int | None  # None: never used (or not readable by this role)
    increment: int

    @property
    def key(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class SequenceMove:
    """What happens to one sequence of the restored database, and why."""

    sequence: str
    before_rollback: int | None  # the replaced database's last value, final
    restored: int | None  # the restored database's last value, as the backup left it
    action: str  # "set", "already past", "never used", "only restored", "only before"
    statement: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def read_sequences(conn: psycopg.Connection) -> dict[str, Sequence]:
    """Every user sequence of the database ``conn`` is connected to, by ``schema.name``."""
    return {s.key: s for s in (Sequence(*row) for row in conn.execute(_READ).fetchall())}


def setval_statement(seq: Sequence, value: int) -> sql.Composable:
    """``SELECT setval('schema.name', value, true)``: the next ``nextval`` hands out the value after ``value``."""
    return sql.SQL("SELECT setval({}, {}, true)").format(
        sql.Literal(sql.Identifier(seq.schema, seq.name).as_string(None)), sql.SQL(str(int(value))))


def _behind(restored: int | None, before: int, increment: int) -> bool:
    if restored is None:
        return True
    return restored < before if increment > 0 else restored > before


def moves(before: dict[str, Sequence], restored: dict[str, Sequence], conn=None) -> list[SequenceMove]:
    """For each sequence of either side: set it, or why not (``conn`` only renders the statements)."""
    out = []
    for key in sorted(set(before) | set(restored)):
        old, new = before.get(key), restored.get(key)
        if new is None:
            out.append(SequenceMove(key, old.last_value, None, "only before",))
            continue
        if old is None:
            out.append(SequenceMove(key, None, new.last_value, "only restored"))
            continue
        if old.last_value is None:
            out.append(SequenceMove(key, None, new.last_value, "never used"))
        elif _behind(new.last_value, old.last_value, new.increment):
            out.append(SequenceMove(key, old.last_value, new.last_value, "set",
                                    setval_statement(new, old.last_value).as_string(conn)))
        else:
            out.append(SequenceMove(key, old.last_value, new.last_value, "already past"))
    return out


def apply(conn: psycopg.Connection, planned: list[SequenceMove], on_statement=None) -> None:
    """Run every ``set`` move's statement on the restored database (``on_statement(text)`` hears of each)."""
    for move in planned:
        if move.statement:
            conn.execute(move.statement.encode())
            if on_statement:
                on_statement(move.statement)


def verify(conn: psycopg.Connection, before: dict[str, Sequence]) -> list[Check]:
    """Read back from ``pg_sequences``: every sequence both sides have is at or past its value before the rollback."""
    now = read_sequences(conn)
    checks = []
    for key, old in sorted(before.items()):
        new = now.get(key)
        if new is None or old.last_value is None:
            continue
        ok = not _behind(new.last_value, old.last_value, new.increment)
        checks.append(Check(f"{key} hands out no id it handed out before the rollback", ok,
                            f"{'>=' if new.increment > 0 else '<='} {old.last_value}", new.last_value))
    return checks


def furthest(first: dict[str, Sequence], second: dict[str, Sequence]) -> dict[str, Sequence]:
    """Per sequence, the reading further along (two readings of the same database: ids handed out in either)."""
    out = dict(first)
    for key, seq in second.items():
        old = out.get(key)
        if old is None or old.last_value is None or (seq.last_value is not None
                                                      and _behind(old.last_value, seq.last_value, seq.increment)):
            out[key] = seq
    return out


def to_json(seqs: dict[str, Sequence]) -> dict[str, dict]:
    return {k: asdict(s) for k, s in seqs.items()}


def from_json(data: dict[str, dict]) -> dict[str, Sequence]:
    return {k: Sequence(**v) for k, v in data.items()}
