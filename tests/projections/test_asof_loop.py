"""Small ASOF joins as loops: the same rows as the sorted join, the setting always put back."""

from __future__ import annotations

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.asof_loop import DUCKDB_DEFAULT, LOOP_COMPARISONS, small_asof_joins
from projections.transaction import transaction

_JOIN = (
    "SELECT m.employee_id, m.occurred_at, h.team_id FROM measures m ASOF LEFT JOIN history h "
    "ON m.employee_id = h.employee_id AND m.occurred_at >= h.valid_from ORDER BY ALL"
)


def _threshold(connection: duckdb.DuckDBPyConnection) -> int:
    row = connection.execute("SELECT current_setting('asof_loop_join_threshold')").fetchone()
    assert row is not None
    return int(row[0])


def test_the_threshold_is_raised_within_the_bound_and_put_back_even_on_an_error() -> None:
    connection = duckdb.connect()
    connection.execute("CREATE TABLE history AS SELECT range AS valid_from FROM range(400)")
    with small_asof_joins(connection, "history"):
        assert _threshold(connection) == LOOP_COMPARISONS // 400
    assert _threshold(connection) == DUCKDB_DEFAULT
    with pytest.raises(RuntimeError), small_asof_joins(connection, "history"):
        raise RuntimeError("a failed update")
    assert _threshold(connection) == DUCKDB_DEFAULT
    connection.execute("CREATE TABLE large AS SELECT range AS valid_from FROM range(2 * 1000 * 1000)")
    with small_asof_joins(connection, "large"):
        assert _threshold(connection) == DUCKDB_DEFAULT  # a loop would cost more than the sort
    with small_asof_joins(connection, "main.no_history_yet"):  # before a first build
        assert _threshold(connection) == DUCKDB_DEFAULT


def test_a_statement_that_fails_in_the_update_s_transaction_keeps_its_own_error() -> None:
    """Reset inside the aborted transaction, the setting's own reset failed ("Current
    transaction is aborted") and hid the statement's error (a full disk, Ctrl-C)."""
    connection = duckdb.connect()
    connection.execute("CREATE TABLE history AS SELECT range AS valid_from FROM range(400)")
    with (
        pytest.raises(duckdb.CatalogException, match="no_such_table"),
        small_asof_joins(connection, "history"),
        transaction(connection),
    ):
        connection.execute("SELECT * FROM no_such_table")
    assert _threshold(connection) == DUCKDB_DEFAULT
    connection.execute("SELECT 1")  # the connection goes on working


_rows = st.lists(
    st.tuples(st.sampled_from(["e1", "e2", "e3", None]), st.integers(0, 50)), min_size=0, max_size=200
)


@settings(max_examples=60, deadline=None)
@given(measures=_rows, moves=st.lists(st.tuples(st.sampled_from(["e1", "e2", "e3"]), st.integers(0, 50)), max_size=12))
def test_a_looped_join_gives_the_rows_of_the_sorted_join(
    measures: list[tuple[str | None, int]], moves: list[tuple[str, int]]
) -> None:
    connection = duckdb.connect()
    connection.execute("CREATE TABLE measures (employee_id VARCHAR, occurred_at INTEGER)")
    # One row per employee and moment, as team_history has (its last event of the instant).
    history = {(e, at): f"team-{i}" for i, (e, at) in enumerate(moves)}
    connection.execute("CREATE TABLE history (employee_id VARCHAR, valid_from INTEGER, team_id VARCHAR)")
    if measures:
        connection.executemany("INSERT INTO measures VALUES (?, ?)", measures)
    if history:
        connection.executemany("INSERT INTO history VALUES (?, ?, ?)", [(e, at, t) for (e, at), t in history.items()])
    connection.execute("SET asof_loop_join_threshold = 0")  # DuckDB's sorted join, whatever the size
    sorted_join = connection.execute(_JOIN).fetchall()
    with small_asof_joins(connection, "history"):
        assert _threshold(connection) > len(measures)
        assert connection.execute(_JOIN).fetchall() == sorted_join
