"""A broker that goes away: one line when it goes, one when it is back, exactly once throughout."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from crm_cli import broker
from crm_ledger.kafka import consumer_config
from crm_ledger.settings import Settings
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from tests.helpers import run_cli, start_cli, wait_for
from tests.ports import free_port_pair

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
TOPIC = "crm.ledger.events"


def _notification_ids(bootstrap: str) -> list[int]:
    """Every committed record's notification id, read with a fresh read_committed consumer."""
    consumer = Consumer(consumer_config(bootstrap, "outage-check"))
    try:
        metadata = consumer.list_topics(TOPIC, timeout=10)
        if TOPIC not in metadata.topics or metadata.topics[TOPIC].error:
            return []
        partitions = list(metadata.topics[TOPIC].partitions)
        consumer.assign([TopicPartition(TOPIC, p, 0) for p in partitions])
        ids: list[int] = []
        done: set[int] = set()
        while len(done) < len(partitions):
            for message in consumer.consume(1000, timeout=1.0):
                if message.error():
                    done.add(int(message.partition() or 0))
                    continue
                ids.append(int(dict(message.headers() or [])["notification_id"]))
        return ids
    finally:
        consumer.close()


class _Lines:
    """Collects a process's stderr lines on a thread (so waiting never blocks on a pipe)."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append(line.rstrip("\n"))

    def having(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    def assert_one_line_each_way(self) -> None:
        """One line when the broker went away, one when it came back, and no librdkafka noise."""
        assert len(self.having("unreachable")) == 1 and len(self.having("is back")) == 1, self.lines
        assert not [line for line in self.lines if "rdkafka" in line or "FAIL" in line or "Traceback" in line]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[broker.BrokerConfig, dict[str, str]]]:
    """A broker of the test's own (it is stopped and started again), always stopped at the end."""
    port = free_port_pair()
    config = broker.BrokerConfig(data_dir=tmp_path / "kafka", port=port, controller_port=port + 1)
    broker.start(config, timeout_s=120)
    env = {
        "CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"),
        "CRM_LEDGER_DB": str(tmp_path / "p.duckdb"),
        "CRM_LEDGER_BOOTSTRAP": config.bootstrap,
        "CRM_LEDGER_BROKER_TIMEOUT": "180",
    }
    try:
        yield config, env
    finally:
        broker.stop(config)


def test_relay_survives_a_broker_outage_exactly_once(
    tmp_path: Path, own_broker: tuple[broker.BrokerConfig, dict[str, str]]
) -> None:
    config, env = own_broker
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=200, employees=8, months=2, seed=9), handle)
    lines = history.read_text().splitlines()
    half = len(lines) // 2
    (tmp_path / "a.jsonl").write_text("\n".join(lines[:half]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(lines[half:]) + "\n")
    run_cli("ingest", str(tmp_path / "a.jsonl"), env=env, check=True)
    relay = start_cli("relay", "--follow", "--batch-size", "100", env=env)
    errors = _Lines(relay.stderr)
    try:
        wait_for(lambda: len(_notification_ids(config.bootstrap)) == half, 120, "the first half relayed")
        broker.stop(config)
        wait_for(lambda: bool(errors.having("unreachable")), 120, "the relay to notice")
        run_cli("ingest", str(tmp_path / "b.jsonl"), env=env, check=True)
        broker.start(config, timeout_s=120)
        wait_for(lambda: bool(errors.having("is back")), 180, "the relay to reconnect")
        wait_for(lambda: len(_notification_ids(config.bootstrap)) >= len(lines), 180, "everything relayed")
        ids = _notification_ids(config.bootstrap)
        assert sorted(ids) == sorted(set(ids)) and len(ids) == len(lines)
    finally:
        relay.send_signal(signal.SIGINT)
        relay.wait(timeout=60)
    assert relay.returncode == 0, errors.lines
    errors.assert_one_line_each_way()


def test_relay_gives_up_after_the_broker_timeout_with_one_line(tmp_path: Path) -> None:
    port = free_port_pair()  # nothing listens there
    env = {
        "CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"),
        "CRM_LEDGER_DB": str(tmp_path / "p.duckdb"),
        "CRM_LEDGER_BOOTSTRAP": f"127.0.0.1:{port}",
        "CRM_LEDGER_BROKER_TIMEOUT": "3",
    }
    LedgerApplication(Settings(store=env["CRM_LEDGER_STORE"]).eventsourcing_env()).close()  # an empty ledger
    result = run_cli("relay", env=env)
    assert result.returncode == 75, result.stderr  # temporary: run it again later
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, lines
    assert "unreachable; retrying for up to 3 s" in lines[0]
    assert lines[1].startswith("error:") and "gave up relaying" in lines[1]


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "abc", "0", "1e300", "86401"])
def test_a_broker_timeout_that_is_no_number_of_seconds_is_refused_in_one_line(
    tmp_path: Path, value: str
) -> None:
    # 'nan' once made the relay wait forever ("retrying for up to nan s"); 1e300 overflowed the
    # connection pool's clock.
    env = {
        "CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"),
        "CRM_LEDGER_BOOTSTRAP": "127.0.0.1:1",
        "CRM_LEDGER_BROKER_TIMEOUT": value,
    }
    result = run_cli("relay", env=env)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: CRM_LEDGER_BROKER_TIMEOUT={value!r} is not valid: expected a positive number of seconds, at most 86400"
    ]


def test_follower_says_when_the_broker_goes_and_comes_back(
    tmp_path: Path, own_broker: tuple[broker.BrokerConfig, dict[str, str]]
) -> None:
    config, env = own_broker
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=100, employees=6, months=1, seed=2), handle)
    total = len(history.read_text().splitlines())
    run_cli("ingest", str(history), env=env, check=True)
    run_cli("relay", env=env, check=True)
    follower = start_cli("project", "--source", "kafka", "--follow", "--refresh-interval", "0.5", env=env)
    errors = _Lines(follower.stderr)

    def projected() -> int:
        result = run_cli("query", "SELECT count(*) FROM ledger_events", "--format", "csv", env=env)
        return int(result.stdout.splitlines()[1]) if result.returncode == 0 else -1

    try:
        wait_for(lambda: projected() == total, 120, "the follower's first build")
        broker.stop(config)
        wait_for(lambda: bool(errors.having("unreachable")), 120, "the follower to notice")
        broker.start(config, timeout_s=120)
        wait_for(lambda: bool(errors.having("is back")), 180, "the follower to reconnect")
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=60)
    assert follower.returncode == 0, errors.lines
    errors.assert_one_line_each_way()
