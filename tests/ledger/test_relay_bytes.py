"""The relay reads bytes: same output as decoding every event in full, on both stores."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_ledger.kafka import consumer_config, delete_topics
from crm_ledger.settings import Settings
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from ledger.relay import KEY_FIELDS, Outgoing, Relay, RelayConfig, message_key
from ledger.stored_log import read_stored
from schemas.codec import HEADER, AvroCodec
from schemas.errors import DecodeError
from schemas.peek import FieldPeek
from schemas.registry import SchemaRegistry


def _filled(settings: Settings, tmp_path: Path) -> LedgerApplication:
    app = LedgerApplication(settings.eventsourcing_env())
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=150, employees=10, months=2, seed=9), handle)
    ingest_records(app, read_file(history, RecordParser(app.registry)), RejectSink(None, echo=None))
    return app


class FullDecodeRelay(Relay):
    """The relay as it was: eventsourcing notifications, every event decoded in full."""

    def _read_batch(self, start: int) -> list[Outgoing]:
        notifications = list(self.app.read_notifications(start, self.config.batch_size))
        decoded = self.codec.decode_many([n.state for n in notifications])
        batch = []
        for notification, result in zip(notifications, decoded, strict=True):
            assert not isinstance(result, Exception)
            event_type, record = result
            key = message_key(record)
            event_id = record["event_id"].encode()
            batch.append(Outgoing(notification.id, notification.state, event_type.encode(), event_id, key))
        return batch


def test_stored_rows_are_the_notification_log(settings: Settings, store_kind: str, tmp_path: Path) -> None:
    app = _filled(settings, tmp_path)
    expected = [(n.id, n.state) for n in app.read_notifications(1, 1_000_000)]
    assert read_stored(app.recorder, 1, 1_000_000) == expected
    assert read_stored(app.recorder, 7, 5) == expected[6:11]
    assert read_stored(app.recorder, len(expected) + 1, 10) == []


def test_peeked_fields_equal_a_full_decode(settings: Settings, store_kind: str, tmp_path: Path) -> None:
    app = _filled(settings, tmp_path)
    peek = FieldPeek(app.codec, ("event_id", *KEY_FIELDS))
    states = [state for _, state in read_stored(app.recorder, 1, 1_000_000)]
    assert len({app.codec.decode(s)[0] for s in states}) > 10  # many event types
    for state in states:
        event_type, record = app.codec.decode(state)
        peeked_type, fields = peek.peek(state)
        assert peeked_type == event_type
        assert fields["event_id"] == record["event_id"].encode()
        assert message_key(fields) == message_key(record)


def test_peek_refuses_what_it_cannot_read(registry: SchemaRegistry) -> None:
    codec = AvroCodec(registry, epoch_millis=True)
    peek = FieldPeek(codec, ("event_id", *KEY_FIELDS))
    good = codec.encode(
        "EmployeeLeft", {"event_id": "e" * 36, "occurred_at": 1, "recorded_at": 2, "employee_id": "emp-1"}
    )
    assert peek.peek(good) == ("EmployeeLeft", {"event_id": b"e" * 36, "employee_id": b"emp-1"})
    for bad in (b"\x00\x00", b"\x01" + good[1:], HEADER.pack(0, 4242) + good[5:], good[:20]):
        with pytest.raises(DecodeError):
            peek.peek(bad)


@pytest.fixture(scope="module")
def stored_messages(tmp_path_factory: pytest.TempPathFactory) -> tuple[FieldPeek, list[bytes]]:
    """The relay's peek and the stored messages of a small generated ledger (every event type
    it makes)."""
    folder = tmp_path_factory.mktemp("peek")
    app = _filled(Settings(store=str(folder / "l.sqlite")), folder)
    try:
        peek = FieldPeek(app.codec, ("event_id", *KEY_FIELDS))
        return peek, [state for _, state in read_stored(app.recorder, 1, 1_000_000)]
    finally:
        app.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_cut_or_damaged_message_is_read_whole_or_refused(
    stored_messages: tuple[FieldPeek, list[bytes]], data: st.DataObject
) -> None:
    """A message cut short gives what the whole one gives (when its wanted fields are all
    there) or a DecodeError; a damaged one gives fields or a DecodeError, nothing else."""
    peek, messages = stored_messages
    message = data.draw(st.sampled_from(messages))
    whole = peek.peek(message)
    cut = message[: data.draw(st.integers(0, len(message)))]
    with contextlib.suppress(DecodeError):
        assert peek.peek(cut) == whole
    at = data.draw(st.integers(0, len(message) - 1))
    damaged = message[:at] + bytes([data.draw(st.integers(0, 255))]) + message[at + 1 :]
    try:
        event_type, fields = peek.peek(damaged)
    except DecodeError:
        return
    assert isinstance(event_type, str)
    assert all(value is None or isinstance(value, bytes) for value in fields.values())


def _committed(
    bootstrap: str, topic: str
) -> dict[int, tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]]:
    """notification id -> (partition, key, value, headers) of every committed record."""
    consumer = Consumer(consumer_config(bootstrap, f"check-{topic}"))
    partitions = list(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    found = {}
    at_end: set[int] = set()
    while len(at_end) < len(partitions):
        for message in consumer.consume(1000, timeout=1.0):
            if message.error():
                at_end.add(message.partition())
                continue
            headers = list(message.headers() or [])
            nid = int(dict(headers)["notification_id"])
            found[nid] = (message.partition(), message.key(), message.value(), headers)
    consumer.close()
    return found


@pytest.mark.kafka
def test_relay_output_is_byte_identical_to_full_decoding(
    kafka_bootstrap: str, topic: str, settings: Settings, store_kind: str, tmp_path: Path
) -> None:
    app = _filled(settings, tmp_path)
    reference = f"{topic}.reference"
    for name, relay_class in ((topic, Relay), (reference, FullDecodeRelay)):
        config = RelayConfig(
            kafka_bootstrap, name, partitions=3, transactional_id=f"relay-{name}", batch_size=400
        )
        assert relay_class(app, config).run() == app.max_position()
    try:
        fast, slow = _committed(kafka_bootstrap, topic), _committed(kafka_bootstrap, reference)
    finally:
        delete_topics(kafka_bootstrap, [reference])
    assert len(fast) == app.max_position()
    assert fast == slow  # partition, key, value and headers (in order) of every notification
