"""Which aggregate ids a store already holds, asked once per batch instead of once per fact.

eventsourcing's recorders answer one originator at a time; bulk ingest needs the answer
for a few thousand ids at once, so this asks the recorder's own table directly for the
two persistence modules the project supports, and falls back to the portable per-id
query for any other recorder.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder

from ledger.recorders import INDEX_TABLE

_SQLITE_CHUNK = 900


def existing_ids(recorder: ApplicationRecorder, ids: Collection[str]) -> set[str]:
    """The subset of aggregate ids (as 32-digit hex) that have at least one stored event."""
    if not ids:
        return set()
    if isinstance(recorder, SQLiteAggregateRecorder):
        return _sqlite_existing(recorder, list(ids))
    try:
        from eventsourcing.postgres import PostgresAggregateRecorder  # noqa: PLC0415 - psycopg is optional
    except ImportError:  # psycopg not installed: PostgreSQL is not in use
        PostgresAggregateRecorder = None  # type: ignore[assignment,misc]  # noqa: N806
    if PostgresAggregateRecorder is not None and isinstance(recorder, PostgresAggregateRecorder):
        return _postgres_existing(recorder, list(ids))
    return {i for i in ids if recorder.select_events(UUID(hex=i), limit=1)}


def _sqlite_existing(recorder: SQLiteAggregateRecorder, ids: list[str]) -> set[str]:
    # eventsourcing's SQLite recorder stores UUID originator ids as their hex.
    found: set[str] = set()
    with recorder.datastore.transaction(commit=False) as cursor:
        for start in range(0, len(ids), _SQLITE_CHUNK):
            chunk = ids[start : start + _SQLITE_CHUNK]
            marks = ",".join("?" * len(chunk))
            cursor.execute(
                f"SELECT DISTINCT originator_id FROM {recorder.events_table_name} "
                f"WHERE originator_id IN ({marks})",
                chunk,
            )
            found.update(row[0] for row in cursor.fetchall())
    return found


def _postgres_existing(recorder: object, ids: list[str]) -> set[str]:
    table = recorder.events_table_name  # type: ignore[attr-defined]
    with recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
        cursor.execute(
            f"SELECT DISTINCT originator_id FROM {table} WHERE originator_id = ANY(%s)",
            ([UUID(hex=i) for i in ids],),
        )
        return {UUID(str(row["originator_id"])).hex for row in cursor.fetchall()}


def indexed_events(recorder: ApplicationRecorder, event_ids: Collection[str]) -> dict[str, bytes]:
    """The stored message of each of `event_ids` the ledger already holds (one query per batch).

    Found through the event-id index joined with the events table, so a batch of duplicates
    (a file imported again) costs one query, not one per fact.
    """
    if not event_ids:
        return {}
    ids = list(event_ids)
    found: dict[str, bytes] = {}
    events = recorder.events_table_name  # type: ignore[attr-defined]
    with recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
        if isinstance(recorder, SQLiteAggregateRecorder):
            for start in range(0, len(ids), _SQLITE_CHUNK):
                chunk = ids[start : start + _SQLITE_CHUNK]
                cursor.execute(
                    f"SELECT i.event_id, e.state FROM {INDEX_TABLE} i JOIN {events} e "
                    "ON e.originator_id = i.originator_id AND e.originator_version = i.originator_version "
                    f"WHERE i.event_id IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                found.update((row[0], bytes(row[1])) for row in cursor.fetchall())
        else:
            cursor.execute(
                f"SELECT i.event_id, e.state FROM {INDEX_TABLE} i JOIN {events} e "
                "ON e.originator_id = i.originator_id::uuid AND e.originator_version = i.originator_version "
                "WHERE i.event_id = ANY(%s)",
                (ids,),
            )
            found.update((row["event_id"], bytes(row["state"])) for row in cursor.fetchall())
    return found


def index_is_empty(recorder: ApplicationRecorder) -> bool:
    """Whether the event-id index has no row (a store written before the index existed).

    Opened read-only, such a store may not even have the index's table: nothing made it.
    """
    with recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
        if isinstance(recorder, SQLiteAggregateRecorder):
            cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (INDEX_TABLE,))
            if not cursor.fetchall():
                return True
        cursor.execute(f"SELECT event_id FROM {INDEX_TABLE} LIMIT 1")
        return not cursor.fetchall()


def index_disagreements(recorder: ApplicationRecorder) -> list[tuple[int | None, str | None, str]]:
    """Where the event-id index and the stored events disagree: (notification id, event id, what).

    The index is not covered by the hash chain, yet it decides what a later ingest takes for
    "already recorded": a row removed lets a fact in twice (and makes a re-import of the same
    file fail on the events' own unique key), a row added under another id refuses a genuine
    fact as a duplicate. Each kind is told once, at its first place, with how many there are.
    SQLite only (the store an auditor's copy is); a store written before the index existed
    (no table, or no row) has nothing to compare.

    Both tables are read once in (originator id, version) order and merged: the index has no
    index on those columns, and a lookup per stored event scanned it whole (hours at 1M).
    """
    if not isinstance(recorder, SQLiteAggregateRecorder) or index_is_empty(recorder):
        return []
    unindexed, unmatched, doubled = _Count(), _Count(), _Count()
    with recorder.datastore.transaction(commit=False) as wrapped:
        # Two cursors of one connection (one snapshot), read side by side in batches.
        cursor = wrapped.sqlite_cursor
        rows = cursor.connection.cursor()
        rows.execute(
            f"SELECT originator_id, originator_version, rowid FROM {recorder.events_table_name} "
            "ORDER BY originator_id, originator_version"
        )
        cursor.execute(
            f"SELECT originator_id, originator_version, event_id FROM {INDEX_TABLE} "
            "ORDER BY originator_id, originator_version, event_id"
        )
        stored, named = _rows(rows), _rows(cursor)
        event, entry = next(stored, None), next(named, None)
        while event is not None or entry is not None:
            if entry is None or (event is not None and event[:2] < entry[:2]):
                assert event is not None
                unindexed.add(int(event[2]), None)
                event = next(stored, None)
            elif event is None or entry[:2] < event[:2]:
                unmatched.add(None, str(entry[2]))
                entry = next(named, None)
            else:
                group = [entry]
                entry = next(named, None)
                while entry is not None and entry[:2] == group[0][:2]:
                    group.append(entry)
                    entry = next(named, None)
                if len(group) > 1:
                    for held in group:
                        doubled.add(int(event[2]), str(held[2]))
                event = next(stored, None)
    found: list[tuple[int | None, str | None, str]] = []
    if unindexed.count:
        detail = f"{unindexed.count} stored event(s) missing from the event-id index"
        found.append((unindexed.nid, None, detail))
    if unmatched.count:
        detail = f"{unmatched.count} event-id index row(s) naming no stored event"
        found.append((None, unmatched.event_id, detail))
    if doubled.count:
        detail = f"{doubled.count} event-id index row(s) naming a stored event another row names too"
        found.append((doubled.nid, doubled.event_id, detail))
    return found


class _Count:
    """How many rows of one kind, and the least notification id and event id among them."""

    def __init__(self) -> None:
        self.count = 0
        self.nid: int | None = None
        self.event_id: str | None = None

    def add(self, nid: int | None, event_id: str | None) -> None:
        self.count += 1
        if nid is not None and (self.nid is None or nid < self.nid):
            self.nid = nid
        if event_id is not None and (self.event_id is None or event_id < self.event_id):
            self.event_id = event_id


def _rows(cursor: Any) -> Iterator[tuple[Any, ...]]:
    while batch := cursor.fetchmany(10_000):
        yield from (tuple(row) for row in batch)
