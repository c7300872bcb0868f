"""Select parts of a plain pg_dump script (``*.sql`` or ``*.sql.gz``), as ``pg_restore -L`` selects archive entries.

A plain script cannot be restored table by table: ``pg_restore -t`` reads archives only. This
filter streams the script once and keeps only some of its entries, each found by the header
pg_dump writes before it (``-- Name: X; Type: T; Schema: S; Owner: O``, or ``-- Data for Name:``
for a table's rows); a ``COPY ... FROM stdin`` block is passed or skipped whole, never parsed
for headers. Owner changes (``ALTER ... OWNER TO``) and grants are always dropped: the
surgical side restore and the schema read run as the restoring role.

- ``--schema-only``: every entry but table data, sequence values and grants;
- ``--pre-data --data SCHEMA.TABLE ...``: tables, types and sequences without their keys,
  constraints, indexes or triggers (a side copy of a few tables cannot satisfy foreign keys to
  the others), plus the rows of the named tables only.

The cost of a plain script is that the whole file is read and decompressed whatever is kept:
time in proportion to the backup, though only the kept tables are written. Run as a program
(``python -m rollbacklib.surgical.plain_dump``), it writes the selection to stdout, so the step
that uses it runs and shows the very pipeline ``filter | psql``.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

HEADER = re.compile(rb"^-- (Data for )?Name: (?P<name>.*); Type: (?P<type>[A-Z ]+); Schema: (?P<schema>[^;]*);")
COPY_START = re.compile(rb"^COPY .* FROM stdin;\s*$")
OWNER = re.compile(rb"^ALTER [A-Z ]+ .* OWNER TO .*;\s*$")
ALWAYS = (b"\\restrict", b"\\unrestrict")
POST_DATA = {b"CONSTRAINT", b"FK CONSTRAINT", b"INDEX", b"TRIGGER", b"RULE", b"POLICY", b"EVENT TRIGGER",
             b"PUBLICATION TABLE", b"MATERIALIZED VIEW DATA", b"DEFAULT ACL"}
NEVER = {b"ACL", b"SEQUENCE SET", b"TABLE DATA"}


def select(lines: Iterable[bytes], *, schema_only: bool = False, data: set[tuple[str, str]] = frozenset()) -> Iterator[bytes]:
    """The lines of the entries kept (see the module's docstring); the preamble is always kept."""
    keep, in_copy, pending = True, False, []
    for line in lines:
        if in_copy:
            if keep:
                yield line
            in_copy = line.rstrip(b"\r\n") != b"\\."
            continue
        if line.startswith(ALWAYS):
            yield line
            continue
        match = HEADER.match(line)
        if match:
            kind, name, nsp = match["type"], match["name"].decode(), match["schema"].decode()
            if kind == b"TABLE DATA":
                keep = not schema_only and (nsp, name) in data
            elif schema_only:
                keep = kind not in NEVER
            else:
                keep = kind not in NEVER and kind not in POST_DATA
            if keep and pending:
                yield from pending
            pending = []
            if keep:
                yield line
            continue
        if line.rstrip(b"\r\n") == b"--":  # the comment line that opens the next header: held until it is read
            pending.append(line)
            continue
        if pending and keep:
            yield from pending
        pending = []
        if COPY_START.match(line):
            in_copy = True
        if keep and not OWNER.match(line):
            yield line
    if keep:
        yield from pending


def open_script(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def command(path: Path, *, schema_only: bool = False, data: Iterable[tuple[str, str]] = ()) -> list[str]:
    """The argv that writes the selection of ``path`` to stdout (this module, as a program)."""
    argv = [sys.executable, "-m", "rollbacklib.surgical.plain_dump"]
    argv += ["--schema-only"] if schema_only else ["--pre-data"] + [f"--data={s}.{t}" for s, t in sorted(data)]
    return argv + [str(path)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--schema-only", action="store_true")
    mode.add_argument("--pre-data", action="store_true")
    parser.add_argument("--data", action="append", default=[], metavar="SCHEMA.TABLE")
    parser.add_argument("script", type=Path)
    args = parser.parse_args(argv)
    data = {tuple(d.split(".", 1)) for d in args.data}
    out = sys.stdout.buffer
    try:
        with open_script(args.script) as source:
            for line in select(source, schema_only=args.schema_only, data=data):
                out.write(line)
        out.flush()
    except BrokenPipeError:
        return 1  # the reader (psql) stopped: its own exit status says why
    except (OSError, EOFError) as err:
        print(f"plain_dump: reading {args.script} failed: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
