"""The broker's log folder fills up while the relay publishes: one line, then exactly once on the rerun.

Kafka takes a log folder that refused a write offline and, with its only one gone, stops; the
relay sees a broker that went away. On the same full disk it cannot start again.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_cli import broker
from importers.generator import GeneratorConfig, write_history
from tests.cli.test_broker_outage import _notification_ids
from tests.full_disk import SmallDisk, small_disk
from tests.helpers import CLI, run_cli
from tests.ports import free_port_pair

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
BROKER_TIMEOUT_S = 5


class _Broker:
    """A broker whose log folder is a small disk; started and stopped with the CLI's `kafka up`."""

    def __init__(self, config: broker.BrokerConfig, disk: SmallDisk, env: dict[str, str]) -> None:
        self.config, self.disk, self.env = config, disk, env

    def up(self) -> subprocess.CompletedProcess[str]:
        """`kafka up` in the disk's namespace (the broker has to see its log folder there)."""
        data, port = str(self.config.data_dir), str(self.config.port)
        return subprocess.run(
            [*self.disk.enter, *CLI, "kafka", "up", "--data", data, "--port", port],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
            check=False,
        )


@pytest.fixture
def broker_on_small_disk(tmp_path: Path) -> Iterator[_Broker]:
    port = free_port_pair()
    config = broker.BrokerConfig(data_dir=tmp_path / "kafka", port=port, controller_port=port + 1)
    env = {
        "CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"),
        "CRM_LEDGER_DB": str(tmp_path / "p.duckdb"),
        "CRM_LEDGER_BOOTSTRAP": config.bootstrap,
        "CRM_LEDGER_BROKER_TIMEOUT": str(BROKER_TIMEOUT_S),
    }
    # Only the log folder is on the small disk: the pid file and the broker's own log stay readable.
    with small_disk(config.data_dir / "logs", 32 * 1024) as disk:
        started = _Broker(config, disk, env)
        try:
            assert started.up().returncode == 0
            yield started
        finally:
            broker.stop(config)


def _history(tmp_path: Path) -> list[str]:
    path = tmp_path / "h.jsonl"
    with path.open("w") as handle:
        write_history(GeneratorConfig(customers=200, employees=8, months=2, seed=9), handle)
    return path.read_text().splitlines()


def _ingest(tmp_path: Path, lines: list[str], env: dict[str, str]) -> None:
    part = tmp_path / "part.jsonl"
    part.write_text("\n".join(lines) + "\n")
    run_cli("ingest", str(part), env=env, check=True)


def relayed_in_part(tmp_path: Path, env: dict[str, str]) -> list[str]:
    """A generated history all in the ledger, its first 300 events relayed (the topic exists);
    returns its lines."""
    lines = _history(tmp_path)
    _ingest(tmp_path, lines[:300], env)
    run_cli("relay", env=env, check=True)
    _ingest(tmp_path, lines, env)  # the rest (the first 300 are duplicates)
    return lines


def _gives_up_in_one_line(result: subprocess.CompletedProcess[str], bootstrap: str) -> None:
    """The relay's outage line, then its give-up line; exit 75 (run it again when the broker is back)."""
    assert result.returncode == 75, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"Kafka at {bootstrap} is unreachable; retrying for up to {BROKER_TIMEOUT_S} s",
        f"error: Kafka at {bootstrap} was unreachable for {BROKER_TIMEOUT_S} s; gave up relaying "
        "(set CRM_LEDGER_BROKER_TIMEOUT to wait longer); run the same command again when it is back",
    ], lines


def _back_with_room_then_everything_once(kafka: _Broker, total: int) -> None:
    """On the full disk the broker cannot start and says why; with room, the rerun completes the topic."""
    refused = kafka.up()
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "error: the Kafka broker exited with code 1 while starting: its log folder "
        f"{kafka.config.data_dir / 'logs'} is full: free some space there, then run the same command again"
    ]
    kafka.disk.free_up()
    assert kafka.up().returncode == 0
    run_cli("relay", env=kafka.env, check=True)
    ids = _notification_ids(kafka.config.bootstrap)
    assert sorted(ids) == list(range(1, total + 1))
    audit = run_cli("audit", "verify", "--checkpoints", env=kafka.env)
    assert audit.returncode == 0, (audit.stdout, audit.stderr)
    assert "audit verify: all copies agree, chain intact" in audit.stdout


def test_a_log_folder_that_fills_up_mid_relay_is_one_line_and_the_rerun_relays_each_event_once(
    tmp_path: Path, broker_on_small_disk: _Broker
) -> None:
    kafka = broker_on_small_disk
    lines = relayed_in_part(tmp_path, kafka.env)
    # Room for a few batches, not for all: the broker fails in the middle of a transaction.
    kafka.disk.fill(leave=100 * 1024)
    result = run_cli("relay", "--batch-size", "200", env=kafka.env)
    _gives_up_in_one_line(result, kafka.config.bootstrap)
    _back_with_room_then_everything_once(kafka, len(lines))


def test_a_full_log_folder_before_the_first_transaction_is_noticed_at_once_not_after_30_s(
    tmp_path: Path, broker_on_small_disk: _Broker
) -> None:
    # The broker dies creating its transaction log; a relay blocked in starting its producer
    # once noticed only after 30 s, and then waited its broker timeout on top.
    kafka = broker_on_small_disk
    lines = _history(tmp_path)
    _ingest(tmp_path, lines, kafka.env)
    kafka.disk.fill(leave=48 * 1024)
    started = time.monotonic()
    result = run_cli("relay", env=kafka.env)
    elapsed = time.monotonic() - started
    _gives_up_in_one_line(result, kafka.config.bootstrap)
    assert elapsed < BROKER_TIMEOUT_S + 15, elapsed
    _back_with_room_then_everything_once(kafka, len(lines))
