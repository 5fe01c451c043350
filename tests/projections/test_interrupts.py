"""A stop asked for interrupts the DuckDB statement under way; the transaction rolls back."""

from __future__ import annotations

import threading
import time

import duckdb
import pytest

from projections.interrupts import statements_interrupted_on_stop
from projections.transaction import transaction

#: A statement that runs for minutes unless interrupted.
_LONG = "CREATE TABLE t AS SELECT i, i * 2 AS j FROM range(100000000000) r(i)"


def test_a_stop_interrupts_the_running_statement_and_nothing_is_written() -> None:
    connection = duckdb.connect()
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with (
        pytest.raises(duckdb.InterruptException),
        statements_interrupted_on_stop(lambda: connection, stop.is_set),
        transaction(connection),
    ):
        connection.execute("CREATE TABLE kept_out AS SELECT 1 AS a")
        connection.execute(_LONG)
    assert time.monotonic() - started < 10
    assert connection.execute("SELECT count(*) FROM duckdb_tables()").fetchone() == (0,)


def test_a_stop_asked_between_statements_stops_the_next_one() -> None:
    """DuckDB forgets an interrupt with nothing running: the watcher asks again."""
    connection = duckdb.connect()
    stop = threading.Event()
    with pytest.raises(duckdb.InterruptException), statements_interrupted_on_stop(lambda: connection, stop.is_set):
        stop.set()
        time.sleep(0.3)  # several polls with nothing running
        connection.execute(_LONG)


def test_without_a_stop_the_block_runs_to_its_end() -> None:
    connection = duckdb.connect()
    with statements_interrupted_on_stop(lambda: connection, lambda: False):
        connection.execute("CREATE TABLE t AS SELECT * FROM range(1000000)")
        time.sleep(0.15)
    assert connection.execute("SELECT count(*) FROM t").fetchone() == (1000000,)
    with statements_interrupted_on_stop(lambda: None, lambda: True):
        time.sleep(0.15)  # no connection open: nothing to interrupt, no error
