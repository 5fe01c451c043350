"""The real broker: transactional produce, read_committed consume, aborted data invisible."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer

from crm_ledger.kafka import consumer_config, ensure_topic
from schemas.codec import AvroCodec
from schemas.registry import SchemaRegistry

pytestmark = pytest.mark.kafka


def _consume_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = Consumer(consumer_config(bootstrap, f"g-{topic}"))
    consumer.subscribe([topic])
    values: list[bytes] = []
    eofs = 0
    try:
        while eofs < 1 or len(values) < expected:
            for message in consumer.consume(100, timeout=1.0):
                if message.error():
                    eofs += 1
                    continue
                values.append(message.value())
            if eofs and len(values) >= expected:
                break
    finally:
        consumer.close()
    return values


def test_transactional_produce_and_read_committed_consume(
    kafka_bootstrap: str, topic: str, registry: SchemaRegistry
) -> None:
    codec = AvroCodec(registry, epoch_millis=True)
    ensure_topic(kafka_bootstrap, topic, 1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{topic}"})
    producer.init_transactions(30)
    records = [
        {
            "event_id": f"e{i}",
            "occurred_at": i,
            "recorded_at": i,
            "customer_id": f"c{i}",
            "reason": None,
        }
        for i in range(5)
    ]
    producer.begin_transaction()
    producer.produce(topic, codec.encode("CustomerForgotten", {**records[0], "customer_id": "aborted"}))
    producer.abort_transaction(30)
    producer.begin_transaction()
    for record in records:
        producer.produce(topic, codec.encode("CustomerForgotten", record), key=record["customer_id"].encode())
    producer.commit_transaction(30)

    values = _consume_all(kafka_bootstrap, topic, len(records))
    assert [codec.decode(v)[1] for v in values] == records
