"""A DuckDB tracking recorder: source positions stored in the same transaction as views.

It implements eventsourcing's `TrackingRecorder` (and passes its conformance test case):
for each upstream stream (the ledger, or one Kafka partition) it keeps the highest
position applied, and refuses a position at or below it. The projection engine calls
`record_positions` inside its own transaction, next to the state change.
"""

from __future__ import annotations

from collections.abc import Iterable

import duckdb
from eventsourcing.persistence import IntegrityError, Tracking, TrackingRecorder

from projections.sources import Position
from projections.transaction import transaction


class DuckDBTrackingRecorder(TrackingRecorder):
    """Positions per upstream in `<schema>.tracking`."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, schema: str = "main") -> None:
        self.connection = connection
        self.schema = schema
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.tracking ("
            "application_name VARCHAR PRIMARY KEY, notification_id BIGINT NOT NULL, chain VARCHAR)"
        )

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record one position in its own transaction."""
        with transaction(self.connection):
            self.record_positions([Position(tracking.application_name, tracking.notification_id)])

    def record_positions(self, positions: Iterable[Position]) -> None:
        """Upsert positions inside the caller's open transaction."""
        for position in positions:
            current = self.max_tracking_id(position.stream)
            if current is not None and position.offset <= current:
                raise IntegrityError(
                    f"position {position.offset} of {position.stream!r} is not after {current}"
                )
            self.connection.execute(
                f"INSERT OR REPLACE INTO {self.schema}.tracking VALUES (?, ?, ?)",
                [position.stream, position.offset, position.chain],
            )

    def max_tracking_id(self, application_name: str) -> int | None:
        row = self.connection.execute(
            f"SELECT notification_id FROM {self.schema}.tracking WHERE application_name = ?",
            [application_name],
        ).fetchone()
        return None if row is None else int(row[0])

    def positions(self) -> dict[str, Position]:
        rows = self.connection.execute(
            f"SELECT application_name, notification_id, chain FROM {self.schema}.tracking"
        ).fetchall()
        return {name: Position(name, int(offset), chain) for name, offset, chain in rows}
