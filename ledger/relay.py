"""Relay: the ledger's notification log to Kafka, exactly once and in order.

A transactional producer with a fixed `transactional.id` publishes each batch of
notifications in one transaction; restarting fences any zombie and aborts its open
transaction. The position is recovered from Kafka itself: the highest `notification_id`
header among committed records (read_committed), with the chain value stored beside it.
Command code never writes to Kafka; only this relay does.

The relay forwards bytes: it reads `(notification id, stored state)` rows straight from the
store's events table (`ledger.stored_log`) and reads only the event id and the key fields
from the front of each Avro message (`schemas.peek`); the rest is never decoded.

With a checkpoints topic configured, the relay also publishes the chain head (see
`ledger.checkpoints`) in the same transaction as the events it follows: whenever the
notification id crosses a multiple of `checkpoint_every`, and for every
`RewardPeriodClosed` it forwards (the head recorded at the close).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from crm_ledger.errors import CrmLedgerError, KafkaUnavailableError
from crm_ledger.kafka import (
    DEFAULT_BROKER_TIMEOUT_S,
    INFINITE_RETENTION,
    TRANSACTION_LOG,
    BrokerWatch,
    broker_listens,
    consumer_config,
    describe_offline,
    ensure_topic,
    kafka_reason,
    offline_partitions,
    produce,
    topic_exists,
)
from crm_ledger.progress import Reporter, SilentReporter
from ledger.application import LedgerApplication
from ledger.chain import GENESIS, next_link
from ledger.checkpoints import CADENCE, PERIOD_CLOSE, Checkpoint, ensure_checkpoint_topic, now_ms
from ledger.checkpoints import encode as encode_checkpoint
from ledger.stored_log import read_stored
from schemas.codec import AvroCodec
from schemas.errors import DecodeError
from schemas.metadata import shipped
from schemas.peek import FieldPeek
from schemas.remote import RemoteRegistry
from schemas.sync import verify_registered

#: The brokers' default transaction.max.timeout.ms: a longer transaction timeout is refused.
MAX_TRANSACTION_TIMEOUT_MS = 900_000
#: The longest the producer's start waits for a listening broker's transaction coordinator
#: (the first use of transactions creates the broker's transaction log: seconds).
INIT_TIMEOUT_S = 30.0
#: How long one attempt at it blocks before the relay checks that the broker still listens.
_INIT_STEP_S = 1.0
#: Message key candidates, lowest rank first (declared `"crm.key": RANK` in the schemas).
KEY_FIELDS = shipped().key_fields


#: The event whose relaying publishes a period-close checkpoint.
_CLOSE = b"RewardPeriodClosed"


class Outgoing(NamedTuple):
    """One notification as the relay sends it: the stored bytes, their key and header values.

    A named tuple, not a frozen dataclass: one is made per event relayed, and a frozen
    dataclass's constructor cost ~0.8 µs of the relay's ~12 µs an event.
    """

    notification_id: int
    state: bytes
    event_type: bytes
    event_id: bytes
    key: bytes | None


@dataclass(frozen=True)
class RelayPosition:
    """The last notification id committed to Kafka and the chain value after it."""

    notification_id: int
    chain: bytes


@dataclass(frozen=True)
class RelayConfig:
    bootstrap: str
    topic: str
    partitions: int = 6
    transactional_id: str = "crm-ledger-relay"
    batch_size: int = 5000
    #: How long an unreachable broker is waited for (one line when it goes, one when back).
    broker_timeout_s: float = DEFAULT_BROKER_TIMEOUT_S
    #: When set, the relay refuses to start unless this registry serves every event schema.
    registry_url: str | None = None
    #: compacted topic for chain-head checkpoints (None: publish none)
    checkpoints_topic: str | None = None
    checkpoint_every: int = 10_000


def headers_of(message: Any) -> dict[str, bytes]:
    return dict(message.headers() or [])


def recover_position(config: RelayConfig, timeout_s: float = 30.0) -> RelayPosition:
    """Highest committed notification id in the topic (0 and genesis when empty).

    Reads the tail of every partition with a read_committed consumer; a partition whose
    tail holds only aborted data or control records is searched further back.
    """
    consumer = Consumer(consumer_config(config.bootstrap, f"{config.transactional_id}-position"))
    try:
        metadata = consumer.list_topics(config.topic, timeout=timeout_s)
        if config.topic not in metadata.topics or metadata.topics[config.topic].error:
            return RelayPosition(0, GENESIS)
        ranges: dict[int, tuple[int, int]] = {}
        for partition in metadata.topics[config.topic].partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(config.topic, partition), timeout=timeout_s
            )
            if high > low:
                ranges[partition] = (low, high)
        best = RelayPosition(0, GENESIS)
        window = 64
        while ranges:
            starts = {p: max(low, high - window) for p, (low, high) in ranges.items()}
            found = _read_tails(consumer, config.topic, starts, timeout_s)
            for position in found.values():
                if position.notification_id > best.notification_id:
                    best = position
            ranges = {p: r for p, r in ranges.items() if p not in found and starts[p] > r[0]}
            window *= 8
        return best
    except KafkaException as error:
        raise KafkaUnavailableError(f"reading the relay position failed: {kafka_reason(error)}") from error
    finally:
        consumer.close()


def _read_tails(
    consumer: Consumer, topic: str, starts: dict[int, int], timeout_s: float
) -> dict[int, RelayPosition]:
    """Per partition, the record with the highest notification id from `starts` to the end."""
    consumer.assign([TopicPartition(topic, p, offset) for p, offset in starts.items()])
    best: dict[int, RelayPosition] = {}
    pending = set(starts)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for message in consumer.consume(1000, timeout=0.05):
            partition = int(message.partition() or 0)
            if message.error():
                # Partition EOF: everything up to the last stable offset was read.
                pending.discard(partition)
                continue
            headers = headers_of(message)
            nid = int(headers["notification_id"])
            current = best.get(partition)
            if current is None or nid > current.notification_id:
                best[partition] = RelayPosition(nid, bytes.fromhex(headers["chain"].decode()))
    consumer.unassign()
    if pending:
        raise KafkaUnavailableError(f"timed out reading the tail of {topic!r} partitions {sorted(pending)}")
    return best


def message_key(record: Mapping[str, Any]) -> bytes | None:
    """The first non-empty key field: customer id, else employee id, article id, period, team."""
    for name in KEY_FIELDS:
        value = record.get(name)
        if value:
            return value if isinstance(value, bytes) else str(value).encode()
    return None


class Relay:
    """Publishes the ledger's notifications to Kafka; one transaction per batch."""

    def __init__(
        self, app: LedgerApplication, config: RelayConfig, say: Callable[[str], None] = lambda _: None
    ) -> None:
        self.app = app
        self.config = config
        self._say = say
        self.watch = BrokerWatch(config.bootstrap, say, config.broker_timeout_s)
        #: Since when partitions the relay writes to have had no leader (None: all have one),
        #: and whether that was said.
        self._offline_since: float | None = None
        self._offline_told = False
        self.codec: AvroCodec = app.codec
        self._producer: Producer | None = None
        self._peek = FieldPeek(self.codec, ("event_id", *KEY_FIELDS))
        self._versions = {
            v.schema_id.to_bytes(4, "big"): str(v.version).encode()
            for v in self.codec.registry.all_versions()
        }

    def _start_producer(self) -> Producer:
        ensure_topic(self.config.bootstrap, self.config.topic, self.config.partitions, INFINITE_RETENTION)
        timeout_ms = int(self.config.broker_timeout_s * 1000)
        # A broker refuses a transaction timeout beyond its transaction.max.timeout.ms (15 min by
        # default), which looked like an outage; librdkafka wants messages to time out no later.
        transaction_ms = min(max(60_000, timeout_ms + 10_000), MAX_TRANSACTION_TIMEOUT_MS)
        if self.config.checkpoints_topic:
            ensure_checkpoint_topic(self.config.bootstrap, self.config.checkpoints_topic)
        producer = Producer(
            {
                "bootstrap.servers": self.config.bootstrap,
                "transactional.id": self.config.transactional_id,
                "enable.idempotence": True,
                "linger.ms": 5,
                "batch.num.messages": 10000,
                "compression.type": "lz4",
                "transaction.timeout.ms": transaction_ms,
                "message.timeout.ms": min(max(1000, timeout_ms), transaction_ms),
                "log_level": 3,
                **self.watch.client_config(),
            }
        )
        self._init_transactions(producer)
        return producer

    def _init_transactions(self, producer: Producer) -> None:
        """Fence an earlier instance and abort whatever it left open.

        In short steps, not one long call: librdkafka serves no error callback while it
        waits, so a broker that died meanwhile (its log folder full, say) went unnoticed for
        the whole call, and the relay sat silent for 30 s before its broker timeout even began.
        """
        deadline = time.monotonic() + INIT_TIMEOUT_S
        while True:
            try:
                producer.init_transactions(_INIT_STEP_S)
                return
            except KafkaException as error:
                first = error.args[0] if error.args else None
                pending = isinstance(first, KafkaError) and (
                    first.code() == KafkaError._TIMED_OUT or first.retriable()
                )
                # A timed-out call resumes where it stopped when made again. A coordinator
                # whose partition is offline (or which cannot finish aborting a transaction on
                # one) answers "try again" forever: the relay sat silent for 30 s, twice, then
                # gave up as if the broker had gone away; `_connect` tells that case instead.
                waiting = pending and time.monotonic() < deadline
                if waiting and broker_listens(self.config.bootstrap) and not self._offline():
                    continue
                raise KafkaUnavailableError(
                    f"initialising the transactional producer failed: {kafka_reason(error)}"
                ) from error

    def run(
        self,
        *,
        follow: bool = False,
        reporter: Reporter | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        idle_wait_s: float = 0.5,
        max_batches: int | None = None,
    ) -> int:
        """Publish everything after the recovered position; returns how many were sent.

        When the broker goes away, the open transaction is abandoned (the next producer
        with the same transactional id aborts it), the relay waits for the broker up to
        `broker_timeout_s`, and starts again from the position Kafka holds: nothing is lost
        and nothing is sent twice.
        """
        reporter = reporter or SilentReporter()
        self._check_registry()
        producer, position = self._connect(should_stop)
        sent = 0
        batches = 0
        reporter.total(max(self.app.max_position() - position.notification_id, 0))
        while not should_stop():
            notifications = self._read_batch(position.notification_id + 1)
            if not notifications:
                if not follow:
                    break
                producer.poll(idle_wait_s)  # serves librdkafka's callbacks: an outage is noticed while idle
                self.watch.check_while_idle("relaying")
                reporter.total(max(self.app.max_position() - position.notification_id, 0) + sent)
                continue
            try:
                position = self._publish(producer, notifications, position)
            except _BrokerAwayError:
                self.watch.went_away()
                producer, position = self._connect(should_stop)
                continue
            except _PartitionsOfflineError as error:
                self._wait_for_partitions(error.offline, should_stop)
                producer, position = self._connect(should_stop)
                continue
            self.watch.is_back()
            sent += len(notifications)
            batches += 1
            reporter.advance(len(notifications), events=len(notifications))
            if max_batches is not None and batches >= max_batches:
                break
        return sent

    def _connect(self, should_stop: Callable[[], bool]) -> tuple[Producer, RelayPosition]:
        """A fenced producer and the position Kafka holds, waiting for the broker if it is away."""
        while True:
            self.watch.wait_until_listening("relaying", should_stop)
            try:
                producer = self._producer = self._start_producer()
                position = recover_position(self.config)
            except KafkaUnavailableError:
                # While the broker is away or restarting, leaderless partitions are part of that
                # outage (its partitions load after it listens), told as such.
                offline = self._offline() if self.watch.down_since is None else {}
                if offline:
                    self._wait_for_partitions(offline, should_stop)
                    continue
                self.watch.went_away()
                self.watch.pause("relaying", should_stop)
            else:
                self.watch.is_back()
                self._partitions_back()
                return producer, position

    def _offline(self) -> dict[str, list[int]]:
        """The partitions the relay writes to (its topics, Kafka's transaction log) without a leader."""
        topics = [self.config.topic, TRANSACTION_LOG]
        if self.config.checkpoints_topic:
            topics.append(self.config.checkpoints_topic)
        return offline_partitions(self.config.bootstrap, topics)

    def _wait_for_partitions(self, offline: dict[str, list[int]], should_stop: Callable[[], bool]) -> None:
        """Between two attempts while partitions are offline on a broker that answers.

        Told apart from an unreachable broker: "unreachable" sent the user to a broker that
        was running, and the failure inside a transaction was exit 1 with "N message(s) failed
        delivery". One line when it outlasts a first attempt; after the broker timeout (on a
        cluster a replica elsewhere takes over within it) a give-up line, exit 75, saying what
        to do.
        """
        now = time.monotonic()
        what = describe_offline(self.config.bootstrap, offline)
        timeout = self.config.broker_timeout_s
        if self._offline_since is None:
            # A moment without a leader (an election, a topic just created) is no news: said
            # only when it lasts to the next attempt.
            self._offline_since = now
        elif now - self._offline_since > timeout:
            raise KafkaUnavailableError(
                f"{what}: gave up relaying after {timeout:g} s (set CRM_LEDGER_BROKER_TIMEOUT to wait "
                "longer); a log folder of the broker failed (its disk full, say): make room there and "
                "restart the broker, then run the same command again"
            )
        elif not self._offline_told:
            self._offline_told = True
            self._say(f"{what}; retrying for up to {timeout:g} s")
        if should_stop():
            bootstrap = self.config.bootstrap
            raise KafkaUnavailableError(f"stopped while waiting for partitions of Kafka at {bootstrap}")
        time.sleep(1.0)

    def _partitions_back(self) -> None:
        """Forget an offline spell once the relay is connected again, saying so if it was told."""
        if self._offline_told:
            self._say(f"Kafka at {self.config.bootstrap}: the partitions are back online")
        self._offline_since, self._offline_told = None, False

    def _check_registry(self) -> None:
        """Fail before writing anything when consumers could not resolve an event schema's id."""
        if self.config.registry_url is None:
            return
        events = [v for v in self.codec.registry.all_versions() if v.kind == "event"]
        verify_registered(RemoteRegistry(self.config.registry_url), events, "relay")

    def _read_batch(self, start: int) -> list[Outgoing]:
        """The next notifications from `start`, with their keys and ids read from the bytes."""
        batch = []
        peek = self._peek.peek
        for notification_id, state in read_stored(self.app.recorder, start, self.config.batch_size):
            try:
                event_type, fields = peek(state)
            except DecodeError as error:
                raise CrmLedgerError(
                    f"notification {notification_id} in the ledger store cannot be decoded: {error}"
                ) from error
            event_id = fields.get("event_id")
            if event_id is None:
                raise CrmLedgerError(f"notification {notification_id} in the ledger store has no event_id")
            key = message_key(fields)
            batch.append(Outgoing(notification_id, state, event_type.encode(), event_id, key))
        return batch

    def _publish(
        self, producer: Producer, notifications: list[Outgoing], position: RelayPosition
    ) -> RelayPosition:
        producer.begin_transaction()
        chain = position.chain
        versions = self._versions
        topic = self.config.topic
        previous = position.notification_id
        checkpoints, every = bool(self.config.checkpoints_topic), self.config.checkpoint_every
        try:
            # SQLite rowids can skip after a rolled-back insert; the chain covers whatever
            # ids exist, in order, so a gap is recorded, not an error.
            for outgoing in notifications:
                state = outgoing.state
                chain = next_link(chain, state)
                produce(
                    producer,
                    topic,
                    key=outgoing.key,
                    value=state,
                    headers=[
                        ("event_id", outgoing.event_id),
                        ("event_type", outgoing.event_type),
                        ("notification_id", str(outgoing.notification_id).encode()),
                        ("schema_version", versions.get(state[1:5]) or b"0"),
                        ("chain", chain.hex().encode()),
                    ],
                )
                nid = outgoing.notification_id
                # A checkpoint is due at every `every`-th id and after a period close only.
                cadence, closed = nid // every > previous // every, outgoing.event_type == _CLOSE
                if checkpoints and (cadence or closed):
                    self._checkpoints(producer, outgoing, chain, cadence=cadence, closed=closed)
                previous = nid
            producer.commit_transaction(self.config.broker_timeout_s)
        except KafkaException as error:
            with contextlib.suppress(KafkaException):
                producer.abort_transaction(5)
            reachable = topic_exists(self.config.bootstrap, self.config.topic)
            if self.watch.down_since is not None or not reachable:
                raise _BrokerAwayError from error
            offline = self._offline()
            if offline:
                raise _PartitionsOfflineError(offline) from error
            reason = kafka_reason(error)
            raise CrmLedgerError(f"publishing to {self.config.topic!r} failed: {reason}") from error
        except BaseException:
            # Any other failure inside the transaction (a bad stored event, Ctrl-C) aborts it too.
            with contextlib.suppress(KafkaException):
                producer.abort_transaction(5)
            raise
        return RelayPosition(notifications[-1].notification_id, chain)

    def _checkpoints(
        self, producer: Producer, outgoing: Outgoing, chain: bytes, *, cadence: bool, closed: bool
    ) -> None:
        """Queue the checkpoints due after `outgoing` (inside the open transaction): the
        cadence's when it crossed a multiple of `checkpoint_every`, the period's when it closed one.

        Only a period close is decoded in full (for the head it recorded); every other
        message is forwarded without decoding.
        """
        topic = self.config.checkpoints_topic
        if not topic:
            return
        every = self.config.checkpoint_every
        due = []
        if cadence:
            due.append(Checkpoint(outgoing.notification_id, chain.hex(), now_ms(), CADENCE, every=every))
        if closed:
            _, record = self.codec.decode(outgoing.state)
            if record.get("chain_head"):
                due.append(
                    Checkpoint(
                        int(record["ledger_position"]),
                        str(record["chain_head"]),
                        now_ms(),
                        PERIOD_CLOSE,
                        period=str(record["period"]),
                    )
                )
        for checkpoint in due:
            key, value = encode_checkpoint(self.codec, checkpoint)
            produce(producer, topic, key=key, value=value)


class _BrokerAwayError(Exception):
    """The broker went away during a transaction (internal: the relay reconnects)."""


class _PartitionsOfflineError(Exception):
    """Partitions had no leader during a transaction (internal: the relay waits, then reconnects)."""

    def __init__(self, offline: dict[str, list[int]]) -> None:
        super().__init__(offline)
        self.offline = offline
