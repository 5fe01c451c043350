"""Stores each domain event as its Avro wire-format bytes.

The stored state of an event *is* the Kafka message value: the relay forwards it as it
is, the hash chain is computed over it, and auditors can decode it with any Confluent
deserializer. The stored topic is the Avro record's full name.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, MapperDeserialisationError, StoredEvent
from eventsourcing.utils import get_topic

from ledger.domain import EVENT_OWNERS, LedgerAggregate
from ledger.records import epoch_ms
from schemas.codec import AvroCodec
from schemas.errors import DecodeError
from schemas.registry import NAMESPACE

_ENVELOPE = frozenset({"event_id", "occurred_at", "recorded_at"})


class AvroMapper(Mapper[UUID]):
    """An eventsourcing Mapper whose stored form is Confluent-framed Avro."""

    def __init__(self, codec: AvroCodec) -> None:
        # The transcoder is unused: Avro replaces eventsourcing's JSON transcoding.
        super().__init__(transcoder=None)  # type: ignore[arg-type]
        self.codec = codec
        # An aggregate's first stored event (version 1) is its creation, whatever its type:
        # a site's second installation or a contract started again is a later, recorded fact.
        self._topics = {
            event_type: (get_topic(owner), owner.Started, owner.Recorded)
            for event_type, (owner, _) in EVENT_OWNERS.items()
        }

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        event: Any = domain_event
        record = dict(event.data)
        record["event_id"] = event.event_id
        record["occurred_at"] = event.occurred_at
        record["recorded_at"] = epoch_ms(event.timestamp)
        return StoredEvent(
            originator_id=event.originator_id,
            originator_version=event.originator_version,
            topic=f"{NAMESPACE}.{event.event_type}",
            state=self.codec.encode(event.event_type, record),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        try:
            event_type, record = self.codec.decode(stored_event.state)
        except DecodeError as error:
            raise MapperDeserialisationError(
                f"stored event {stored_event.originator_id} v{stored_event.originator_version}: {error}"
            ) from error
        aggregate_topic, started, recorded = self._topics[event_type]
        event_class = started if stored_event.originator_version == 1 else recorded
        state: dict[str, Any] = {
            "originator_id": stored_event.originator_id
            if isinstance(stored_event.originator_id, UUID)
            else UUID(str(stored_event.originator_id)),
            "originator_version": stored_event.originator_version,
            "timestamp": datetime.fromtimestamp(record["recorded_at"] / 1000, tz=UTC),
            "event_type": event_type,
            "event_id": record["event_id"],
            "occurred_at": record["occurred_at"],
            "data": {k: v for k, v in record.items() if k not in _ENVELOPE},
        }
        if issubclass(event_class, LedgerAggregate.Started):
            state["originator_topic"] = aggregate_topic
        domain_event = object.__new__(event_class)
        object.__setattr__(domain_event, "__dict__", state)
        return domain_event
