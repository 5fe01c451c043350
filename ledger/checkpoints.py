"""Checkpoints: the chain head published outside the ledger, so a wholesale rewrite shows.

The hash chain proves that the store, the topic and the mirror are consistent with each
other; someone who rewrites all of them together leaves a consistent chain. A checkpoint
(notification id, chain value after it, time) kept somewhere the rewriter cannot reach
pins the ledger's state at that point: `audit verify --checkpoints` recomputes the chain
and confirms the ledger still reaches each one.

Checkpoints are published by the relay, in the same Kafka transaction as the events, to
the compacted topic `crm.ledger.checkpoints` whenever the notification id crosses a
multiple of the cadence and whenever it relays a `RewardPeriodClosed` (whose
`chain_head` records the head at the close). `audit head` prints the current head, to be
printed or mailed with a period close and kept by someone else.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaException, Producer

from crm_ledger.errors import KafkaUnavailableError
from crm_ledger.kafka import (
    COMPACTED,
    consumer_config,
    ensure_topic,
    kafka_reason,
    producer_config,
    read_to_end,
    topic_partitions,
)
from ledger.chain import GENESIS, next_link
from ledger.errors import CheckpointError
from ledger.records import epoch_ms
from schemas.codec import AvroCodec

if TYPE_CHECKING:
    from ledger.application import LedgerApplication

CHECKPOINT_TYPE = "LedgerCheckpoint"
CADENCE = "cadence"
PERIOD_CLOSE = "period-close"
MANUAL = "manual"


@dataclass(frozen=True)
class Checkpoint:
    """The chain value after notification `position`, and where the claim comes from."""

    position: int
    chain: str
    published_at: int = 0
    reason: str = MANUAL
    period: str | None = None
    every: int | None = None
    #: where this checkpoint was read (topic and offset, an event, a file, the command line)
    origin: str = ""
    #: the notification that carries it, when it was read from a ledger event
    carried_by: int | None = None

    @property
    def key(self) -> str:
        """Its key on the compacted topic.

        The chain value is part of the key: publishing the same head again replaces its
        record, but a head recomputed after a rewrite gets a key of its own and never
        replaces (compacts away) the original, which then fails verification.
        """
        where = f"{self.period}:{self.position}" if self.reason == PERIOD_CLOSE else str(self.position)
        return f"{self.reason}:{where}:{self.chain}"

    def record(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "chain": self.chain,
            "published_at": self.published_at,
            "reason": self.reason,
            "period": self.period,
            "every": self.every,
        }

    def line(self) -> str:
        """One line to print, mail or file away."""
        moment = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.published_at / 1000))
        return f"{self.position}:{self.chain} ({self.reason}, {moment})"


def parse_checkpoint(text: str, origin: str = "command line") -> Checkpoint:
    """`POSITION:CHAIN` as printed by `audit head` (anything after the chain is ignored)."""
    head = text.strip().split(" ", 1)[0]
    position, _, chain = head.partition(":")
    if not position.isdigit() or len(chain) != 64 or any(c not in "0123456789abcdef" for c in chain):
        raise CheckpointError(
            f"checkpoint {text!r}: expected POSITION:CHAIN (64 hex digits), as `audit head` prints"
        )
    return Checkpoint(int(position), chain, reason="given", origin=origin)


def now_ms() -> int:
    return int(time.time() * 1000)


def chain_at(app: LedgerApplication, position: int | None = None, batch: int = 20_000) -> Checkpoint:
    """The chain value after `position` (default: the last stored notification), from the store."""
    chain = GENESIS
    last = 0
    start = 1
    while position is None or last < position:
        stop = None if position is None else position
        notifications = list(app.read_notifications(start, batch, stop))
        if not notifications:
            break
        for notification in notifications:
            chain = next_link(chain, notification.state)
        last = notifications[-1].id
        start = last + 1
    return Checkpoint(last, chain.hex(), now_ms())


def encode(codec: AvroCodec, checkpoint: Checkpoint) -> tuple[bytes, bytes]:
    """(key, value) of a checkpoint on the topic; the value is Avro in the wire format."""
    return checkpoint.key.encode(), codec.encode(CHECKPOINT_TYPE, checkpoint.record())


def ensure_checkpoint_topic(bootstrap: str, topic: str) -> None:
    """One partition (a total order is cheap at this volume), compacted by key."""
    ensure_topic(bootstrap, topic, 1, COMPACTED)


def publish(bootstrap: str, topic: str, codec: AvroCodec, checkpoint: Checkpoint) -> None:
    """Send one checkpoint (outside the relay: `audit head --publish`)."""
    ensure_checkpoint_topic(bootstrap, topic)
    key, value = encode(codec, checkpoint)
    producer = Producer(producer_config(bootstrap, **{"enable.idempotence": True}))
    producer.produce(topic, value=value, key=key)
    if producer.flush(30) != 0:
        raise KafkaUnavailableError(f"publishing a checkpoint to {topic!r} timed out")


def read_published(bootstrap: str, topic: str, codec: AvroCodec, timeout_s: float = 30.0) -> list[Checkpoint]:
    """Every checkpoint on the topic (the newest record per key; tombstones remove a key)."""
    consumer = Consumer(consumer_config(bootstrap, f"crm-ledger-checkpoints-{uuid.uuid4().hex[:8]}"))
    try:
        partitions = topic_partitions(consumer, topic, timeout_s)
        if partitions is None:
            return []
        found: dict[bytes, Checkpoint | None] = {}
        for message in read_to_end(consumer, topic, partitions, timeout_s):
            key = message.key() or b""
            value = message.value()
            if value is None:
                found[key] = None
                continue
            _, record = codec.decode(value)
            found[key] = Checkpoint(
                int(record["position"]),
                str(record["chain"]),
                _millis(record["published_at"]),
                str(record["reason"]),
                record.get("period"),
                record.get("every"),
                origin=f"{topic}[{message.partition()}]@{message.offset()}",
            )
        return [c for c in found.values() if c is not None]
    except KafkaException as error:
        raise KafkaUnavailableError(f"reading {topic!r} failed: {kafka_reason(error)}") from error
    finally:
        consumer.close()


def _millis(value: Any) -> int:
    return epoch_ms(value) if isinstance(value, datetime) else int(value)


def cadence_gaps(published: Iterable[Checkpoint], relayed_up_to: int) -> Iterator[int]:
    """Multiples of the cadence, from the first cadence checkpoint up to the relayed end,
    that have no cadence checkpoint (deleted from the topic, or never written)."""
    cadence = sorted((c for c in published if c.reason == CADENCE and c.every), key=lambda c: c.position)
    if not cadence:
        return
    every = int(cadence[-1].every or 1)
    have = {c.position // every for c in cadence}
    for step in range(min(have), relayed_up_to // every + 1):
        if step not in have:
            yield step * every
