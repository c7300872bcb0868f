"""Fixtures: one real embedded PostgreSQL server per test session, a fresh database per test."""

from __future__ import annotations

import itertools
import os

import psycopg
import pytest

from rollbacklib.embedded import start_server

_counter = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("pg") / "pgdata", delete_on_stop=True)
    yield server
    server.stop()


@pytest.fixture
def fresh_db(pg_server, request):
    """The URL of a new, empty database on the session's server."""
    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_server.url(name)
