"""What belongs to a database itself, not to its contents: a dump does not carry it.

``pg_dump`` (without ``--create``) leaves out the database's locale provider, tablespace,
``ALTER DATABASE ... SET`` and ``ALTER ROLE ... IN DATABASE ... SET`` settings, its grants and
its comment. The swap strategy puts a *new* database in place of the live one, so these are
read from the live database and given to the new one, as ``pg_dumpall`` would write them.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

# Settings whose value is a list: each element is quoted on its own (as pg_dumpall does).
LIST_SETTINGS = {"search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries",
                 "shared_preload_libraries", "unix_socket_directories"}


def read_properties(conn: psycopg.Connection, database: str) -> dict:
    """Owner, locale, tablespace, settings, grants and comment of ``database``."""
    row = conn.execute(
        "SELECT to_jsonb(d), pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), t.spcname, "
        "shobj_description(d.oid, 'pg_database') "
        "FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = %s",
        (database,),
    ).fetchone()
    raw, owner, encoding, tablespace, comment = row
    settings = conn.execute(
        "SELECT coalesce(r.rolname, ''), s.setconfig FROM pg_db_role_setting s "
        "LEFT JOIN pg_roles r ON r.oid = s.setrole "
        "WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = %s) ORDER BY 1",
        (database,),
    ).fetchall()
    grants = conn.execute(
        "SELECT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, "
        "a.is_grantable FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s ORDER BY 1, 2",
        (database,),
    ).fetchall()
    return {
        "owner": owner,
        "encoding": encoding,
        "collate": raw["datcollate"],
        "ctype": raw["datctype"],
        "locale_provider": raw.get("datlocprovider", "c"),
        "locale": raw.get("datlocale") or raw.get("daticulocale"),
        "icu_rules": raw.get("daticurules"),
        "tablespace": tablespace,
        "settings": [{"role": role or None, "config": list(config)} for role, config in settings],
        "grants": None if raw.get("datacl") is None else [
            {"grantee": grantee, "privilege": privilege, "grantable": grantable} for grantee, privilege, grantable in grants
        ],
        "comment": comment,
    }


def create_statement(name: str, like: dict) -> sql.Composable:
    """CREATE DATABASE ``name`` with the owner, encoding, locale and tablespace of ``like``."""
    parts = [sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
        sql.Identifier(name), sql.Identifier(like["owner"]), sql.Literal(like["encoding"]),
        sql.Literal(like["collate"]), sql.Literal(like["ctype"]))]
    provider = like.get("locale_provider") or "c"
    if provider == "i":
        parts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(like["locale"])))
        if like.get("icu_rules"):
            parts.append(sql.SQL("ICU_RULES {}").format(sql.Literal(like["icu_rules"])))
    elif provider == "b":
        parts.append(sql.SQL("LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(sql.Literal(like["locale"])))
    if like.get("tablespace") and like["tablespace"] != "pg_default":
        parts.append(sql.SQL("TABLESPACE {}").format(sql.Identifier(like["tablespace"])))
    return sql.SQL(" ").join(parts)


def _setting_value(name: str, value: str) -> sql.Composable:
    if name.lower() not in LIST_SETTINGS:
        return sql.Literal(value)
    return sql.SQL(", ").join(sql.Literal(item) for item in _split_list(value))


def _split_list(value: str) -> list[str]:
    """Split a stored list setting (``"$user", public``) into its elements, unquoting each."""
    items, current, quoted, i = [], [], False, 0
    while i < len(value):
        ch = value[i]
        if ch == '"':
            if quoted and i + 1 < len(value) and value[i + 1] == '"':
                current.append('"')
                i += 1
            else:
                quoted = not quoted
        elif ch == "," and not quoted:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    items.append("".join(current).strip())
    return [item for item in items if item]


def apply_statements(name: str, props: dict) -> list[sql.Composable]:
    """The statements that give database ``name`` the settings, grants and comment in ``props``."""
    target = sql.Identifier(name)
    statements: list[sql.Composable] = []
    for entry in props["settings"]:
        for config in entry["config"]:
            key, _, value = config.partition("=")
            prefix = (sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(entry["role"]), target)
                      if entry["role"] else sql.SQL("ALTER DATABASE {}").format(target))
            statements.append(sql.SQL("{} SET {} TO {}").format(prefix, sql.Identifier(key), _setting_value(key, value)))
    if props["grants"] is not None:
        statements.append(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(target))
        for grant in props["grants"]:
            grantee = sql.SQL("PUBLIC") if grant["grantee"] == "PUBLIC" else sql.Identifier(grant["grantee"])
            statements.append(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                sql.SQL(grant["privilege"]), target, grantee,
                sql.SQL(" WITH GRANT OPTION" if grant["grantable"] else "")))
    if props["comment"]:
        statements.append(sql.SQL("COMMENT ON DATABASE {} IS {}").format(target, sql.Literal(props["comment"])))
    return statements


def comparable(props: dict) -> dict:
    """The properties a rolled-back database must share with the one it replaced."""
    return {k: props[k] for k in ("owner", "encoding", "collate", "ctype", "locale_provider", "locale", "tablespace",
                                  "settings", "grants", "comment")}
