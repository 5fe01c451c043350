"""The audit mirror as auditors' tools read it: Arrow record batches, in notification order.

The mirror is the shared decoded log of a source (projections.log, a Delta table): the
same rows every version is built from. This is the one place auditors' tools go through
to read it: `audit verify` (the decoded-column check, the chain) and `audit reproduce`
(the rebuild) read the mirror only through these functions, so they keep working when the
log's storage changes. Each batch has the envelope (`notification_id`, `source`,
`partition`, `offset`, `event_type`, `event_id`, `schema_version`), the decoded columns
(`occurred_at`, `recorded_at`, the record's fields, `payload`), the exact Avro bytes
`value`, and `chain`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from crm_ledger.settings import log_root
from projections.log import register_logs

#: The stable view of the promoted version's mirror.
PROMOTED = "ledger_events"
BATCH_ROWS = 50_000


def open_mirror(connection: duckdb.DuckDBPyConnection, projections_db: Path, sources: Sequence[str]) -> None:
    """Make the decoded logs of `sources` readable on `connection` (a plain `connect`).

    Connections from projections.readonly.reader have them already.
    """
    register_logs(connection, log_root(projections_db), sources)


def mirror_batches(
    connection: duckdb.DuckDBPyConnection, version: str | None = None, batch_rows: int = BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Every mirrored row of a version (default: the promoted one), in notification order.

    A version's rows are its `events` view over the log: the decoded events up to its
    as-of moment, without dead letters.
    """
    table = PROMOTED if version is None else f"{version}.events"
    yield from connection.sql(f"SELECT * FROM {table} ORDER BY notification_id").to_arrow_reader(batch_rows)
