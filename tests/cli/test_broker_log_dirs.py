"""A broker with two log folders, one of them on a small disk that fills up while the relay publishes.

Kafka takes only the failed folder offline and stays up: the partitions kept there have no
leader (a single broker has no replica to hand them to) until it is restarted with room. The
relay once said "unreachable" about a broker that answered, gave up after 30 s twice over
(its broker timeout being 5 s), or failed mid-transaction with exit 1 and "N message(s) failed
delivery". Now it names the offline partitions, gives up after its broker timeout with exit 75,
and after the disk has room and the broker a restart the rerun relays every event once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_cli import broker
from tests.cli.test_broker_full_disk import relayed_in_part
from tests.cli.test_broker_outage import TOPIC, _notification_ids
from tests.full_disk import SmallDisk, small_disk
from tests.helpers import run_cli
from tests.ports import free_port_pair

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
BROKER_TIMEOUT_S = 5

#: Starts the broker of data folder $1 on port $2 with the extra log folder $3 (run in the
#: disk's namespace: the broker has to see the small disk there).
_START = """
import sys
from pathlib import Path
from crm_cli import broker
data, port, extra = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
broker.start(broker.BrokerConfig(data_dir=data, port=port, controller_port=port + 1, extra_log_dirs=(extra,)))
"""


class _TwoFolders:
    """A broker whose first log folder is on the ordinary disk and whose second is a small disk."""

    def __init__(self, config: broker.BrokerConfig, disk: SmallDisk, env: dict[str, str]) -> None:
        self.config, self.disk, self.env = config, disk, env

    def up(self) -> None:
        """Start the broker in the disk's namespace and wait until it answers."""
        small = self.config.extra_log_dirs[0]
        command = [sys.executable, "-c", _START, str(self.config.data_dir), str(self.config.port), str(small)]
        result = subprocess.run(
            [*self.disk.enter, *command], capture_output=True, text=True, env=os.environ.copy(), check=False
        )
        assert result.returncode == 0, result.stderr

    def on_small_disk(self, topic: str) -> list[int]:
        """The partitions of `topic` whose folders Kafka placed on the small disk."""
        names = [p.name for p in self.disk.inside(self.config.extra_log_dirs[0]).iterdir()]
        return sorted(int(name.rpartition("-")[2]) for name in names if name.rpartition("-")[0] == topic)


@pytest.fixture
def two_log_folders(tmp_path: Path) -> Iterator[_TwoFolders]:
    port = free_port_pair()
    data = tmp_path / "kafka"
    # The ordinary folder comes first: it keeps the cluster metadata, whose loss stops the broker.
    config = broker.BrokerConfig(
        data_dir=data, port=port, controller_port=port + 1, extra_log_dirs=(data / "small",)
    )
    env = {
        "CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"),
        "CRM_LEDGER_DB": str(tmp_path / "p.duckdb"),
        "CRM_LEDGER_BOOTSTRAP": config.bootstrap,
        "CRM_LEDGER_BROKER_TIMEOUT": str(BROKER_TIMEOUT_S),
    }
    with small_disk(data / "small", 32 * 1024) as disk:
        started = _TwoFolders(config, disk, env)
        try:
            started.up()
            yield started
        finally:
            broker.stop(config)


def _gives_up_naming_the_offline_partitions(
    result: subprocess.CompletedProcess[str], kafka: _TwoFolders, offline: list[int]
) -> None:
    """One line when the partitions stay offline, one when the relay gives up; exit 75."""
    assert result.returncode == 75, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    listed = ", ".join(map(str, offline))
    what = (
        rf"Kafka at {re.escape(kafka.config.bootstrap)} answers, but partitions {listed} of "
        rf"'{re.escape(TOPIC)}'(; [0-9, ]+ of '[\w.]+')* are offline"
    )
    assert len(lines) == 2, lines
    assert re.fullmatch(rf"{what}; retrying for up to {BROKER_TIMEOUT_S} s", lines[0]), lines
    assert re.fullmatch(
        rf"error: {what}: gave up relaying after {BROKER_TIMEOUT_S} s \(set CRM_LEDGER_BROKER_TIMEOUT "
        r"to wait longer\); a log folder of the broker failed \(its disk full, say\): make room there "
        r"and restart the broker, then run the same command again",
        lines[1],
    ), lines


def test_a_full_log_folder_of_two_is_named_with_its_partitions_and_the_rerun_relays_each_event_once(
    tmp_path: Path, two_log_folders: _TwoFolders
) -> None:
    kafka = two_log_folders
    lines = relayed_in_part(tmp_path, kafka.env)  # the relay made the topic: its partitions are spread
    offline = kafka.on_small_disk(TOPIC)
    assert offline, "no partition of the relay's topic on the small disk: the fault would not matter"
    kafka.disk.fill(leave=20 * 1024)  # too little for the rest: the folder fails mid-transaction

    started = time.monotonic()
    result = run_cli("relay", "--batch-size", "200", env=kafka.env)
    elapsed = time.monotonic() - started
    _gives_up_naming_the_offline_partitions(result, kafka, offline)
    # Messages wait the broker timeout for a leader, then the relay waits it once more.
    assert elapsed < 2 * BROKER_TIMEOUT_S + 15, elapsed
    assert broker.is_running(kafka.config), "the broker stops only with its last log folder"

    # Run again on the same broker: its transaction coordinator cannot finish aborting the
    # transaction left open on the offline partitions, which once kept the relay silent for 60 s.
    started = time.monotonic()
    again = run_cli("relay", env=kafka.env)
    elapsed = time.monotonic() - started
    _gives_up_naming_the_offline_partitions(again, kafka, offline)
    assert elapsed < BROKER_TIMEOUT_S + 15, elapsed

    # A failed folder stays offline until the broker restarts: room, restart, rerun.
    kafka.disk.free_up()
    broker.stop(kafka.config)
    kafka.up()
    run_cli("relay", env=kafka.env, check=True)
    ids = _notification_ids(kafka.config.bootstrap)
    assert sorted(ids) == list(range(1, len(lines) + 1))
    audit = run_cli("audit", "verify", "--checkpoints", env=kafka.env)
    assert audit.returncode == 0, (audit.stdout, audit.stderr)
    assert "audit verify: all copies agree, chain intact" in audit.stdout
