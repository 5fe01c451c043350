"""The relay against the real broker: every notification exactly once, in order, after kill -9."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from crm_ledger.kafka import consumer_config
from crm_ledger.settings import Settings
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.chain import GENESIS, next_link
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from ledger.relay import Relay, RelayConfig, recover_position
from tests.helpers import kill_hard, run_cli, start_cli, wait_for

pytestmark = pytest.mark.kafka


def committed_records(bootstrap: str, topic: str) -> list[tuple[int, dict[str, bytes], bytes, bytes | None]]:
    """(notification id, headers, value, key) of every committed record, read_committed."""
    consumer = Consumer(consumer_config(bootstrap, f"check-{topic}"))
    metadata = consumer.list_topics(topic, timeout=30)
    partitions = list(metadata.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    found = []
    at_end: set[int] = set()
    while len(at_end) < len(partitions):
        for message in consumer.consume(1000, timeout=1.0):
            if message.error():
                at_end.add(message.partition())
                continue
            headers = dict(message.headers())
            found.append((int(headers["notification_id"]), headers, message.value(), message.key()))
    consumer.close()
    return found


def fill_ledger(settings: Settings, tmp_path: Path, customers: int = 400) -> LedgerApplication:
    app = LedgerApplication(settings.eventsourcing_env())
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=customers, employees=12, months=2, seed=4), handle)
    ingest_records(
        app,
        read_file(history, RecordParser(app.registry)),
        RejectSink(None, echo=None),
        batch_size=1000,
    )
    return app


def test_relay_publishes_every_event_once_with_headers_and_chain(
    kafka_bootstrap: str, topic: str, settings: Settings, tmp_path: Path
) -> None:
    app = fill_ledger(settings, tmp_path)
    config = RelayConfig(
        kafka_bootstrap, topic, partitions=3, transactional_id=f"relay-{topic}", batch_size=700
    )
    assert Relay(app, config).run() == app.max_position()
    assert Relay(app, config).run() == 0  # nothing new: position recovered from Kafka
    records = committed_records(kafka_bootstrap, topic)
    assert sorted(r[0] for r in records) == list(range(1, app.max_position() + 1))
    by_id = {r[0]: r for r in records}
    chain = GENESIS
    for notification in app.read_notifications(1, 100_000):
        _, headers, value, key = by_id[notification.id]
        assert value == notification.state
        chain = next_link(chain, value)
        assert headers["chain"].decode() == chain.hex()
        event_type, record = app.codec.decode(value)
        assert headers["event_type"].decode() == event_type
        assert headers["event_id"].decode() == record["event_id"]
        expected_key = record.get("customer_id") or record.get("employee_id") or record.get("article_id")
        assert key == expected_key.encode()
    position = recover_position(config)
    assert (position.notification_id, position.chain) == (app.max_position(), chain)


def test_a_long_broker_timeout_still_relays(
    kafka_bootstrap: str, topic: str, settings: Settings, tmp_path: Path
) -> None:
    # The transaction timeout followed the broker timeout past the broker's 15-minute limit:
    # the broker refused the producer and the relay took it for an outage.
    app = fill_ledger(settings, tmp_path, customers=20)
    config = RelayConfig(
        kafka_bootstrap, topic, partitions=1, transactional_id=f"relay-{topic}", broker_timeout_s=3600
    )
    deadline = time.monotonic() + 60  # a refused producer is waited for as an outage: bound that
    assert Relay(app, config).run(should_stop=lambda: time.monotonic() > deadline) == app.max_position()


@pytest.mark.slow
def test_relay_kill_and_resume_is_exactly_once(
    kafka_bootstrap: str, topic: str, settings: Settings, tmp_path: Path
) -> None:
    app = fill_ledger(settings, tmp_path, customers=1500)
    total = app.max_position()
    env = _relay_env(settings, kafka_bootstrap, topic)
    for round_number in range(3):
        goal = round_number * total // 4
        process = start_cli("relay", "--batch-size", "300", env=env)
        wait_for(
            lambda: _committed_max(kafka_bootstrap, topic) > goal,  # noqa: B023 - used at once
            timeout_s=90,
            what="relay progress",
        )
        kill_hard(process)
    finished = run_cli("relay", "--batch-size", "300", env=env)
    assert finished.returncode == 0, finished.stderr
    ids = [r[0] for r in committed_records(kafka_bootstrap, topic)]
    assert sorted(ids) == list(range(1, total + 1)), "every notification exactly once"


def _relay_env(settings: Settings, bootstrap: str, topic: str) -> dict[str, str]:
    """The settings of a `relay` command onto `topic`."""
    return {
        "CRM_LEDGER_STORE": settings.store,
        "CRM_LEDGER_BOOTSTRAP": bootstrap,
        "CRM_LEDGER_TOPIC": topic,
        "CRM_LEDGER_TRANSACTIONAL_ID": f"relay-{topic}",
    }


def _committed_max(bootstrap: str, topic: str) -> int:
    try:
        return recover_position(RelayConfig(bootstrap, topic)).notification_id
    except Exception:  # noqa: BLE001 - topic not created yet
        return 0


def test_a_relay_cut_short_by_ctrl_c_says_so_and_ends_130(
    kafka_bootstrap: str, topic: str, settings: Settings, tmp_path: Path
) -> None:
    """A one-shot relay stopped before the end ended 0 with only "relayed N events": a script
    went on with the topic short of the ledger. The same relay then completes it."""
    app = fill_ledger(settings, tmp_path, customers=400)
    total = app.max_position()
    env = _relay_env(settings, kafka_bootstrap, topic)
    process = start_cli("relay", "--batch-size", "10", env=env)
    wait_for(lambda: _committed_max(kafka_bootstrap, topic) > 0, timeout_s=90, what="relay progress")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert _committed_max(kafka_bootstrap, topic) < total, "the relay ended before the Ctrl-C"
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["interrupted: the topic may lag the ledger; run `crm-ledger relay` again"]
    finished = run_cli("relay", "--batch-size", "300", env=env)
    assert finished.returncode == 0, finished.stderr
    ids = [r[0] for r in committed_records(kafka_bootstrap, topic)]
    assert sorted(ids) == list(range(1, total + 1)), "every notification exactly once"
