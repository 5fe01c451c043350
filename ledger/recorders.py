"""eventsourcing recorders that also keep the ledger's event-id index, in the same transaction.

A client's `event_id` names one fact in the whole ledger, whichever aggregate holds it. The
index table `crm_event_ids(event_id PRIMARY KEY, originator_id, originator_version)` is
written by the same statement batch as the stored events, so the database itself refuses a
second fact under an id (even from a concurrent writer: the loser's transaction fails with
an `IntegrityError` and is decided again), and a duplicate or conflicting record is found
with one indexed query per batch.

The rows to index are passed to `insert_events` as the keyword argument `event_index`
(eventsourcing hands extra keyword arguments of `ProcessingEvent.saved_kwargs` through);
`bulk=True` (from `ledger.bulk`, with originator ids already as hex text) inserts the events
with one `executemany` and returns no notification ids (`bulk_rows` may hand them over as
`(originator id, version, topic, state, event id)` tuples instead of stored-event objects,
and then their index rows are made from them unless `event_index` is given);
`before_events`, a function of the cursor, writes other rows (new personal-data keys) in
the same transaction first.
The PostgreSQL twin is in `ledger.postgres_recorder` (psycopg is an optional extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor

INDEX_TABLE = "crm_event_ids"
#: For bulk batches, the writing connection keeps this many KiB of pages in memory: a batch
#: touches pages all over the two random-key indexes, and with SQLite's default 2 MiB cache
#: they were written out and read back within the transaction. (A fixed amount: it is part
#: of an import's peak memory, which must not grow with the file.)
BULK_CACHE_KIB = 32 * 1024
#: ... and lets the write-ahead log grow to this many pages before copying it back: a
#: checkpoint after every large batch rewrote the same index pages again and again. Each
#: commit still syncs the log (durability of a committed batch is unchanged).
BULK_CHECKPOINT_PAGES = 16384
#: (event id, originator id as 32 hex digits, originator version)
IndexRow = tuple[str, str, int]

#: A numbered event row's key in the events table: (originator id, version).
_by_key = itemgetter(1, 2)
#: ... its originator id alone, and an index row's event id.
_by_originator = itemgetter(1)
_by_event_id = itemgetter(0)


class SQLiteLedgerRecorder(SQLiteApplicationRecorder):
    """eventsourcing's SQLite application recorder plus the event-id index."""

    def construct_create_table_statements(self) -> list[str]:
        statements = super().construct_create_table_statements()
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {INDEX_TABLE} (event_id TEXT PRIMARY KEY, "
            "originator_id TEXT NOT NULL, originator_version INTEGER NOT NULL) WITHOUT ROWID"
        )
        return statements

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        returning: Sequence[int] | None
        before = kwargs.get("before_events")
        if before is not None:
            before(c)
        if kwargs.get("bulk"):
            c.execute(f"PRAGMA cache_size = -{BULK_CACHE_KIB}")
            c.execute(f"PRAGMA wal_autocheckpoint = {BULK_CHECKPOINT_PAGES}")
            # The bulk writer needs no notification ids back: one statement batch instead of a
            # statement per event (rowids are still assigned in the order given).
            given = kwargs.get("bulk_rows")
            # Inserted in key order with the notification ids they would be given in batch
            # order (the next ids after the highest, in this write transaction): the key index
            # of (originator id, version) is then written page by page instead of at random,
            # which at 1M events made each commit write fewer pages (the store's CPU per event
            # 31 -> 26 µs, measured alone), and the table holds exactly the same rows.
            c.execute(f"SELECT MAX(rowid) FROM {self.events_table_name}")
            top = c.fetchone()[0] or 0
            if given is None:
                numbered = [
                    (top + n, s.originator_id, s.originator_version, s.topic, s.state)
                    for n, s in enumerate(stored_events, start=1)
                ]
                numbered.sort(key=_by_key)
            else:
                # One tuple per row, sorted by originator alone: the sort is stable and the
                # bulk writer numbers an aggregate's events in batch order, so this is key
                # order without a key tuple per row (the writing process's Python work per
                # event 3.0 -> 2.1 µs). The order only decides how pages fill, not the rows.
                numbered = [(top + n, r[0], r[1], r[2], r[3]) for n, r in enumerate(given, start=1)]
                numbered.sort(key=_by_originator)
            c.executemany(
                f"INSERT INTO {self.events_table_name} "
                "(rowid, originator_id, originator_version, topic, state) VALUES (?, ?, ?, ?, ?)",
                numbered,
            )
            returning = None
        else:
            returning = super()._insert_events(c, stored_events, **kwargs)
        rows: list[IndexRow] | None = kwargs.get("event_index")
        if rows is None and kwargs.get("bulk") and kwargs.get("bulk_rows"):
            rows = [(r[4], r[0], r[1]) for r in kwargs["bulk_rows"]]
        if rows:
            # In key order (event ids are unique: the id alone is the key): the index's B-tree
            # is then filled page by page, not at random.
            c.executemany(f"INSERT INTO {INDEX_TABLE} VALUES (?, ?, ?)", sorted(rows, key=_by_event_id))
        return returning
