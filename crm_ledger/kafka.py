"""Small helpers around confluent-kafka: client configs, topic creation, error translation."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from crm_ledger.errors import CrmLedgerError, KafkaUnavailableError

#: librdkafka logs through this logger, which keeps its lines off the terminal: what the user
#: needs to know comes from `BrokerWatch`, one line when the broker goes away, one when back.
_LIBRDKAFKA_LOG = logging.getLogger("crm_ledger.librdkafka")
_LIBRDKAFKA_LOG.addHandler(logging.NullHandler())
_LIBRDKAFKA_LOG.propagate = False
DEFAULT_BROKER_TIMEOUT_S = 60.0

def _never() -> bool:
    return False


UNREACHABLE = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE})
#: How long after the broker is back a failure while it listens counts as part of the same outage.
#: A failure while nothing listens is always told as a new outage, so a long window hides
#: nothing real; with 30 s, one restart on a crowded machine was once told as two outages.
RESTART_SETTLING_S = 120.0


class BrokerWatch:
    """Notices when the broker goes away and comes back, and when to give up.

    Pass `client_config()` into a producer's or consumer's configuration; librdkafka then
    reports connection trouble here (`error_cb`) instead of printing its own lines.
    """

    def __init__(
        self, bootstrap: str, say: Callable[[str], None], timeout_s: float = DEFAULT_BROKER_TIMEOUT_S
    ) -> None:
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self._say = say
        self.down_since: float | None = None
        self._back_at: float | None = None  # when the broker was last told to be back
        self._hiccup = False  # the current trouble is a hiccup just after a restart

    def client_config(self) -> dict[str, Any]:
        return {"error_cb": self.on_error, "logger": _LIBRDKAFKA_LOG}

    def on_error(self, error: KafkaError) -> None:
        if error.code() in UNREACHABLE:
            self.went_away()

    def went_away(self) -> None:
        if self.down_since is not None:
            return
        now = time.monotonic()
        self.down_since = now
        # Just after a restart a listening broker can still fail a request (a connection made
        # while it was away reporting late, its coordinators still loading): a hiccup of the
        # same outage, retried like one, but not told as a second one.
        self._hiccup = (
            self._back_at is not None
            and now - self._back_at < RESTART_SETTLING_S
            and broker_listens(self.bootstrap, 0.5)
        )
        if not self._hiccup:
            self._say(f"Kafka at {self.bootstrap} is unreachable; retrying for up to {self.timeout_s:g} s")

    def is_back(self) -> None:
        if self.down_since is not None:
            self.down_since = None
            if not self._hiccup:
                self._back_at = time.monotonic()
                self._say(f"Kafka at {self.bootstrap} is back")
            self._hiccup = False

    def check_while_idle(self, what: str) -> None:
        """With nothing to send or read, say when the broker is back, or give up after the timeout."""
        if self.down_since is None:
            return
        if broker_listens(self.bootstrap):
            self.is_back()
        else:
            self.give_up_if_too_long(what)

    def wait_until_listening(
        self, what: str, should_stop: Callable[[], bool] = _never, pause_s: float = 1.0
    ) -> None:
        """Return once the broker accepts connections; give up as `pause` does."""
        while not broker_listens(self.bootstrap):
            self.went_away()
            self.pause(what, should_stop, pause_s)

    def pause(self, what: str, should_stop: Callable[[], bool] = _never, pause_s: float = 1.0) -> None:
        """Between two attempts to reach the broker: give up after the timeout or when told to stop."""
        self.give_up_if_too_long(what)
        if should_stop():
            raise KafkaUnavailableError(f"stopped while waiting for Kafka at {self.bootstrap}")
        time.sleep(pause_s)

    def give_up_if_too_long(self, what: str) -> None:
        """Raise `KafkaUnavailableError` once the broker has been away longer than the timeout."""
        if self.down_since is not None and time.monotonic() - self.down_since > self.timeout_s:
            raise KafkaUnavailableError(
                f"Kafka at {self.bootstrap} was unreachable for {self.timeout_s:g} s; gave up {what} "
                "(set CRM_LEDGER_BROKER_TIMEOUT to wait longer); run the same command again when it is back"
            )


def await_broker(bootstrap: str, timeout_s: float, what: str) -> None:
    """Before a one-shot command talks to Kafka: wait until the broker listens, as the relay does.

    Quiet while it waits; after `timeout_s` it gives up with the relay's one line (exit 75 at
    the command line) instead of a client's raw error after its own, longer, time-outs.
    """
    BrokerWatch(bootstrap, lambda _: None, timeout_s).wait_until_listening(what)


def kafka_reason(error: BaseException) -> str:
    """What librdkafka says went wrong, without the `KafkaError{code=...}` wrapping."""
    first = error.args[0] if isinstance(error, KafkaException) and error.args else error
    if isinstance(first, KafkaError):
        return str(first.str())
    return str(first)


def admin(bootstrap: str) -> AdminClient:
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "log_level": 3, "logger": _LIBRDKAFKA_LOG}
    return AdminClient(config)


def ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> bool:
    """Create the topic if absent; True when it was created now."""
    client = admin(bootstrap)
    try:
        metadata = client.list_topics(timeout=timeout_s)
    except KafkaException as error:
        raise KafkaUnavailableError(f"Kafka at {bootstrap} did not answer: {kafka_reason(error)}") from error
    if topic in metadata.topics:
        return False
    futures = client.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=dict(config or {}))],
        operation_timeout=timeout_s,
    )
    try:
        futures[topic].result(timeout=timeout_s)
    except KafkaException as error:
        if error.args and error.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise CrmLedgerError(f"creating topic {topic!r} failed: {kafka_reason(error)}") from error
    return True


def delete_topics(bootstrap: str, topics: list[str], timeout_s: float = 30.0) -> None:
    """Delete topics (tests and resets); missing ones are ignored."""
    client = admin(bootstrap)
    futures = client.delete_topics(topics, operation_timeout=timeout_s)
    for future in futures.values():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise


def consumer_config(bootstrap: str, group_id: str, **extra: Any) -> dict[str, Any]:
    """A read_committed consumer with manual offset handling."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "fetch.max.bytes": 52_428_800,
        "max.partition.fetch.bytes": 10_485_760,
        "queued.max.messages.kbytes": 262_144,
        "log_level": 3,
        "logger": _LIBRDKAFKA_LOG,
    }
    config.update(extra)
    return config


def topic_partitions(consumer: Any, topic: str, timeout_s: float) -> list[int] | None:
    """The partitions of `topic` (None when the broker has no such topic)."""
    metadata = consumer.list_topics(topic, timeout=timeout_s)
    if topic not in metadata.topics or metadata.topics[topic].error is not None:
        return None
    return sorted(metadata.topics[topic].partitions)


def read_to_end(consumer: Any, topic: str, partitions: list[int], timeout_s: float) -> Iterator[Any]:
    """Every record of the partitions, from their first offset to their end when read.

    `consumer` comes from `consumer_config`, which reports each partition's end. No record
    for `timeout_s` before every end is reached is a broker that went away.
    """
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    done: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(done) < len(partitions):
        messages = consumer.consume(5000, timeout=0.2)
        if not messages and time.monotonic() > deadline:
            raise KafkaUnavailableError(f"timed out reading {topic!r}")
        for message in messages:
            if message.error():
                done.add(int(message.partition() or 0))
                continue
            deadline = time.monotonic() + timeout_s
            yield message


def producer_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """A producer whose librdkafka log lines stay off the terminal (see `_LIBRDKAFKA_LOG`)."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "log_level": 3, "logger": _LIBRDKAFKA_LOG}
    config.update(extra)
    return config


INFINITE_RETENTION = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
COMPACTED = {
    "cleanup.policy": "compact",
    "min.cleanable.dirty.ratio": "0.1",
    "segment.ms": "600000",
}


def broker_listens(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """Whether any bootstrap address accepts a connection (no Kafka client, no log lines)."""
    return unreachable_reason(bootstrap, timeout_s) is None


def unreachable_reason(bootstrap: str, timeout_s: float = 2.0) -> str | None:
    """None when any bootstrap address accepts a connection, else why the last one did not
    ("Connection refused", "timed out"), for a message that has to say why."""
    reason = "no address given"
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
                return None
        except ValueError:
            reason = f"{address.strip()!r} is not HOST:PORT"
        except OSError as error:
            reason = error.strerror or str(error) or type(error).__name__
    return reason


def topic_exists(bootstrap: str, topic: str, timeout_s: float = 3.0) -> bool:
    """Whether the broker answers and has the topic; quiet when nothing listens."""
    if not broker_listens(bootstrap, timeout_s):
        return False
    try:
        metadata = admin(bootstrap).list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return topic in metadata.topics


#: Kafka's own topic holding the transaction coordinators' state.
TRANSACTION_LOG = "__transaction_state"


def offline_partitions(bootstrap: str, topics: Iterable[str], timeout_s: float = 3.0) -> dict[str, list[int]]:
    """The partitions of `topics` that have no leader to write to, by topic.

    A broker whose log folder failed (its disk full, say) stays up and answers, but the
    partitions kept there have no leader until it is restarted with the folder writable
    (on a cluster, until a replica elsewhere takes over): producing to them times out and
    reading them says "unknown partition", which looked like a broker that went away.
    Empty when all have a leader, and when the broker does not answer (that is an outage).
    """
    if not broker_listens(bootstrap, timeout_s):
        return {}  # at once, not after the client's time-out: a broker that went away is told as such
    try:
        metadata = admin(bootstrap).list_topics(timeout=timeout_s)
    except KafkaException:
        return {}
    found: dict[str, list[int]] = {}
    for name in topics:
        topic = metadata.topics.get(name)
        if topic is None:
            continue
        down = sorted(p for p, part in topic.partitions.items() if part.leader < 0 or part.error is not None)
        if down:
            found[name] = down
    return found


def describe_offline(bootstrap: str, offline: Mapping[str, list[int]]) -> str:
    """Which partitions are offline, as one clause ("partitions 1, 3 of 'x' are offline")."""
    parts = [f"{', '.join(map(str, numbers))} of {topic!r}" for topic, numbers in offline.items()]
    return f"Kafka at {bootstrap} answers, but partitions {'; '.join(parts)} are offline"


def produce(
    producer: Any,
    topic: str,
    *,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, str | bytes | None]] | None = None,
) -> None:
    """Queue one message, waiting (serving delivery callbacks) while the local queue is full.

    Broker errors (KafkaException) propagate: a transactional caller must abort first.
    """
    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=headers)
            return
        except BufferError:
            producer.poll(0.05)
