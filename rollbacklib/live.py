"""What is true now: the catalog as the server shows it, read from the maintenance database.

Whether a step may run, whether it is done, what the outcome of a run is and what its way
back is are answered here, from ``pg_database``, ``pg_stat_activity`` and ``pg_shdescription``
at the moment of asking. ``state.json`` and the journal only say what to look for: the name
of the live database, of the copy and of the kept one, the oid of the original database and
of the copy, and the marker the copy was given when it was validated. A person may have
changed things by hand between two cells; the answer follows the server, not the records.

The databases are told apart by oid, which a rename keeps: the original is the original
wherever it is named, and the copy is the copy. The copy's identity (oid, marker comment,
number of sessions ever opened on it) is checked from here without connecting to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import psycopg

from rollbacklib.checks import Check, compare
from rollbacklib.postgres import database as db
from rollbacklib.postgres.client import database_name

MAX_IDENTIFIER = 63


def _name(base: str, suffix: str) -> str:
    return base[: MAX_IDENTIFIER - len(suffix)] + suffix


def restored_name(database: str, run_id: str) -> str:
    """The copy's own name: no application knows it."""
    return _name(database, f"__restored_{run_id}")


def kept_name(database: str, run_id: str) -> str:
    """The name the original database is kept under once the copy has taken its place."""
    return _name(database, f"__pre_rollback_{run_id}")


def safety_name(database: str, run_id: str) -> str:
    """Strategy in-place's safety copy: the live database as it was before the restore, kept closed."""
    return _name(database, f"__safety_{run_id}")


def safety_copy_oid(events: list[dict]) -> int | None:
    """The oid of the safety copy this run took, as ``safety-copy`` journaled it: what to look for in the catalog."""
    return next((e["evidence"].get("oid") for e in reversed(events) if e["step"] == "safety-copy"
                 and e["status"] == "info" and e["evidence"].get("taken")), None)


def marker_text(run_id: str, plan_digest: str, validation_digest: str) -> str:
    """The comment a validated copy carries until it goes live: who made it, for which plan, what it held."""
    return f"rollbacklib copy run={run_id} plan={plan_digest} validation={validation_digest}"


@dataclass(frozen=True)
class Database:
    name: str
    oid: int
    allow_connections: bool
    connection_limit: int
    sessions: int  # client sessions connected now (not the asker's own)
    sessions_ever: int | None  # pg_stat_database.sessions: every session opened on it since the stats were reset
    comment: str | None

    @property
    def closed(self) -> bool:
        return not self.allow_connections and self.connection_limit == 0

    @property
    def open(self) -> bool:
        return self.allow_connections and self.connection_limit != 0

    def to_dict(self) -> dict:
        return {"name": self.name, "oid": self.oid, "allow_connections": self.allow_connections,
                "connection_limit": self.connection_limit, "sessions": self.sessions}


def read_catalog(admin: psycopg.Connection) -> dict[str, Database]:
    """Every database of the server by name, with its settings, sessions and comment: one query."""
    rows = admin.execute(
        """
        SELECT d.datname, d.oid::bigint, d.datallowconn, d.datconnlimit,
               (SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.oid AND a.pid <> pg_backend_pid()
                  AND a.backend_type = 'client backend'),
               s.sessions, shobj_description(d.oid, 'pg_database')
        FROM pg_database d LEFT JOIN pg_stat_database s ON s.datid = d.oid
        """).fetchall()
    return {r[0]: Database(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows}


def settled_session_count(admin: psycopg.Connection, database: str, attempts: int = 20,
                          pause: float = 0.1) -> int | None:
    """``pg_stat_database.sessions`` of ``database`` once it stops moving (a session counts once its backend exited)."""
    import time

    query = "SELECT s.sessions FROM pg_stat_database s WHERE s.datname = %s"
    last = admin.execute(query, (database,)).fetchone()
    for _ in range(attempts):
        time.sleep(pause)
        now = admin.execute(query, (database,)).fetchone()
        if now == last:
            break
        last = now
    return last[0] if last else None


class Situation(StrEnum):
    """Where a run stands, as the catalog shows it: what resume acts from."""

    SERVER_DOWN = "the server does not answer"
    NOT_READ = "the catalog could not be read (the server answered, but refused the login or the URL)"
    NOT_STARTED = "not started: the original serves, no copy yet"
    COPY_PREPARING = "the original serves; the copy is being prepared (not validated yet)"
    COPY_READY = "the original serves; the validated copy is ready and closed"
    LIVE_BLOCKED = "the original still has the live name but is blocked"
    BETWEEN_RENAMES = "between the renames: the original is kept, the live name is free, the copy waits closed"
    PROMOTED_CLOSED = "the copy has the live name but is still closed"
    DONE = "done: the copy serves under the live name"
    SERVING_ORIGINAL_AGAIN = "the original serves again (after a way back)"
    LIVE_MISSING = "production is down: no database has the live name"
    UNKNOWN = "the live name holds a database this run did not make or keep"


DOWN = {Situation.SERVER_DOWN, Situation.LIVE_BLOCKED, Situation.BETWEEN_RENAMES, Situation.PROMOTED_CLOSED,
        Situation.LIVE_MISSING}


@dataclass
class LiveView:
    """The catalog seen through one run's records: which database is which, and where the run stands."""

    live: str
    kept: str
    copy: str
    catalog: dict[str, Database] | None  # None: the server did not answer
    original_oid: int | None = None
    copy_oid: int | None = None
    marker: str | None = None
    changes_made: bool = False
    error: str | None = None
    maintenance: str = "postgres"
    admin_url: str = field(default="", repr=False)  # where the way back runs; holds the password: never shown

    # --- which database is which, wherever it is named ---
    def _by_oid(self, oid: int | None) -> Database | None:
        if oid is None or self.catalog is None:
            return None
        return next((d for d in self.catalog.values() if d.oid == oid), None)

    def named(self, name: str) -> Database | None:
        return None if self.catalog is None else self.catalog.get(name)

    @property
    def original(self) -> Database | None:
        """The database the run rolls back, by the oid recorded in phase 01 (by name before that)."""
        if self.original_oid is not None:
            return self._by_oid(self.original_oid)
        return self.named(self.live)

    @property
    def the_copy(self) -> Database | None:
        if self.copy_oid is not None:
            return self._by_oid(self.copy_oid)
        return self.named(self.copy)

    @property
    def copy_validated(self) -> bool:
        """The copy exists and carries the marker its validation gave it (or has gone live since)."""
        c = self.the_copy
        return c is not None and self.marker is not None and (c.comment == self.marker or c.name == self.live)

    @property
    def copy_ready(self) -> bool:
        c = self.the_copy
        return self.copy_validated and c.name == self.copy and c.closed and c.sessions == 0

    # --- where the run stands ---
    @property
    def situation(self) -> Situation:
        if self.catalog is None:
            return Situation.SERVER_DOWN if _server_gone(self.error or "") else Situation.NOT_READ
        live, original, copy = self.named(self.live), self.original, self.the_copy
        if live is None:
            if original is not None and original.name == self.kept and copy is not None:
                return Situation.BETWEEN_RENAMES
            return Situation.LIVE_MISSING
        if original is not None and live.oid == original.oid:
            if not live.open:
                return Situation.LIVE_BLOCKED
            if self.changes_made:
                return Situation.SERVING_ORIGINAL_AGAIN
            if self.copy_ready:
                return Situation.COPY_READY
            return Situation.COPY_PREPARING if copy is not None else Situation.NOT_STARTED
        if copy is not None and live.oid == copy.oid:
            return Situation.DONE if live.open else Situation.PROMOTED_CLOSED
        return Situation.UNKNOWN

    @property
    def production_down(self) -> bool:
        return self.situation in DOWN

    def health_line(self) -> str | None:
        """The first thing to say after a failure when production is not serving; None when it is."""
        s = self.situation
        if s is Situation.SERVER_DOWN:
            return f"THE SERVER IS DOWN ({self.error or 'no answer'}), and with it production."
        if s is Situation.LIVE_MISSING:
            return f"PRODUCTION IS DOWN: no database has the live name {self.live}."
        if s is Situation.BETWEEN_RENAMES:
            return f"PRODUCTION IS DOWN: the live name {self.live} is free between the two renames."
        if s is Situation.LIVE_BLOCKED:
            return f"PRODUCTION IS DOWN: {self.live} refuses connections (blocked)."
        if s is Situation.PROMOTED_CLOSED:
            return f"PRODUCTION IS DOWN: {self.live} (the restored copy) is still closed to connections."
        return None

    def describe(self) -> str:
        if self.catalog is None:
            return self.situation.value
        parts = []
        for label, d in (("live name", self.named(self.live)), ("original", self.original), ("copy", self.the_copy)):
            if d is None:
                parts.append(f"{label}: none")
            else:
                how = "open" if d.open else ("closed" if d.closed else
                                             f"allow_connections {d.allow_connections}, limit {d.connection_limit}")
                parts.append(f"{label}: {d.name} ({how}, {d.sessions} session(s))")
        return f"{self.situation.value} [{'; '.join(parts)}]"

    def to_dict(self) -> dict:
        return {"situation": self.situation.name.lower().replace("_", "-"), "says": self.situation.value,
                "production_down": self.production_down,
                "live": (self.named(self.live).to_dict() if self.named(self.live) else None),
                "original": self.original.to_dict() if self.original else None,
                "copy": self.the_copy.to_dict() if self.the_copy else None}

    # --- what a person runs to go back, from what is there now ---
    def way_back(self, previous: dict | None, *, even_if_serving: bool = False) -> list[str]:
        """Statements that put the original back in service from what the catalog shows now.

        Never empty while production is down and the original exists; never names a database
        that does not exist. The copy goes back to its own name (closed, still validated), so a
        resume can use it again. ``previous`` is the original's settings before it was blocked.
        """
        original, live = self.original, self.named(self.live)
        if self.catalog is None or original is None or (self.situation is Situation.DONE and not even_if_serving):
            return []  # DONE: the copy serves; going back is a way back only for a run that failed (its health)
        statements = []
        if original.name != self.live:
            if live is not None:  # the copy (or something else) has the live name: move it aside first
                is_copy = self.the_copy is not None and live.oid == self.the_copy.oid
                target = self.copy if is_copy and self.named(self.copy) is None else _name(self.live, "__aside")
                statements.append(db.rename_statement(self.live, target).as_string(None))
                if is_copy and target == self.copy and self.marker and live.closed:
                    # closed since it was validated: it keeps its identity, so a resume can use it again
                    statements.append(db.comment_statement(self.copy, self.marker).as_string(None))
            statements.append(db.rename_statement(original.name, self.live).as_string(None))
        settings = previous or {"allow_connections": True, "connection_limit": -1}
        if original.allow_connections != settings["allow_connections"] or \
                original.connection_limit != settings["connection_limit"]:
            statements += [s.as_string(None) for s in db.unblock_statements(self.live, settings)]
        return statements

    def copy_identity(self, sessions_at_close: int | None) -> list[Check]:
        """Is the database about to go live the copy that was validated, unchanged? Read without connecting to it.

        Its oid (a re-created database gets a new one), the marker its validation left in its
        comment, that it is still closed with no session, and that no session was ever opened on
        it since it was closed (``pg_stat_database.sessions``).
        """
        copy = self.the_copy
        checks = [Check("the validated copy exists (by oid)", copy is not None, self.copy_oid,
                        copy.name if copy else None)]
        if copy is None:
            return checks
        on_live = copy.name == self.live
        checks.append(Check("the copy has its own name (or the live name)", copy.name in (self.copy, self.live),
                            self.copy, copy.name))
        checks.append(Check("the copy carries its validation's marker", self.marker is not None and (
            copy.comment == self.marker or on_live), self.marker, copy.comment))
        checks.append(compare("the copy is closed, with no session", {"closed": True, "sessions": 0},
                              {"closed": copy.closed, "sessions": copy.sessions}))
        if sessions_at_close is not None and copy.sessions_ever is not None:
            checks.append(compare("no session opened on the copy since it was closed", sessions_at_close,
                                  copy.sessions_ever))
        return checks

    def orphans(self) -> list[dict]:
        """The copy, when it is left beside a serving original: its state and the statement that drops it."""
        copy = self.the_copy
        if copy is None or copy.name == self.live:
            return []
        return [{"database": copy.name, "closed": copy.closed, "validated": self.copy_validated,
                 "drop": db.drop_database_statement(copy.name).as_string(None)}]


# What libpq says when there is no server to talk to (as opposed to one that refuses a login or a URL).
_GONE = ("connection refused", "no such file or directory", "timeout expired", "could not translate host name",
         "server closed the connection unexpectedly", "the database system is shutting down",
         "the database system is starting up", "the database system is in recovery mode", "no route to host",
         "network is unreachable")


def _server_gone(message: str) -> bool:
    text = message.lower()
    return any(sign in text for sign in _GONE)


def view(admin_url: str, *, live: str, run_id: str, original_oid: int | None = None, copy_oid: int | None = None,
         marker: str | None = None, changes_made: bool = False) -> LiveView:
    """Read the catalog now; a server that does not answer is a view with no catalog, never an exception."""
    kept, copy = kept_name(live, run_id), restored_name(live, run_id)
    try:
        with db.connect(admin_url, step="live") as admin:
            catalog = read_catalog(admin)
    except Exception as err:  # noqa: BLE001 - the answer is "the server is down", whatever the reason
        message = getattr(err, "message", None) or str(err)
        return LiveView(live, kept, copy, None, original_oid, copy_oid, marker, changes_made,
                        error=message.splitlines()[0] if message else type(err).__name__,
                        maintenance=database_name(admin_url), admin_url=admin_url)
    return LiveView(live, kept, copy, catalog, original_oid, copy_oid, marker, changes_made,
                    maintenance=database_name(admin_url), admin_url=admin_url)


def psql_command(statements: list[str], admin_url: str) -> str:
    """The way back as one psql invocation that stops at the first error (never goes on past a failed rename).

    Host, port, user and database come from ``admin_url`` (the maintenance database); the
    password never does: psql asks for it, or takes it from ``PGPASSWORD`` / ``~/.pgpass``.
    """
    import shlex

    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(admin_url)
    argv = ["psql", "-X", "-v", "ON_ERROR_STOP=1"]
    for flag, key in (("-h", "host"), ("-p", "port"), ("-U", "user"), ("-d", "dbname")):
        if params.get(key):
            argv += [flag, str(params[key])]
    script = " ".join(s if s.endswith(";") else s + ";" for s in statements)
    return shlex.join(argv + ["-c", script])


def describe_way_back(statements: list[str], maintenance_database: str | None = None) -> str:
    if not statements:
        return "nothing to undo: the original database serves under the live name as it did."
    where = f" on {maintenance_database}" if maintenance_database else ""
    return ("to return the original database to service, run" + where + ", stopping at the first error "
            "(psql -v ON_ERROR_STOP=1): " + " ".join(s if s.endswith(";") else s + ";" for s in statements))
