"""The downstream example reads every topic with standard Confluent clients and a registry URL only."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import duckdb
import fastavro
import pytest
from confluent_kafka import Consumer, TopicPartition

from crm_ledger.kafka import consumer_config
from crm_ledger.settings import Settings
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from projections.publish import FEEDS
from schemas.registry import SchemaRegistry
from tests.helpers import run_cli

pytestmark = [pytest.mark.kafka, pytest.mark.registry]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "consume_with_registry.py"
Coordinates = tuple[str, int, int]


def _example_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("consume_with_registry", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _raw_messages(bootstrap: str, topics: list[str]) -> dict[Coordinates, tuple[bytes, bytes | None]]:
    """Every committed message's key and value bytes, read with a plain consumer."""
    consumer = Consumer(consumer_config(bootstrap, "raw-reader"))
    metadata = consumer.list_topics(timeout=30)
    partitions = [TopicPartition(t, p, 0) for t in topics for p in metadata.topics[t].partitions]
    consumer.assign(partitions)
    pending = {(tp.topic, tp.partition) for tp in partitions}
    found: dict[Coordinates, tuple[bytes, bytes | None]] = {}
    while pending:
        for message in consumer.consume(1000, timeout=1.0):
            if message.error():
                pending.discard((message.topic(), message.partition()))
                continue
            found[(message.topic(), message.partition(), message.offset())] = (message.key(), message.value())
    consumer.close()
    return found


def _writer_decode(folder: SchemaRegistry, value: bytes) -> dict[str, Any]:
    """Decode with the writer's schema alone, as a registry-based deserializer does."""
    version = folder.by_id(int.from_bytes(value[1:5], "big"))
    assert value[0] == 0 and version is not None
    record: dict[str, Any] = fastavro.schemaless_reader(io.BytesIO(value[5:]), version.parsed, None)
    return record


def test_example_consumer_decodes_every_topic_and_matches_ledger_and_duckdb(
    pushed_registry_url: str, kafka_bootstrap: str, settings: Settings, topic: str, tmp_path: Path
) -> None:
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        # The same history as the publishing test: both write the same keys to the shared
        # crm.projection.* topics, whichever runs first.
        write_history(GeneratorConfig(customers=120, employees=8, months=2, seed=3), handle)
    app = LedgerApplication(settings.eventsourcing_env())
    ingest_records(app, read_file(history, RecordParser(app.registry)), RejectSink(None, echo=None))
    env = {
        "CRM_LEDGER_STORE": settings.store,
        "CRM_LEDGER_DB": str(settings.projections_db),
        "CRM_LEDGER_BOOTSTRAP": kafka_bootstrap,
        "CRM_LEDGER_TOPIC": topic,
        "CRM_LEDGER_REGISTRY_URL": pushed_registry_url,
    }
    for step in (
        ("relay",),
        ("project", "--source", "kafka", "--publish"),
        ("period", "close", "2025-01"),
        ("relay",),
        ("project", "--source", "kafka", "--publish"),
    ):
        result = run_cli(*step, env=env)
        assert result.returncode == 0, f"{step}: {result.stderr}"

    topics = [topic, *(feed.topic for feed in FEEDS)]
    args = ["--bootstrap", kafka_bootstrap, "--registry", pushed_registry_url]
    for name in topics:
        args += ["--topic", name]
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]

    # Every committed message was read, and decodes to what the writer's schema says.
    raw = _raw_messages(kafka_bootstrap, topics)
    seen = {(m["topic"], m["partition"], m["offset"]): m for m in lines}
    assert set(seen) == set(raw)
    folder = SchemaRegistry.load()
    jsonable = _example_module().jsonable
    for where, (key, value) in raw.items():
        assert seen[where]["key"] == key.decode()
        expected = None if value is None else jsonable(_writer_decode(folder, value))
        assert seen[where]["value"] == expected, where

    # The ledger topic holds exactly the ledger's events.
    ledger_ids = {app.codec.decode(n.state)[1]["event_id"] for n in app.read_notifications(1, 1_000_000)}
    events = [m for m in lines if m["topic"] == topic]
    assert len(events) == len(ledger_ids) and {m["value"]["event_id"] for m in events} == ledger_ids

    # The projection topics' latest value per key are the DuckDB rows.
    latest: dict[str, dict[str, Any]] = {feed.topic: {} for feed in FEEDS}
    for m in lines:
        if m["topic"] in latest:
            latest[m["topic"]][m["key"]] = m["value"]
    with duckdb.connect(str(settings.projections_db), read_only=True) as con:
        profiles = dict(
            con.execute("SELECT customer_id, interactions_total FROM customer_profile").fetchall()
        )
        scores = dict(con.execute("SELECT employee_id || '|' || period, score FROM reward_score").fetchall())
        statements = dict(
            con.execute(
                "SELECT employee_id || '|' || period || '|' || event_id, score FROM reward_statement"
            ).fetchall()
        )
    assert statements, "closing January issued statements"
    assert {k: v["interactions_total"] for k, v in latest[FEEDS[0].topic].items()} == profiles
    assert {k: v["score"] for k, v in latest[FEEDS[1].topic].items() if v} == pytest.approx(scores)
    assert {k: v["score"] for k, v in latest[FEEDS[2].topic].items() if v} == pytest.approx(statements)
