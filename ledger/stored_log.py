"""The notification log read as (notification id, stored bytes) pairs, straight from the store.

eventsourcing's `select_notifications` builds a `Notification` and a `UUID` per row; the
relay needs neither, only the id and the stored state (the Avro message it forwards). This
reads the recorder's own events table:

- SQLite (`eventsourcing.sqlite`): table `stored_events`, the notification id is the
  table's `rowid`;
- PostgreSQL (`eventsourcing.postgres`): table `<schema>.stored_events`, column
  `notification_id` (a `bigserial`; inserts hold the table's EXCLUSIVE lock, so ids commit
  in order).

Any other recorder is read through `select_notifications`.
"""

from __future__ import annotations

from typing import Any

from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder

#: (notification id, stored state)
StoredRow = tuple[int, bytes]


def read_stored(recorder: ApplicationRecorder, start: int, limit: int) -> list[StoredRow]:
    """Up to `limit` notifications from id `start` (inclusive), in order."""
    if isinstance(recorder, SQLiteAggregateRecorder):
        statement = (
            f"SELECT rowid, state FROM {recorder.events_table_name} WHERE rowid >= ? ORDER BY rowid LIMIT ?"
        )
        with recorder.datastore.transaction(commit=False) as cursor:
            # The raw sqlite3 cursor, rows as plain tuples: no per-row mapping object.
            raw = cursor.sqlite_cursor
            raw.row_factory = None
            raw.execute(statement, (start, limit))
            return [(int(row[0]), bytes(row[1])) for row in raw.fetchall()]
    if _is_postgres(recorder):
        datastore: Any = recorder.datastore  # type: ignore[attr-defined]
        table = f'"{datastore.schema}"."{recorder.events_table_name}"'  # type: ignore[attr-defined]
        with datastore.transaction(commit=False) as cursor:
            cursor.execute(
                f"SELECT notification_id, state FROM {table} WHERE notification_id >= %s "
                "ORDER BY notification_id LIMIT %s",
                (start, limit),
            )
            return [(int(row["notification_id"]), bytes(row["state"])) for row in cursor.fetchall()]
    return [(n.id, n.state) for n in recorder.select_notifications(start=start, limit=limit)]


def _is_postgres(recorder: ApplicationRecorder) -> bool:
    try:
        from eventsourcing.postgres import PostgresApplicationRecorder  # noqa: PLC0415 - psycopg is optional
    except ImportError:  # psycopg not installed: PostgreSQL is not in use
        return False
    return isinstance(recorder, PostgresApplicationRecorder)
