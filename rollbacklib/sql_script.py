"""A SQL script read as PostgreSQL reads it: statements split at the semicolons outside comments, quotes and
dollar quotes, and a list split at the commas outside parentheses and quotes.

The one reader of ``migration.sql`` for the drill's statement-by-statement apply
(``drill/partial_migrate.py``) and for what a migration sets out to change (``strategies/migration_sql.py``).
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(\$[A-Za-z0-9_]*\$).*?\1|;", re.S)


def _keep(statement: str, kept: str) -> str:
    """``statement`` with the tokens that do not start with one of ``kept`` (comments, ``;``) removed."""
    return _TOKEN.sub(lambda m: m.group(0) if m.group(0)[0] in kept else "", statement)


def split_statements(script: str) -> list[str]:
    """The statements of ``script`` as written (comments and the closing ``;`` kept), blank ones left out."""
    statements, start = [], 0
    for match in _TOKEN.finditer(script):
        if match.group(0) == ";":
            statements.append(script[start:match.end()])
            start = match.end()
    statements.append(script[start:])
    return [s.strip() for s in statements if _keep(s, "'\"$").strip(" \n\t;")]


def without_comments(statement: str) -> str:
    """``statement`` with its comments removed and without its closing ``;``."""
    return _keep(statement, "'\"$;").strip().rstrip(";").strip()


def split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses and quotes, each part stripped, blank ones left out."""
    parts, depth, start, quote = [], 0, 0, None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]
