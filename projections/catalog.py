"""What a projection database holds: the catalog questions several modules ask."""

from __future__ import annotations

from typing import Any


def table_names(connection: Any, schema: str) -> set[str]:
    """The names of the (non-temporary) tables of `schema` in the connection's database."""
    rows = connection.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = ? AND NOT temporary",
        [schema],
    ).fetchall()
    return {str(row[0]) for row in rows}
