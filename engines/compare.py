"""Table-by-table equality of two builds of the same read models (DuckDB against Spark).

Rows are compared as multisets (both sides sorted by every column: a model's ORDER BY may
leave ties, and `measures` has no order). Values must be equal, floats too, except within
FLOAT_TOLERANCE where noted: a DOUBLE summed or averaged by an aggregate depends on the
order its rows are added in, which differs between two engines (and between two
partitionings), by a few units in the last place. Every other value must be identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

#: Relative difference allowed between two floats (about 45 units in the last place).
FLOAT_TOLERANCE = 1e-14


@dataclass(frozen=True)
class TableDifference:
    """How one table differs between the two builds (first differing row only)."""

    table: str
    rows_left: int
    rows_right: int
    detail: str


def _same(left: Any, right: Any, exact: bool) -> bool:
    if isinstance(left, float) and isinstance(right, float):
        if math.isnan(left) and math.isnan(right):
            return True
        if left == right:
            return True
        if exact:
            return False
        return abs(left - right) <= FLOAT_TOLERANCE * max(abs(left), abs(right))
    if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        return len(left) == len(right) and all(_same(a, b, exact) for a, b in zip(left, right, strict=True))
    return bool(left == right)


def compare_tables(
    con: duckdb.DuckDBPyConnection,
    left: str,
    right: str,
    tables: Sequence[str],
    *,
    exact: bool = False,
) -> tuple[list[TableDifference], int]:
    """Differences between `left.t` and `right.t` for each table; and how many floats were not bit-equal."""
    differences = []
    inexact = 0
    for table in tables:
        a = con.execute(f"SELECT * FROM {left}.{table} ORDER BY ALL").fetchall()
        b = con.execute(f"SELECT * FROM {right}.{table} ORDER BY ALL").fetchall()
        columns = [d[0] for d in con.execute(f"SELECT * FROM {left}.{table} LIMIT 0").description]
        detail = ""
        if len(a) != len(b):
            detail = f"{len(a)} rows against {len(b)}"
        for row_a, row_b in zip(a, b, strict=False):
            if detail:
                break
            for name, x, y in zip(columns, row_a, row_b, strict=True):
                if not _same(x, y, exact):
                    detail = f"column {name}: {x!r} against {y!r} in row {row_a!r}"
                    break
                if (
                    isinstance(x, float)
                    and isinstance(y, float)
                    and x != y
                    and not (math.isnan(x) and math.isnan(y))
                ):
                    inexact += 1
        if detail:
            differences.append(TableDifference(table, len(a), len(b), detail))
    return differences, inexact
