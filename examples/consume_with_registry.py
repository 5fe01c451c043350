"""Read crm-ledger's topics the way a downstream team would: standard Confluent clients only.

Nothing from this repository is imported. The consumer is confluent-kafka's
`DeserializingConsumer` with an `AvroDeserializer` that resolves each message's schema id
through a `SchemaRegistryClient`; isolation is read_committed, so aborted relay
transactions are never seen. Every message is printed as one JSON line:

    {"topic": ..., "partition": ..., "offset": ..., "key": ..., "value": {...} or null}

Needs `pip install 'confluent-kafka[avro,schemaregistry]'`. Example:

    python examples/consume_with_registry.py --bootstrap 127.0.0.1:9092 \\
        --registry http://127.0.0.1:8081/apis/ccompat/v7

By default it reads every topic from the beginning and stops at the end of each partition.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from confluent_kafka import DeserializingConsumer, KafkaError, TopicPartition
from confluent_kafka.error import ConsumeError
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import StringDeserializer

TOPICS = (
    "crm.ledger.events",
    "crm.projection.customer-profile",
    "crm.projection.reward-score",
    "crm.projection.reward-statement",
)


def jsonable(value: Any) -> Any:
    """Avro values as JSON: timestamps as ISO-8601 (UTC), bytes as base64."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def consume(bootstrap: str, registry_url: str, topics: list[str], group: str) -> Iterator[dict[str, Any]]:
    """Every committed message of `topics` from the beginning, decoded through the registry."""
    registry = SchemaRegistryClient({"url": registry_url})
    consumer = DeserializingConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "key.deserializer": StringDeserializer("utf_8"),
            # No reader schema: each record is returned as its writer's schema (the id in the
            # message) describes it. A team that wants one shape per type passes its schema here.
            "value.deserializer": AvroDeserializer(registry),
        }
    )
    try:
        metadata = consumer.list_topics(timeout=30)
        partitions = [
            TopicPartition(topic, p, 0)
            for topic in topics
            if topic in metadata.topics
            for p in metadata.topics[topic].partitions
        ]
        # A long-running consumer would `subscribe`; assigning every partition lets this
        # example read each topic once from the start and know when it has reached the end.
        consumer.assign(partitions)
        pending = {(tp.topic, tp.partition) for tp in partitions}
        while pending:
            try:
                message = consumer.poll(1.0)
            except ConsumeError as error:
                if error.code == KafkaError._PARTITION_EOF:
                    eof = error.kafka_message
                    pending.discard((eof.topic(), eof.partition()))
                    continue
                raise
            if message is None:
                continue
            yield {
                "topic": message.topic(),
                "partition": message.partition(),
                "offset": message.offset(),
                "key": message.key(),
                "value": jsonable(message.value()),
            }
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument(
        "--registry",
        default="http://127.0.0.1:8081/apis/ccompat/v7",
        help="schema registry URL (Confluent API)",
    )
    parser.add_argument("--topic", action="append", help="topic to read (repeatable; default: all four)")
    parser.add_argument("--group", default=f"downstream-example-{uuid.uuid4().hex[:8]}")
    args = parser.parse_args(argv)
    for record in consume(args.bootstrap, args.registry, args.topic or list(TOPICS), args.group):
        sys.stdout.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
