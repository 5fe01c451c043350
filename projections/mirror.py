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
from projections.store import events_select_sql, mirror_select_sql, versions_of

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
    promoted = next((v for v in versions_of(connection) if v.promoted), None)
    if promoted is None:  # nothing promoted: the stored view (if any) is all there is
        yield from mirror_batches(connection, batch_rows=batch_rows)
        return
    yield from _through(connection, "crm_defined_mirror", mirror_select_sql(promoted.source), batch_rows)


def defined_batches(
    connection: duckdb.DuckDBPyConnection, source: str, as_of: datetime | None, batch_rows: int = BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """The rows a version of `source` as of `as_of` is built from, in notification order,
    read through the definition of its `events` view rather than the view stored in the file.

    The stored view is part of the database file, so whoever can write the file can narrow
    it (leave out an event) and build tables that agree with it; its definition follows
    from the version's source and as-of moment alone.
    """
    yield from _through(connection, "crm_defined_events", events_select_sql(source, as_of), batch_rows)


def _through(
    connection: duckdb.DuckDBPyConnection, view: str, select: str, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """The rows of `select` in notification order, through a temporary view named `view` on
    `connection` (which may be read-only)."""
    connection.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS {select}")
    yield from connection.sql(f"SELECT * FROM {view} ORDER BY notification_id").to_arrow_reader(batch_rows)
