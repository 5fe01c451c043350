"""The average rank of tied values, as Spearman's rank correlation needs it."""

from __future__ import annotations

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.ranks import average_rank


def _average_ranks(values: list[int | None]) -> list[float]:
    """By the definition: a value's rank is the mean of the positions its ties hold when sorted
    (NULLs last, as DuckDB orders them)."""
    key = sorted(range(len(values)), key=lambda i: (values[i] is None, values[i] or 0))
    positions: dict[int | None, list[int]] = {}
    for position, index in enumerate(key, start=1):
        positions.setdefault(values[index], []).append(position)
    return [sum(positions[v]) / len(positions[v]) for v in values]


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(st.lists(st.one_of(st.none(), st.integers(0, 4)), min_size=1, max_size=12), min_size=1, max_size=4)
)
def test_average_rank_gives_ties_the_mean_of_their_positions(groups: list[list[int | None]]) -> None:
    rows = [(g, i, v) for g, values in enumerate(groups) for i, v in enumerate(values)]
    connection = duckdb.connect()
    connection.execute("CREATE TABLE t (g INTEGER, i INTEGER, v INTEGER)")
    connection.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
    got = connection.execute(f"SELECT g, i, {average_rank('g', 'v')} FROM t ORDER BY g, i").fetchall()
    expected = [(g, i, r) for g, values in enumerate(groups) for i, r in enumerate(_average_ranks(values))]
    assert got == expected
