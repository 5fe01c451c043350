"""How many rows a writing statement wrote, from its own result.

DuckDB answers `CREATE TABLE … AS`, `INSERT` and `DELETE` with one row holding the count.
A refresh asks whether each of its small key tables is empty before it works on their keys:
taken from the statement that made the table, that costs no `SELECT count(*)` of its own
(~0.6 ms each, a dozen times a refresh).
"""

from __future__ import annotations

from typing import Any


def rows_written(connection: Any, statement: str) -> int:
    """Run `statement` (which writes rows) on `connection` and return how many it wrote."""
    row = connection.execute(statement).fetchone()
    return int(row[0]) if row else 0
