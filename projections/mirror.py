"""The audit mirror as auditors' tools read it: Arrow record batches, in notification order.

This is the one place that knows where the mirrored log is stored. `audit verify` (the
decoded-column check, the chain) and `audit reproduce` (the rebuild) read the mirror
only through these functions, so they keep working when the mirror's storage changes.
Each batch has the envelope (`notification_id`, `source`, `partition`, `offset`,
`event_type`, `event_id`, `schema_version`), the decoded columns (`occurred_at`,
`recorded_at`, the record's fields, `payload`), the exact Avro bytes `value`, and `chain`.
"""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pyarrow as pa

#: The stable view of the promoted version's mirror.
PROMOTED = "ledger_events"
BATCH_ROWS = 50_000


def mirror_batches(
    connection: duckdb.DuckDBPyConnection, version: str | None = None, batch_rows: int = BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Every mirrored row of a version (default: the promoted one), in notification order."""
    table = PROMOTED if version is None else f"{version}.events"
    yield from connection.sql(f"SELECT * FROM {table} ORDER BY notification_id").to_arrow_reader(batch_rows)
