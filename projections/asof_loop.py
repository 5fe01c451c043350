"""Small ASOF joins as nested loops, within a bound on the comparisons.

Measure rows get their team from `team_history` by an ASOF join. DuckDB's ASOF join sorts
and partitions both sides whatever their size: ~9 ms for the few hundred rows of a live
refresh against a few hundred history rows, a sixtieth of the refresh. Below
`asof_loop_join_threshold` rows on the left it loops over the right side instead, with the
same result. The threshold is raised only as far as such a loop stays within
`LOOP_COMPARISONS`, so a large history keeps the sorted join.

The setting belongs to the connection, not to a transaction: it is raised before the
update's transaction begins and put back after it ends. Inside, a failed statement aborts
the transaction, and putting it back there would fail too, hiding the statement's error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

#: Comparisons a loop may make in place of the sorted join (a few milliseconds).
LOOP_COMPARISONS = 1_000_000
#: DuckDB's own threshold, kept when the history is too large to loop over.
DUCKDB_DEFAULT = 64


@contextmanager
def small_asof_joins(connection: duckdb.DuckDBPyConnection, history: str) -> Iterator[None]:
    """Within the block, ASOF joins against the table `history` loop when their left side is
    small. Enter it outside a transaction (see the module's docstring); a `history` that does
    not exist yet (before a first build) leaves DuckDB's default."""
    try:
        row = connection.execute(f"SELECT count(*) FROM {history}").fetchone()
    except duckdb.CatalogException:
        yield
        return
    rows = int(row[0]) if row else 0
    threshold = max(DUCKDB_DEFAULT, LOOP_COMPARISONS // max(1, rows))
    connection.execute(f"SET SESSION asof_loop_join_threshold = {threshold}")
    try:
        yield
    except BaseException:
        # The block's own error is what the user must see, whatever befalls the reset.
        with contextlib.suppress(duckdb.Error):
            connection.execute("RESET SESSION asof_loop_join_threshold")
        raise
    connection.execute("RESET SESSION asof_loop_join_threshold")
