"""Log sources: where projections read the ledger from.

Both sources yield `RawBatch`es of still-encoded messages with their positions, so the
projection engine decodes them in bulk. `LedgerSource` reads the ledger's own
notification log (the embedded default: no broker needed) and computes the hash chain
as it goes; `KafkaSource` reads `crm.ledger.events` with a read_committed consumer, taking
positions from the projection database, never from consumer-group offsets.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from crm_ledger.errors import ConfigurationError, KafkaUnavailableError
from crm_ledger.kafka import UNREACHABLE, BrokerWatch, await_broker, consumer_config, kafka_reason
from crm_ledger.settings import Settings
from ledger.chain import GENESIS, next_link
from projections.errors import LogMismatchError

if TYPE_CHECKING:
    # The write model (eventsourcing, the aggregates: ~0.1 s to import) is needed only to
    # read the ledger itself; a decoder worker reads Kafka and never loads it.
    from ledger.application import LedgerApplication

LEDGER_STREAM = "ledger"


@dataclass(frozen=True)
class Position:
    """How far one stream (the ledger, or one Kafka partition) has been read."""

    stream: str
    offset: int
    chain: str | None = None
    #: The message at `offset` as the decoded log holds it (the ledger's stream only): reading
    #: on checks that the source still holds the same one, so a log is never continued from
    #: another ledger than the one it was built from.
    value: bytes | None = field(default=None, compare=False, repr=False)


@dataclass
class RawBatch:
    """Encoded messages and where they came from; columns of equal length."""

    values: list[bytes] = field(default_factory=list)
    notification_ids: list[int | None] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    partitions: list[int | None] = field(default_factory=list)
    offsets: list[int | None] = field(default_factory=list)
    chains: list[str | None] = field(default_factory=list)
    #: the position of each stream after this batch
    positions: dict[str, Position] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.values)

    def extend(self, other: RawBatch) -> None:
        """Append another batch's messages; its positions supersede this one's."""
        self.values.extend(other.values)
        self.notification_ids.extend(other.notification_ids)
        self.sources.extend(other.sources)
        self.partitions.extend(other.partitions)
        self.offsets.extend(other.offsets)
        self.chains.extend(other.chains)
        self.positions.update(other.positions)


class LogSource(Protocol):
    """Yields batches after the given positions; stops at the end unless following."""

    name: str

    def batches(self, positions: Mapping[str, Position], *, follow: bool) -> Iterator[RawBatch]:
        """Batches in order; an empty batch means 'caught up, nothing new yet'."""

    def lag(self, positions: Mapping[str, Position]) -> int:
        """How many messages are still to be read (best effort: for progress, never for decisions).

        On Kafka this counts offsets, and a transactional producer's commit markers take
        offsets too (one per partition and transaction), so it is an upper bound there.
        """

    def streams(self) -> list[str]:
        """The streams this source's positions are kept for (one per Kafka partition)."""

    def close(self) -> None:
        """Release connections."""


class LedgerSource:
    """The ledger's notification log, read directly from the event store."""

    name = LEDGER_STREAM

    def __init__(self, app: LedgerApplication, batch_size: int = 20_000, idle_wait_s: float = 0.5) -> None:
        self.app = app
        self.batch_size = batch_size
        self.idle_wait_s = idle_wait_s

    def batches(self, positions: Mapping[str, Position], *, follow: bool) -> Iterator[RawBatch]:
        start = positions.get(LEDGER_STREAM)
        last = start.offset if start else 0
        if start is not None and start.value is not None:
            self._check_continues(start.offset, start.value)
        chain = bytes.fromhex(start.chain) if start and start.chain else GENESIS
        while True:
            notifications = list(self.app.read_notifications(last + 1, self.batch_size))
            if not notifications:
                if not follow:
                    return
                yield RawBatch(positions={})
                time.sleep(self.idle_wait_s)
                continue
            batch = RawBatch()
            for notification in notifications:
                chain = next_link(chain, notification.state)
                batch.values.append(notification.state)
                batch.notification_ids.append(notification.id)
                batch.sources.append(LEDGER_STREAM)
                batch.partitions.append(None)
                batch.offsets.append(None)
                batch.chains.append(chain.hex())
            last = notifications[-1].id
            # The last message rides along: the log's next reader of this appender's commit
            # checks continuity against it without reading it back (DecodedLog.positions).
            head = bytes(notifications[-1].state)
            batch.positions[LEDGER_STREAM] = Position(LEDGER_STREAM, last, chain.hex(), head)
            yield batch

    def streams(self) -> list[str]:
        return [LEDGER_STREAM]

    def _check_continues(self, offset: int, value: bytes) -> None:
        """The log's last event is this ledger's event at that position, byte for byte."""
        held = next(iter(self.app.read_notifications(offset, 1, stop=offset)), None)
        if held is None or held.id != offset or bytes(held.state) != value:
            ends = self.app.max_position()
            found = "ends before it" if ends < offset else "holds another event there"
            raise LogMismatchError(
                f"the decoded log was built from another ledger: it goes on from notification "
                f"{offset}, and this ledger {found} ({ends} events). Use the projection database "
                "made with this ledger, or rebuild the log from it: crm-ledger replay --from-source"
            )

    def lag(self, positions: Mapping[str, Position]) -> int:
        start = positions.get(LEDGER_STREAM)
        return max(0, self.app.max_position() - (start.offset if start else 0))

    def close(self) -> None:
        return None


def kafka_stream(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


class KafkaSource:
    """`crm.ledger.events` through a read_committed consumer, no auto-commit."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group_id: str = "crm-ledger-projector",
        batch_size: int = 20_000,
        timeout_s: float = 30.0,
        *,
        watch: BrokerWatch | None = None,
    ) -> None:
        self.name = topic
        self.topic = topic
        self.bootstrap = bootstrap
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        # Says when the broker goes away and comes back, and gives up after its timeout.
        self.watch = watch or BrokerWatch(bootstrap, lambda _: None)
        self.group_id = group_id
        # Made when first needed, once the broker listens: a consumer made while it is away
        # would tell the outage through the watch besides the one line of giving up.
        self._client: Consumer | None = None

    @property
    def _consumer(self) -> Consumer:
        if self._client is None:
            config = consumer_config(self.bootstrap, self.group_id, **self.watch.client_config())
            self._client = Consumer(config)
        return self._client

    def _partitions(self) -> list[int]:
        # Quietly, as for every one-shot command: a broker away at the start is one line.
        await_broker(self.bootstrap, self.watch.timeout_s, f"reading {self.topic!r}")
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=self.timeout_s)
        except KafkaException as error:
            reason = kafka_reason(error)
            raise KafkaUnavailableError(f"Kafka at {self.bootstrap} did not answer: {reason}") from error
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise KafkaUnavailableError(f"topic {self.topic!r} does not exist (run `crm-ledger relay` first)")
        return sorted(topic.partitions)

    def batches(self, positions: Mapping[str, Position], *, follow: bool) -> Iterator[RawBatch]:
        partitions = self._partitions()
        assignments = []
        for partition in partitions:
            known = positions.get(kafka_stream(self.topic, partition))
            if known is not None:
                self._check_continues(partition, known.offset)
            # Positions hold the last offset applied; resume at the next one.
            offset = known.offset + 1 if known else 0
            assignments.append(TopicPartition(self.topic, partition, offset))
        self._consumer.assign(assignments)
        at_end: set[int] = set()
        while True:
            messages = self._consumer.consume(self.batch_size, timeout=0.5)
            batch = RawBatch()
            if not messages:
                self.watch.check_while_idle("following")
            for message in messages:
                error = message.error()
                partition = int(message.partition() or 0)
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(partition)
                        continue
                    if error.code() in UNREACHABLE:
                        self.watch.went_away()
                        continue
                    raise KafkaUnavailableError(f"consuming {self.topic!r} failed: {error.str()}")
                self.watch.is_back()
                at_end.discard(partition)
                offset = int(message.offset() or 0)
                headers = dict(message.headers() or [])
                nid = headers.get("notification_id")
                chain = headers.get("chain")
                value = message.value() or b""
                batch.values.append(value)
                batch.notification_ids.append(int(nid) if nid is not None else None)
                batch.sources.append(self.topic)
                batch.partitions.append(partition)
                batch.offsets.append(offset)
                batch.chains.append(chain.decode() if isinstance(chain, bytes) else chain)
                stream = kafka_stream(self.topic, partition)
                batch.positions[stream] = Position(stream, offset)
            if len(batch):
                yield batch
            elif len(at_end) == len(partitions):
                if not follow:
                    return
                yield batch

    def check_continues(self, positions: Mapping[str, Position]) -> None:
        """Refuse a log that goes on from an offset one of the topic's partitions does not hold."""
        for partition in self._partitions():
            known = positions.get(kafka_stream(self.topic, partition))
            if known is not None:
                self._check_continues(partition, known.offset)

    def _check_continues(self, partition: int, offset: int) -> None:
        """The partition still holds the offset the log goes on from (a topic deleted and made
        anew starts its offsets again: reading on would skip its first messages)."""
        _, high = self._consumer.get_watermark_offsets(
            TopicPartition(self.topic, partition), timeout=self.timeout_s, cached=False
        )
        if high <= offset:
            raise LogMismatchError(
                f"the decoded log was built from another topic {self.topic!r}: it goes on from offset "
                f"{offset} of partition {partition}, and the partition ends before it (at {high}; was the "
                "topic made anew?). Rebuild the log from the topic: "
                "crm-ledger replay --source kafka --from-source"
            )

    def streams(self) -> list[str]:
        return [kafka_stream(self.topic, p) for p in self._partitions()]

    def lag(self, positions: Mapping[str, Position]) -> int:
        total = 0
        for partition in self._partitions():
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=self.timeout_s, cached=False
            )
            known = positions.get(kafka_stream(self.topic, partition))
            total += max(0, high - (known.offset + 1 if known else 0))
        return total

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def open_source(
    settings: Settings,
    source: str,
    app: LedgerApplication | None = None,
    say: Callable[[str], None] = _to_stderr,
) -> LogSource:
    """`ledger` (the embedded notification log) or `kafka` (the events topic).

    `say` hears one line when the broker goes away and one when it is back.
    """
    if source == "ledger":
        if app is None:
            from ledger.connect import open_ledger  # noqa: PLC0415 - see the imports above

            app = open_ledger(settings)
        return LedgerSource(app)
    if source == "kafka":
        watch = BrokerWatch(settings.bootstrap, say, settings.broker_timeout_s)
        return KafkaSource(settings.bootstrap, settings.events_topic, watch=watch)
    raise ConfigurationError(f"unknown source {source!r}: use 'ledger' or 'kafka'")
