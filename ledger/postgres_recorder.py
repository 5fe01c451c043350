"""The PostgreSQL recorder with the ledger's event-id index (see `ledger.recorders`).

A module of its own because psycopg is an optional extra: it is imported only when the
store is a postgresql:// URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Identifier, Literal

from ledger.recorders import INDEX_TABLE, IndexRow

#: Serialises table creation: PostgreSQL's catalog refuses concurrent CREATE ... IF NOT EXISTS
#: of the same objects ("tuple concurrently updated") when several writers start at once.
_CREATE_LOCK = 0x63726D6C  # "crml"


class PostgresLedgerRecorder(PostgresApplicationRecorder):
    """eventsourcing's PostgreSQL application recorder plus the event-id index."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {0}.{1} (event_id TEXT PRIMARY KEY, "
                "originator_id TEXT NOT NULL, originator_version BIGINT NOT NULL)"
            ).format(Identifier(self.datastore.schema), Identifier(INDEX_TABLE))
        )
        schema, table = (name.replace('"', '""') for name in (self.datastore.schema, self.events_table_name))
        self._next_id_statement = SQL(
            "SELECT setval(pg_get_serial_sequence({0}, 'notification_id'), "
            "COALESCE(MAX(notification_id), 0) + 1, false) FROM {1}.{2}"
        ).format(
            Literal(f'"{schema}"."{table}"'),
            Identifier(self.datastore.schema),
            Identifier(self.events_table_name),
        )

    def create_table(self) -> None:
        with self.datastore.get_connection() as connection:
            connection.execute("SELECT pg_advisory_lock(%s)", (_CREATE_LOCK,))
            try:
                super().create_table()
            finally:
                connection.execute("SELECT pg_advisory_unlock(%s)", (_CREATE_LOCK,))

    def _lock_table(self, curs: Any) -> None:
        """Lock the events table for writing, then have the next notification id follow the
        last stored one.

        A sequence hands out numbers that a rolled-back transaction does not give back, and
        after a crash (a full disk makes PostgreSQL PANIC) it goes on from up to 32 numbers
        ahead: both left gaps in the notification ids, which `audit verify` rightly reports
        as deleted events. With the table locked no other writer takes a number in between.
        """
        super()._lock_table(curs)
        curs.execute(self._next_id_statement, prepare=True)

    def _insert_stored_events(self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        before = kwargs.get("before_events")
        if before is not None:
            # The table is locked first (the insert's own lock is then already held): under
            # REPEATABLE READ the transaction's first statement fixes its snapshot, and the
            # next notification id must be read from a snapshot taken after the lock, or a
            # writer that committed in between has its ids handed out again.
            self._lock_table(curs)
            with curs.connection.cursor() as before_cursor:
                before(before_cursor)
        super()._insert_stored_events(curs, stored_events, **kwargs)
        rows: list[IndexRow] = kwargs.get("event_index") or []
        if rows:
            # A cursor of its own: `curs` still holds the notification ids the insert returned.
            with curs.connection.cursor() as index_cursor:
                index_cursor.executemany(
                    SQL("INSERT INTO {0}.{1} VALUES (%s, %s, %s)").format(
                        Identifier(self.datastore.schema), Identifier(INDEX_TABLE)
                    ),
                    rows,
                )
