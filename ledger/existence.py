"""Which aggregate ids a store already holds, asked once per batch instead of once per fact.

eventsourcing's recorders answer one originator at a time; bulk ingest needs the answer
for a few thousand ids at once, so this asks the recorder's own table directly for the
two persistence modules the project supports, and falls back to the portable per-id
query for any other recorder.
"""

from __future__ import annotations

from collections.abc import Collection
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
    """
    if not isinstance(recorder, SQLiteAggregateRecorder) or index_is_empty(recorder):
        return []
    events = recorder.events_table_name
    same_event = "i.originator_id = e.originator_id AND i.originator_version = e.originator_version"
    found: list[tuple[int | None, str | None, str]] = []
    with recorder.datastore.transaction(commit=False) as cursor:
        cursor.execute(
            f"SELECT count(*), min(e.rowid) FROM {events} e "
            f"WHERE NOT EXISTS (SELECT 1 FROM {INDEX_TABLE} i WHERE {same_event})"
        )
        count, first = cursor.fetchone()
        if count:
            found.append((int(first), None, f"{count} stored event(s) missing from the event-id index"))
        cursor.execute(
            f"SELECT count(*), min(i.event_id) FROM {INDEX_TABLE} i "
            f"WHERE NOT EXISTS (SELECT 1 FROM {events} e WHERE {same_event})"
        )
        count, first = cursor.fetchone()
        if count:
            found.append((None, str(first), f"{count} event-id index row(s) naming no stored event"))
        cursor.execute(
            f"SELECT count(*), min(e.rowid), min(i.event_id) FROM {INDEX_TABLE} i "
            f"JOIN {events} e ON {same_event} "
            f"WHERE EXISTS (SELECT 1 FROM {INDEX_TABLE} j WHERE j.originator_id = i.originator_id "
            "AND j.originator_version = i.originator_version AND j.event_id <> i.event_id)"
        )
        count, nid, first = cursor.fetchone()
        if count:
            detail = f"{count} event-id index row(s) naming a stored event another row names too"
            found.append((int(nid), str(first), detail))
    return found
