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
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from crm_ledger.settings import log_root
from projections.log import register_logs
from projections.store import events_select_sql, mirror_select_sql

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


def promoted_mirror_batches(
    connection: duckdb.DuckDBPyConnection, batch_rows: int = BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """`mirror_batches` of the promoted mirror, read through the definition of `ledger_events`
    rather than the view stored in the file (see `defined_batches`: a stored view rewritten
    to show other values than its log holds would hide an altered log from the checks)."""
    source = _promoted_source(connection)
    if source is None:  # nothing promoted: the stored view (if any) is all there is
        yield from mirror_batches(connection, batch_rows=batch_rows)
        return
    connection.execute(f"CREATE OR REPLACE TEMP VIEW crm_defined_mirror AS {mirror_select_sql(source)}")
    sql = "SELECT * FROM crm_defined_mirror ORDER BY notification_id"
    yield from connection.sql(sql).to_arrow_reader(batch_rows)


def _promoted_source(connection: duckdb.DuckDBPyConnection) -> str | None:
    try:
        row = connection.execute(
            "SELECT v.source FROM main.crm_promoted p JOIN main.crm_versions v ON v.version = p.version "
            "WHERE p.id = 1"
        ).fetchone()
    except duckdb.CatalogException:
        return None
    return None if row is None else str(row[0])


def defined_batches(
    connection: duckdb.DuckDBPyConnection, source: str, as_of: datetime | None, batch_rows: int = BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """The rows a version of `source` as of `as_of` is built from, in notification order,
    read through the definition of its `events` view rather than the view stored in the file.

    The stored view is part of the database file, so whoever can write the file can narrow
    it (leave out an event) and build tables that agree with it; its definition follows
    from the version's source and as-of moment alone. A temporary view on `connection`
    (which may be read-only) holds it.
    """
    defined = events_select_sql(source, as_of)
    connection.execute(f"CREATE OR REPLACE TEMP VIEW crm_defined_events AS {defined}")
    sql = "SELECT * FROM crm_defined_events ORDER BY notification_id"
    yield from connection.sql(sql).to_arrow_reader(batch_rows)
