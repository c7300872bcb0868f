"""Rows lost by a rollback are found by the table's real primary key, composite keys included."""

from __future__ import annotations

import itertools
import os
import uuid

import psycopg
import pytest

from rollbacklib.validation import sample_difference
from rollbacklib.postgres import database as db
from rollbacklib.postgres.rows import NO_PRIMARY_KEY, lost_rows, missing_keys

_names = itertools.count(1)

ORDER_ITEMS = 'CREATE TABLE order_items ("orderId" text, "productId" int, qty int, PRIMARY KEY ("orderId", "productId"))'
# Text keys a linguistic collation sorts otherwise than bytes do: case, accents, digits (the embedded
# server has only C locales; the enum test below shows a database order Python does not share).
ORDERS = ["A-10", "A-9", "a-1", "Z", "é-1", "e-2", "ß", "10", "9"]


@pytest.fixture
def two_databases(pg_server):
    """The kept pre-rollback database and the restored one: two databases on one server."""
    names = [f"rows_{os.getpid()}_{next(_names)}_{side}" for side in ("kept", "restored")]
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        for name in names:
            admin.execute(db.sql.SQL("CREATE DATABASE {}").format(db.sql.Identifier(name)))
    conns = [psycopg.connect(pg_server.url(name), autocommit=True) for name in names]
    yield conns
    for conn in conns:
        conn.close()
    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        for name in names:
            admin.execute(db.drop_database_statement(name))


def _both(conns, statement: str) -> None:
    for conn in conns:
        conn.execute(statement)


def _insert_order_items(conn, keys) -> None:
    with conn.cursor() as cur:
        cur.executemany('INSERT INTO order_items ("orderId", "productId", qty) VALUES (%s, %s, 1)', keys)


def test_a_composite_key_table_reports_exactly_its_lost_rows(two_databases):
    kept, restored = two_databases
    _both(two_databases, ORDER_ITEMS)
    every = [(order, product) for order in ORDERS for product in (1, 2, 10)]
    lost = [("A-9", 2), ("é-1", 1), ("é-1", 10), ("ß", 1), ("10", 10)]
    _insert_order_items(kept, every)
    _insert_order_items(restored, [k for k in every if k not in lost])
    _insert_order_items(restored, [("only-in-restored", 1)])  # added, not lost: not reported

    result = lost_rows(kept, restored, "order_items")

    assert result.key == ["orderId", "productId"]
    assert result.count == len(lost)
    assert sorted(result.keys) == sorted(lost)
    assert result.to_dict()["keys"] == [list(k) for k in result.keys]


def test_the_count_covers_every_lost_row_while_the_list_is_capped(two_databases):
    kept, restored = two_databases
    _both(two_databases, ORDER_ITEMS)
    kept.execute('INSERT INTO order_items SELECT \'o\' || (g % 97), g, 1 FROM generate_series(1, 30000) g')
    restored.execute('INSERT INTO order_items SELECT \'o\' || (g % 97), g, 1 FROM generate_series(1, 30000) g '
                     'WHERE g % 3 <> 0')

    result = lost_rows(kept, restored, "order_items", limit=7)

    assert result.count == 10000  # more than a fetch: the streams are merged across batches
    assert len(result.keys) == 7
    assert all(product % 3 == 0 for _order, product in result.keys)


def test_integer_and_uuid_keys_are_compared_natively(two_databases):
    kept, restored = two_databases
    _both(two_databases, "CREATE TABLE events (tenant bigint, id uuid, PRIMARY KEY (tenant, id))")
    rows = [(tenant, uuid.UUID(int=n * 2**100 + tenant)) for tenant in (-5, 3, 40) for n in range(1, 6)]
    lost = [rows[1], rows[7], rows[14]]
    with kept.cursor() as cur:
        cur.executemany("INSERT INTO events VALUES (%s, %s)", rows)
    with restored.cursor() as cur:
        cur.executemany("INSERT INTO events VALUES (%s, %s)", [r for r in rows if r not in lost])

    result = lost_rows(kept, restored, "events")

    assert result.count == 3 and sorted(result.keys) == sorted(lost)


def test_a_key_that_sorts_otherwise_than_its_text_is_compared_by_its_text(two_databases):
    kept, restored = two_databases
    _both(two_databases, "CREATE TYPE stage AS ENUM ('zeta', 'alpha', 'mid')")
    _both(two_databases, "CREATE TABLE steps (stage stage, n int, PRIMARY KEY (stage, n))")
    rows = [(stage, n) for stage in ("zeta", "alpha", "mid") for n in (1, 2)]
    with kept.cursor() as cur:
        cur.executemany("INSERT INTO steps VALUES (%s::stage, %s)", rows)
    with restored.cursor() as cur:
        cur.executemany("INSERT INTO steps VALUES (%s::stage, %s)", [r for r in rows if r != ("alpha", 2)])

    result = lost_rows(kept, restored, "steps")

    assert result.count == 1 and result.keys == [("alpha", 2)]  # the enum compared (and shown) as text


def test_a_table_without_a_primary_key_cannot_be_compared(two_databases):
    kept, restored = two_databases
    _both(two_databases, "CREATE TABLE audit_log (message text)")
    kept.execute("INSERT INTO audit_log VALUES ('lost')")

    result = lost_rows(kept, restored, "audit_log")

    assert not result.comparable and result.count is None and result.reason == NO_PRIMARY_KEY


def test_a_table_the_restored_database_lacks_lost_every_row(two_databases):
    kept, restored = two_databases
    kept.execute("CREATE SCHEMA billing")
    kept.execute('CREATE TABLE billing."Invoice" (id int PRIMARY KEY)')
    kept.execute('INSERT INTO billing."Invoice" SELECT generate_series(1, 5)')

    result = lost_rows(kept, restored, "billing.Invoice", limit=2)

    assert result.count == 5 and result.keys == [(1,), (2,)]


def test_missing_keys_merges_two_sorted_streams():
    assert missing_keys([(1,), (2,), (4,), (6,)], [(0,), (2,), (3,), (6,), (7,)], limit=10) == (2, [(1,), (4,)])
    assert missing_keys([], [(1,)], limit=10) == (0, [])
    assert missing_keys([("a", 1), ("a", 2), ("b", 1)], [], limit=1) == (3, [("a", 1)])


def test_the_sample_difference_uses_the_tables_real_key():
    before = [{"orderId": "A", "productId": 1}, {"orderId": "A", "productId": 2}, {"orderId": "B", "productId": 1}]
    after = [{"orderId": "A", "productId": 1}, {"orderId": "B", "productId": 1}]

    lost = sample_difference(before, after, ["orderId", "productId"])

    assert lost["key"] == ["orderId", "productId"] and lost["missing_after"] == [["A", 2]]
    assert sample_difference(before, after, [])["reason"] == NO_PRIMARY_KEY
