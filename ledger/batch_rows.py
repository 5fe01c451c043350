"""A decided batch as the rows the store receives, and the one way they are written.

The bulk writer decides a batch in the main process; what the store then needs is plain
data: each new event's row, its event-id index row, the personal-data keys made for the
batch and the customers whose keys it deletes. `write_batch` writes them in one
transaction (keys first, events, index) and is used both by the writing thread and by the
writing process (`ledger.write_process`), so the two cannot write differently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, StoredEvent
from eventsourcing.sqlite import SQLiteAggregateRecorder

from ledger.vault import PersonalDataVault
from schemas.registry import NAMESPACE

#: (originator id as 32 hex digits, originator version, topic, stored message, event id); the
#: message may still be the record to encode (see `encoded`).
EventRow = tuple[str, int, str, "bytes | dict[str, Any]", str]
#: Encodes a record of an event type (`schemas.codec.AvroCodec.encode`).
Encode = Callable[[str, Mapping[str, Any]], bytes]


@dataclass(frozen=True, slots=True)
class BatchRows:
    """What one decided batch writes, in notification order (plain data: cheap to pickle)."""

    events: list[EventRow]
    #: Personal-data keys made for the batch's accepted facts (customer id -> key).
    new_keys: dict[str, bytes]
    #: Customers the batch forgets: their keys are deleted with the batch.
    forgotten: list[str]


def encoded(rows: BatchRows, encode: Encode) -> BatchRows:
    """`rows` with every record still to encode encoded (its event type is its topic's name)."""
    if all(isinstance(row[3], bytes) for row in rows.events):
        return rows
    prefix = len(NAMESPACE) + 1
    events: list[EventRow] = [
        row
        if isinstance(row[3], bytes)
        else (row[0], row[1], row[2], encode(row[2][prefix:], row[3]), row[4])
        for row in rows.events
    ]
    return BatchRows(events, rows.new_keys, rows.forgotten)


def write_batch(
    recorder: ApplicationRecorder,
    vault: PersonalDataVault,
    rows: BatchRows,
    committed: Callable[[], None],
) -> None:
    """Write `rows` (every message encoded) in one store transaction; `committed` is called
    once it is committed.

    A failure before `committed` left nothing of the batch in the store; a failure after it
    (wiping SQLite's log of deleted keys) left the batch saved, so it must not be decided again.
    """
    if not rows.events:
        return
    new_keys, forgotten = rows.new_keys, rows.forgotten
    in_event_store = vault.in_event_store

    def keys(cursor: Any) -> None:
        # In the events' own transaction, new keys first, then the forgotten customers' keys
        # deleted (maybe this batch's own): the events, the keys that read them and the
        # forgetting are committed together or not at all.
        if new_keys:
            vault.insert_keys(cursor, new_keys)
        if forgotten:
            vault.delete_keys_in(cursor, forgotten)

    if not in_event_store:
        # Keys in a store of their own: committed before the events encrypted with them;
        # shredded before the forget is saved (a crash in between leaves data unreadable,
        # never readable).
        vault.commit_keys(new_keys)
        vault.delete_keys(forgotten)
    sqlite = isinstance(recorder, SQLiteAggregateRecorder)
    # SQLite takes the rows as they are (`bulk_rows`) and makes their index rows itself;
    # eventsourcing's PostgreSQL recorder wants stored-event objects with UUIDs.
    stored = (
        []
        if sqlite
        else [
            StoredEvent(UUID(hex=h), version, topic, _message(state))
            for h, version, topic, state, _ in rows.events
        ]
    )
    index = None if sqlite else [(event_id, h, version) for h, version, _, _, event_id in rows.events]
    recorder.insert_events(
        stored,
        event_index=index,
        bulk=True,
        bulk_rows=rows.events if sqlite else None,
        before_events=keys if in_event_store and (new_keys or forgotten) else None,
    )
    committed()
    if in_event_store and forgotten:
        vault.wipe_log()


def _message(state: bytes | dict[str, Any]) -> bytes:
    assert isinstance(state, bytes), "encode the batch's records first (`encoded`)"
    return state
