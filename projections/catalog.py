"""What a projection database holds: the catalog questions several modules ask."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import duckdb


def existing_tables(connection: Any, names: Iterable[str]) -> dict[str, set[str]]:
    """Which of the tables `names` (`schema.table`) exist, by schema.

    Each is looked up alone (~0.3 ms): listing the catalog loads every table's entry first,
    ~8 ms on a reopened file at 1M events. A lookup of a missing table fails, which aborts a
    transaction: call this outside one.
    """
    found: dict[str, set[str]] = {}
    for name in names:
        try:
            connection.execute(f"SELECT 1 FROM {name} LIMIT 0")
        except duckdb.CatalogException:
            continue
        schema, table = name.split(".", 1)
        found.setdefault(schema, set()).add(table)
    return found
