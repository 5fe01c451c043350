"""Downstream: read-model changes on compacted Kafka topics, Avro in the wire format."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from confluent_kafka import Consumer, TopicPartition

from crm_ledger.kafka import consumer_config
from crm_ledger.settings import Settings
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from projections.publish import FEEDS
from tests.helpers import assert_gives_up_on_a_missing_broker, run_cli

pytestmark = pytest.mark.kafka


def latest_by_key(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    consumer = Consumer(consumer_config(bootstrap, f"read-{topic}"))
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    latest: dict[bytes, bytes | None] = {}
    done: set[int] = set()
    while len(done) < len(partitions):
        for message in consumer.consume(1000, timeout=1.0):
            if message.error():
                done.add(message.partition())
                continue
            latest[message.key()] = message.value()
    consumer.close()
    return latest


def test_project_publish_sends_changes_once(kafka_bootstrap: str, settings: Settings, tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=120, employees=8, months=2, seed=3), handle)
    app = LedgerApplication(settings.eventsourcing_env())
    ingest_records(app, read_file(history, RecordParser(app.registry)), RejectSink(None, echo=None))
    env = {
        "CRM_LEDGER_STORE": settings.store,
        "CRM_LEDGER_DB": str(settings.projections_db),
        "CRM_LEDGER_BOOTSTRAP": kafka_bootstrap,
    }
    first = run_cli("project", "--publish", env=env)
    assert first.returncode == 0, first.stderr
    again = run_cli("publish", env=env)
    assert again.returncode == 0 and "published 0 to crm.projection.customer-profile, 0 to" in again.stderr
    with duckdb.connect(str(settings.projections_db), read_only=True) as con:
        profiles = con.execute("SELECT customer_id, interactions_total FROM customer_profile").fetchall()
        scores = con.execute("SELECT employee_id || '|' || period, score FROM reward_score").fetchall()
    published = latest_by_key(kafka_bootstrap, FEEDS[0].topic)
    assert {k.decode() for k in published} == {c for c, _ in profiles}
    decoded = {k.decode(): app.codec.decode(v)[1] for k, v in published.items() if v is not None}
    assert {c: decoded[c]["interactions_total"] for c, _ in profiles} == dict(profiles)
    published_scores = latest_by_key(kafka_bootstrap, FEEDS[1].topic)
    assert {
        k.decode(): app.codec.decode(v)[1]["score"] for k, v in published_scores.items() if v
    } == pytest.approx(dict(scores))


def test_publish_without_a_broker_is_one_line(settings: Settings, tmp_path: Path) -> None:
    # It once printed librdkafka's own log lines for 30 s, whatever the broker timeout.
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=20, employees=3, months=1, seed=5), handle)
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    run_cli("ingest", str(history), env=env, check=True)
    run_cli("project", env=env, check=True)
    assert_gives_up_on_a_missing_broker("publish", env=env, what="publishing")
