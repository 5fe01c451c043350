"""`audit verify`: recompute the hash chain from each copy of the ledger and cross-check.

Copies: the ledger store (the source of truth; it holds no chain, its chain is
recomputed from the stored bytes), the Kafka topic (bytes plus the relay's chain header)
and the DuckDB mirror (bytes plus the chain column). Each copy is checked on its own (no
gaps, no duplicates, order within a partition, chain values consistent with the bytes)
and against the store, event by event. When bytes disagree, the copy that disagrees with
all others is named as the altered one. The first problem of each kind and copy is
reported with its notification id, event id and location.

Checkpoints (see `ledger.checkpoints`) pin the chain outside the ledger: the chain
recomputed from the store must pass through each one, or the ledger was rewritten.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb
from confluent_kafka import Consumer, KafkaException

from crm_ledger.errors import CrmLedgerError, KafkaUnavailableError
from crm_ledger.kafka import consumer_config, kafka_reason, read_to_end, topic_partitions
from ledger.chain import GENESIS, next_link
from ledger.checkpoints import PERIOD_CLOSE, Checkpoint, cadence_gaps

if TYPE_CHECKING:
    from ledger.application import LedgerApplication

STORE = "ledger"


@dataclass(frozen=True)
class ChainEntry:
    """One event as a copy holds it."""

    notification_id: int | None
    event_id: str | None
    value: bytes
    chain: str | None
    where: str
    stream: str = ""


@dataclass(frozen=True)
class Finding:
    """One problem: what, in which copy, at which event."""

    #: missing | duplicate | reordered | altered | chain | unattributed | checkpoint | decoded | statement
    kind: str
    copy: str
    notification_id: int | None
    event_id: str | None
    where: str
    detail: str
    #: the decoded column a `decoded` finding is about
    column: str | None = None

    def __str__(self) -> str:
        return (
            f"{self.kind} in {self.copy}: notification {self.notification_id}, "
            f"event {self.event_id} ({self.where}): {self.detail}"
        )


@dataclass
class AuditReport:
    """Counts per copy, the recomputed head of the chain, and the findings."""

    events: dict[str, int] = field(default_factory=dict)
    head: str | None = None
    findings: list[Finding] = field(default_factory=list)
    checkpoints: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings


def verify(
    store: Iterable[ChainEntry],
    copies: Mapping[str, Iterable[ChainEntry]],
    checkpoints: Iterable[Checkpoint] = (),
) -> AuditReport:
    """Check the store and every copy, and that the ledger reaches every checkpoint.

    `checkpoints` is iterated only after the store and the copies have been read, so it
    may be filled while they are.
    """
    report = AuditReport()
    findings: list[Finding] = []
    truth: dict[int, ChainEntry] = {}
    for entry in store:
        assert entry.notification_id is not None
        truth[entry.notification_id] = entry
    report.events[STORE] = len(truth)
    findings.extend(_repeated_event_ids(STORE, truth))
    last = max(truth, default=0)
    for nid in range(1, last + 1):
        if nid not in truth:
            findings.append(
                Finding("missing", STORE, nid, None, "event store", "notification id absent (deleted?)")
            )
    chain = GENESIS
    for nid in sorted(truth):
        chain = next_link(chain, truth[nid].value)
    report.head = chain.hex()

    held: dict[str, dict[int, ChainEntry]] = {}
    #: copies whose chain values are consistent with their own bytes: written as relayed
    intact: dict[str, bool] = {}
    for name, entries in copies.items():
        by_id: dict[int, ChainEntry] = {}
        last_in_stream: dict[str, int] = {}
        count = 0
        for entry in entries:
            count += 1
            if entry.notification_id is None:
                findings.append(
                    Finding(
                        "unattributed",
                        name,
                        None,
                        entry.event_id,
                        entry.where,
                        "record without a notification id",
                    )
                )
                continue
            nid = entry.notification_id
            previous = last_in_stream.get(entry.stream)
            if entry.stream and previous is not None and nid < previous:
                findings.append(
                    Finding(
                        "reordered",
                        name,
                        nid,
                        entry.event_id,
                        entry.where,
                        f"after notification {previous} in the same partition",
                    )
                )
            last_in_stream[entry.stream] = max(nid, previous or 0)
            if nid in by_id:
                findings.append(
                    Finding(
                        "duplicate", name, nid, entry.event_id, entry.where, f"already at {by_id[nid].where}"
                    )
                )
                continue
            if nid not in truth:
                findings.append(
                    Finding(
                        "unattributed",
                        name,
                        nid,
                        entry.event_id,
                        entry.where,
                        "no such notification in the ledger store",
                    )
                )
            by_id[nid] = entry
        report.events[name] = count
        held[name] = by_id
        findings.extend(_repeated_event_ids(name, by_id))
        # Past the copy's last notification it is behind (not yet projected or relayed), or
        # its tail was removed: one finding saying which, not one "missing" per event.
        copy_end = max(by_id, default=0)
        after = [nid for nid in truth if nid > copy_end]
        if after:
            first = min(after)
            findings.append(
                Finding(
                    "behind",
                    name,
                    first,
                    truth[first].event_id,
                    "-",
                    f"this copy ends at notification {copy_end}, the ledger holds {len(after)} more: "
                    "not yet projected or relayed (then run it and verify again), or removed",
                )
            )
        for nid in sorted(truth):
            if nid not in by_id and nid <= copy_end:
                findings.append(
                    Finding(
                        "missing",
                        name,
                        nid,
                        truth[nid].event_id,
                        "-",
                        "in the ledger store but not in this copy",
                    )
                )
        # The copy's own chain: its bytes, with the store's where it has a gap.
        chain = GENESIS
        intact[name] = any(e.chain is not None for e in by_id.values())
        for nid in sorted(set(truth) | set(by_id)):
            held_entry = by_id.get(nid)
            value = held_entry.value if held_entry is not None else truth[nid].value
            chain = next_link(chain, value)
            if held_entry is not None and held_entry.chain is not None and held_entry.chain != chain.hex():
                entry = held_entry
                findings.append(
                    Finding(
                        "chain",
                        name,
                        nid,
                        entry.event_id,
                        entry.where,
                        "chain value does not match the bytes before it",
                    )
                )
                intact[name] = False
                break

    for nid, original in sorted(truth.items()):
        differing = [
            name for name, by_id in held.items() if nid in by_id and by_id[nid].value != original.value
        ]
        if not differing:
            continue
        agreeing = [
            name for name, by_id in held.items() if nid in by_id and by_id[nid].value == original.value
        ]
        # An intact copy still holds what was relayed: if it disagrees, the store changed.
        if not agreeing and any(intact.get(name) for name in differing):
            detail = f"stored bytes differ from the intact chain of {', '.join(differing)}"
            findings.append(Finding("altered", STORE, nid, original.event_id, original.where, detail))
        else:
            for name in differing:
                entry = held[name][nid]
                findings.append(
                    Finding(
                        "altered",
                        name,
                        nid,
                        entry.event_id,
                        entry.where,
                        "bytes differ from the ledger store",
                    )
                )
    pinned = list(checkpoints)
    report.checkpoints = len(pinned)
    findings.extend(_check_checkpoints(truth, held, pinned))
    report.findings = _first_of_each(findings)
    return report


def _repeated_event_ids(copy: str, by_id: Mapping[int, ChainEntry]) -> list[Finding]:
    """Events held under a second notification id with an event id seen before.

    One event id names one fact in the whole ledger (the event-id index refuses a second
    one), so a repeat is a row copied in behind the ledger's back: its bytes are valid and
    the chain recomputed over them is consistent, so only this check sees it (and a read
    model that counts events may count the fact twice).
    """
    first: dict[str, int] = {}
    findings = []
    for nid in sorted(by_id):
        entry = by_id[nid]
        if entry.event_id is None:
            continue
        earlier = first.setdefault(entry.event_id, nid)
        if earlier != nid:
            detail = f"event id already held at notification {earlier}: one fact recorded twice"
            findings.append(Finding("duplicate", copy, nid, entry.event_id, entry.where, detail))
    return findings


def _check_checkpoints(
    truth: Mapping[int, ChainEntry], held: Mapping[str, Mapping[int, ChainEntry]], pinned: list[Checkpoint]
) -> list[Finding]:
    """The store's recomputed chain (and each copy's chain values) at each checkpoint."""
    if not pinned:
        return []
    wanted = {c.position for c in pinned}
    after: dict[int, str] = {}
    chain = GENESIS
    for nid in sorted(truth):
        chain = next_link(chain, truth[nid].value)
        if nid in wanted:
            after[nid] = chain.hex()
    last = max(truth, default=0)
    findings = []
    for checkpoint in sorted(pinned, key=lambda c: c.position):
        claim = f"{checkpoint.reason} checkpoint from {checkpoint.origin} says {checkpoint.chain[:16]}…"
        position = checkpoint.position
        if position > last:
            detail = f"the ledger ends at notification {last}, before this {claim}"
            findings.append(Finding("checkpoint", STORE, position, None, "event store", detail))
            continue
        if position not in truth:
            detail = f"notification absent, but a {claim}"
            findings.append(Finding("checkpoint", STORE, position, None, "event store", detail))
            continue
        original = truth[position]
        if after[position] != checkpoint.chain:
            detail = (
                f"chain recomputed from the store is {after[position][:16]}…, the {claim}: "
                "the ledger was rewritten at or before this notification"
            )
            findings.append(Finding("checkpoint", STORE, position, original.event_id, original.where, detail))
        for name, by_id in held.items():
            entry = by_id.get(position)
            if entry is not None and entry.chain is not None and entry.chain != checkpoint.chain:
                detail = f"chain value {entry.chain[:16]}… here, the {claim}"
                findings.append(Finding("checkpoint", name, position, entry.event_id, entry.where, detail))
    return findings


def checkpoint_coverage(
    published: Iterable[Checkpoint], closes: Iterable[Checkpoint], relayed_up_to: int, topic: str
) -> list[Finding]:
    """Checkpoints that should be on the topic and are not.

    Every multiple of the cadence from the first cadence checkpoint up to what the relay
    has sent needs one, and so does every relayed period close that recorded a chain head.
    """
    published = list(published)
    findings = [
        Finding(
            "missing",
            "checkpoints",
            step,
            None,
            topic,
            "no cadence checkpoint for this stretch of the ledger (deleted from the topic?)",
        )
        for step in cadence_gaps(published, relayed_up_to)
    ]
    on_topic = {c.period for c in published if c.reason == PERIOD_CLOSE}
    for close in closes:
        relayed = close.carried_by is not None and close.carried_by <= relayed_up_to
        if relayed and close.period not in on_topic:
            findings.append(
                Finding(
                    "missing",
                    "checkpoints",
                    close.position,
                    None,
                    topic,
                    f"period {close.period} was closed and relayed, but its chain head is not on the topic",
                )
            )
    return findings


def _first_of_each(findings: Iterable[Finding]) -> list[Finding]:
    seen: set[tuple[str, str, str | None]] = set()
    first = []
    for finding in findings:
        key = (finding.kind, finding.copy, finding.column)
        if key not in seen:
            seen.add(key)
            first.append(finding)
    return first


def store_entries(app: LedgerApplication, batch: int = 20_000) -> Iterator[ChainEntry]:
    """Every stored notification, in order, with its event id."""
    return StoreReader(app, batch).entries()


class StoreReader:
    """Reads the event store for `verify`, collecting the period closes' chain heads on the way."""

    def __init__(self, app: LedgerApplication, batch: int = 20_000) -> None:
        self.app = app
        self.batch = batch
        self.closes: list[Checkpoint] = []

    def entries(self) -> Iterator[ChainEntry]:
        """Every stored notification, in order, with its event id."""
        start = 1
        while True:
            notifications = list(self.app.read_notifications(start, self.batch))
            if not notifications:
                return
            decoded = self.app.codec.decode_many([n.state for n in notifications])
            for notification, result in zip(notifications, decoded, strict=True):
                event_id = None
                if not isinstance(result, Exception):
                    event_type, record = result
                    event_id = record["event_id"]
                    if event_type == "RewardPeriodClosed" and record.get("chain_head"):
                        self.closes.append(_close_checkpoint(notification.id, record))
                yield ChainEntry(
                    notification.id, event_id, notification.state, None, f"event store row {notification.id}"
                )
            start = notifications[-1].id + 1

    def period_closes(self) -> Iterator[Checkpoint]:
        """The chain heads recorded by period closes (complete once `entries` is exhausted)."""
        yield from self.closes


def _close_checkpoint(nid: int, record: Mapping[str, Any]) -> Checkpoint:
    return Checkpoint(
        int(record["ledger_position"]),
        str(record["chain_head"]),
        int(record["occurred_at"]) if isinstance(record["occurred_at"], int) else 0,
        PERIOD_CLOSE,
        period=str(record["period"]),
        origin=f"RewardPeriodClosed {record['period']} (notification {nid})",
        carried_by=nid,
    )


def kafka_entries(bootstrap: str, topic: str, timeout_s: float = 30.0) -> Iterator[ChainEntry]:
    """Every committed record of the topic (read_committed), partition by partition."""
    consumer = Consumer(consumer_config(bootstrap, f"crm-ledger-audit-{uuid.uuid4().hex[:8]}"))
    try:
        yield from _read_topic(consumer, bootstrap, topic, timeout_s)
    except KafkaException as error:
        raise KafkaUnavailableError(
            f"reading {topic!r} from Kafka at {bootstrap} failed: {kafka_reason(error)}"
        ) from error
    finally:
        consumer.close()


def _read_topic(consumer: Consumer, bootstrap: str, topic: str, timeout_s: float) -> Iterator[ChainEntry]:
    partitions = topic_partitions(consumer, topic, timeout_s)
    if partitions is None:
        raise CrmLedgerError(f"topic {topic!r} does not exist at {bootstrap}")
    for message in read_to_end(consumer, topic, partitions, timeout_s):
        partition = int(message.partition() or 0)
        headers = dict(message.headers() or [])
        nid = headers.get("notification_id")
        event_id = headers.get("event_id")
        chain = headers.get("chain")
        yield ChainEntry(
            int(nid) if nid is not None else None,
            event_id.decode() if isinstance(event_id, bytes) else event_id,
            message.value() or b"",
            chain.decode() if isinstance(chain, bytes) else chain,
            f"{topic}[{partition}]@{message.offset()}",
            stream=str(partition),
        )


def mirror_entries(
    connection: duckdb.DuckDBPyConnection, table: str = "ledger_events"
) -> Iterator[ChainEntry]:
    """Every row of the DuckDB audit mirror, in notification order."""
    sql = (
        f'SELECT notification_id, event_id, value, chain, source, "partition", "offset" FROM {table} '
        "ORDER BY notification_id"
    )
    return batch_entries(connection.sql(sql).to_arrow_reader(50_000), table)


def batch_entries(batches: Iterable[Any], table: str = "ledger_events") -> Iterator[ChainEntry]:
    """Chain entries of mirrored rows given as Arrow record batches (see `projections.mirror`)."""
    for batch in batches:
        columns = [
            batch.column(name).to_pylist()
            for name in ("notification_id", "event_id", "value", "chain", "source", "partition", "offset")
        ]
        for nid, event_id, value, chain, source, partition, offset in zip(*columns, strict=True):
            where = f"{table} ({source}" + (f"[{partition}]@{offset})" if partition is not None else ")")
            yield ChainEntry(nid, event_id, bytes(value), chain, where)
