"""Decoder workers: members of one Kafka consumer group, each appending its partitions' batches.

A worker needs the topic and the decoded log's storage, nothing else (no DuckDB). The
consumer group decides which worker owns which partitions; the log decides where each
partition resumes: on every assignment the worker reads `transaction_version(stream)` and
seeks to the next offset, never trusting committed consumer offsets (none are committed).

Each batch (consume calls of `consume_size` messages, up to `batch_size`, gathered while they
come back full) is decoded natively, written once as a Parquet file (projections.staging) and
committed to the Delta log in one commit carrying an application transaction per partition it
advances, while the cyclic garbage collector is paused (crm_ledger.collector). Before committing,
the worker checks that each partition's position in the log is still the one it last saw,
and commits against exactly that snapshot: should a partition have moved to another worker
meanwhile (a rebalance, a worker presumed dead), Delta's conflict check refuses the commit
and the worker seeks back to the log's position instead of writing a duplicate. Commits of
different partitions never conflict; a commit that loses the race to another one is simply
tried again (the same file, not written again).

A worker reads only what the log needs per message: the value, the partition and offset,
and the two headers the decoded log keeps (`notification_id`, `chain`). The chain is the
ledger's hash chain in notification order across all partitions, so a worker that sees some
partitions cannot recompute it from the values; it is copied from the header, as the
single-process path does. The headers cost ~1.8 µs per message (confluent-kafka builds five
tuples, strings and bytes each time); most of what they used to cost (~8 µs) was the garbage
collector walking those live objects again and again, which the pause removes.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from deltalake import CommitProperties, DeltaTable, Transaction
from deltalake.transaction import AddAction

from crm_ledger.collector import collections_paused
from crm_ledger.errors import CrmLedgerError, KafkaUnavailableError
from crm_ledger.kafka import UNREACHABLE, BrokerWatch
from projections.columns import LOG_SCHEMA
from projections.decoder_process import Member, WorkerConfig, WorkerReport, join_group
from projections.errors import StaleBatchError
from projections.log import DecodedLog
from projections.native import NativeBatchBuilder
from projections.sources import Position, RawBatch, kafka_stream
from projections.staging import Stager
from schemas.codec import AvroCodec
from schemas.registry import SchemaRegistry

#: How long a consume call waits for messages when none are ready: also how long a worker
#: may take to notice that it is told to stop (the end of every run without --follow).
IDLE_WAIT_S = 0.05


class PartitionAppender:
    """Commits a worker's batches to the log, refusing any that another owner overtook."""

    def __init__(self, log: DecodedLog) -> None:
        self.log = log
        self.stager = Stager(log.path)
        #: the last position this worker saw in the log for each partition it owns
        self.expected: dict[str, int | None] = {}
        #: commits that lost the race to another commit and were tried again
        self.retries = 0

    def owned(self, streams: list[str]) -> dict[str, Position]:
        """Take ownership of `streams`: their positions in the log, remembered as expected."""
        table = self.log.table()
        positions = {}
        for stream in streams:
            last = table.transaction_version(stream)
            self.expected[stream] = None if last is None else int(last)
            if last is not None:
                positions[stream] = Position(stream, int(last))
        return positions

    def commit(self, table: Any, positions: list[Position]) -> int:
        """One Delta commit of the rows and their positions; raises StaleBatchError if overtaken.

        The rows are written once; each attempt commits only their files (projections.staging).
        """
        # A stream this worker no longer owns (revoked while its batch was gathered) is stale
        # as well: its new owner resumes it from the log.
        lost = [p.stream for p in positions if p.stream not in self.expected]
        if lost:
            raise StaleBatchError(f"{', '.join(lost)} no longer owned by this worker")
        actions = self.stager.stage(table)
        self.retries += self.log.commit_checked(
            positions, self.expected, lambda snapshot: _commit(snapshot, actions, positions)
        )
        for position in positions:
            self.expected[position.stream] = position.offset
        return len(table)


def _commit(snapshot: DeltaTable, actions: list[AddAction], positions: list[Position]) -> None:
    # Committed against the checked snapshot with no automatic retry: a commit since then
    # that advanced one of these streams is a conflict (Delta compares application
    # transactions), not a silent duplicate.
    snapshot.create_write_transaction(
        list(actions),
        mode="append",
        schema=LOG_SCHEMA,
        commit_properties=CommitProperties(
            app_transactions=[Transaction(p.stream, p.offset) for p in positions], max_commit_retries=0
        ),
    )


def read_batch(messages: list[Any], topic: str, watch: BrokerWatch) -> tuple[RawBatch, list[int]]:
    """The values, positions and the two kept headers of consumed messages; and partitions at end.

    Each attribute is read for the whole batch with `map` over confluent-kafka's own
    accessors (no Python code per message); the messages carrying an error (end of a
    partition, the broker gone) are looked at one by one only when there are any.
    """
    at_end: list[int] = []
    if any(map(Message.error, messages)):
        messages = _without_errors(messages, topic, watch, at_end)
    batch = RawBatch()
    if not messages:
        return batch, at_end
    watch.is_back()
    values: list[Any] = list(map(Message.value, messages))
    if None in values:  # a record without a value (never written by the relay)
        values = [value or b"" for value in values]
    batch.values = values
    # Any: confluent-kafka types these as optional, but a message without an error has them.
    partitions: list[Any] = list(map(Message.partition, messages))
    offsets: list[Any] = list(map(Message.offset, messages))
    headers: list[Any] = list(map(Message.headers, messages))
    batch.partitions = partitions
    batch.offsets = offsets
    batch.notification_ids, batch.chains = _kept_headers(headers)
    batch.sources = [topic] * len(values)
    # Within a partition the messages come in offset order: the last one wins.
    for partition, offset in dict(zip(partitions, offsets, strict=True)).items():
        stream = kafka_stream(topic, partition)
        batch.positions[stream] = Position(stream, offset)
    return batch, at_end


def _without_errors(messages: list[Any], topic: str, watch: BrokerWatch, at_end: list[int]) -> list[Any]:
    """The messages without an error; partitions at their end go to `at_end`."""
    kept = []
    for message in messages:
        error = message.error()
        if error is None:
            kept.append(message)
        elif error.code() == KafkaError._PARTITION_EOF:
            at_end.append(int(message.partition()))
        elif error.code() in UNREACHABLE:
            watch.went_away()
        else:
            raise KafkaUnavailableError(f"consuming {topic!r} failed: {error.str()}")
    return kept


#: Where the relay puts the two headers the log keeps (event_id, event_type, notification_id,
#: schema_version, chain): read by position when every message has them there.
_NID_AT, _CHAIN_AT = 2, 4
_KEY, _VALUE = itemgetter(0), itemgetter(1)


def _kept_headers(
    headers: list[list[tuple[str, bytes]] | None],
) -> tuple[list[int | None], list[str | None]]:
    """`notification_id` and `chain` of each message's headers.

    When every message has the relay's layout, the two are picked by position with `map`
    and `itemgetter` (~0.3 µs per message, against ~7 µs for a loop over every header of
    every message); any other layout is searched message by message.
    """
    try:
        nid_pairs = list(map(itemgetter(_NID_AT), headers))  # type: ignore[arg-type]
        chain_pairs = list(map(itemgetter(_CHAIN_AT), headers))  # type: ignore[arg-type]
        if set(map(_KEY, nid_pairs)) == {"notification_id"} and set(map(_KEY, chain_pairs)) == {"chain"}:
            nids: list[int | None] = list(map(int, map(_VALUE, nid_pairs)))
            chains: list[str | None] = list(map(bytes.decode, map(_VALUE, chain_pairs)))
            return nids, chains
    except (IndexError, TypeError, ValueError, AttributeError, UnicodeDecodeError):
        pass  # some message has other headers: search each one
    nids = []
    chains = []
    for pairs in headers:
        found = dict(pairs or [])
        nid, chain = found.get("notification_id"), found.get("chain")
        nids.append(int(nid) if nid is not None else None)
        chains.append(chain.decode() if isinstance(chain, bytes) else chain)
    return nids, chains


def run_worker(
    worker: int,
    config: WorkerConfig,
    stop: Any,
    reports: Any,
    *,
    member: Member | None = None,
    marks: Mapping[str, float] | None = None,
) -> None:
    """A decoder worker: consume, decode, commit, until `stop` is set.

    `member` is the worker's consumer when it joined the group already (see
    projections.decoder_process); else it joins here. `marks`: when its start-up steps
    ended so far (see `WorkerReport.marks`). Ctrl-C reaches the whole process
    group; the main process decides when to stop, so the worker ignores it (and never
    prints a traceback of its own). Failures are reported as one line through `reports`.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _work(
            worker,
            config,
            member or join_group(config),
            marks=dict(marks or {}),
            should_stop=stop.is_set,
            report=reports.put,
        )
    except CrmLedgerError as error:
        reports.put(
            WorkerReport(worker, error=str(error), transient=isinstance(error, KafkaUnavailableError))
        )
    except Exception as error:  # noqa: BLE001 - reported to the main process as one line
        reports.put(
            WorkerReport(worker, error=f"decoder worker {worker} failed: {type(error).__name__}: {error}")
        )


def _work(
    worker: int,
    config: WorkerConfig,
    member: Member,
    *,
    marks: dict[str, float],
    should_stop: Callable[[], bool],
    report: Callable[[WorkerReport], None],
) -> None:
    consumer, watch = member.consumer, member.watch
    # Arrow's buffers from the C library's allocator, not mimalloc (pyarrow's default): a
    # worker's first batches touch a few hundred MB of fresh memory, and mimalloc's first
    # touch of its new segments cost the kernel ~0.45 s (measured: the first 150,000-row
    # decode took 1.1-1.3 s, 0.45 s of it system time, against ~0.4 s and 0.1 s here);
    # later batches cost the same with both.
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        codec = AvroCodec(SchemaRegistry.load(), epoch_millis=True)
        builder = NativeBatchBuilder(codec)
        appender = PartitionAppender(DecodedLog(config.log_path))
    except BaseException:
        consumer.close()
        raise
    topic = config.topic
    marks["ready"] = time.time()
    unsent = True  # the marks, sent with the first report after the worker got its assignment

    settling = Settling(config.group_size, time.monotonic() + config.settle_s)

    def assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
        streams = [kafka_stream(topic, p.partition) for p in partitions]
        known = appender.owned(streams)
        assigned = [_resume(topic, p.partition, known) for p in partitions]
        consumer.assign(assigned)
        settling.assigned(consumer, assigned)
        if not settling.paused and "assigned" not in marks:
            marks["assigned"] = time.time()

    def revoke(consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            appender.expected.pop(kafka_stream(topic, p.partition), None)
        settling.revoked(consumer)
        consumer.unassign()

    member.rebalance.on_assign = assign
    member.rebalance.on_revoke = revoke
    settling.partitions = _partition_count(consumer, topic, config.settle_s)
    try:
        while not should_stop():
            settling.resume_if_due(consumer)
            asked = time.time()
            with collections_paused():
                progress = _one_batch(
                    worker, config, consumer=consumer, builder=builder, appender=appender, watch=watch
                )
            if progress is not None:
                # The first messages came within one idle wait of the call that got them.
                marks.setdefault("first_messages", asked)
                if unsent and "assigned" in marks:
                    progress = replace(progress, marks=tuple(marks.items()))
                    unsent = False
                report(progress)
    finally:
        consumer.close()
        appender.stager.close()


class Settling:
    """A start-up worker's wait for the group to settle (see `WorkerConfig.settle_s`)."""

    def __init__(self, group_size: int, until: float) -> None:
        self.group_size = group_size
        self.until = until
        #: partitions of the topic (None: unknown, never wait)
        self.partitions: int | None = None
        self.paused: list[TopicPartition] = []

    def assigned(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        """Pause a new assignment above this member's share while the others may still join."""
        share = -(-(self.partitions or 1) // max(self.group_size, 1))
        if (
            self.partitions
            and self.group_size > 1
            and time.monotonic() < self.until
            and len(assigned) > share
        ):
            consumer.pause(assigned)
            self.paused = assigned

    def revoked(self, consumer: Consumer) -> None:
        """Resume the held partitions while they are still assigned, before they are given up.

        A partition keeps its paused state through a rebalance that hands it back, so it
        must be resumed; resumed after the new assignment instead, it outdated the offset
        request librdkafka had just sent for it, whose answer was then dropped and asked for
        again only after 0.5 s: measured, the member that had held every partition at the
        start received its first messages 0.5-0.7 s after the other, and finished that much
        later on partitions of equal size.
        """
        if self.paused:
            consumer.resume(self.paused)
            self.paused = []

    def resume_if_due(self, consumer: Consumer) -> None:
        """Read the held partitions after all when the others did not come in time."""
        if self.paused and time.monotonic() >= self.until:
            consumer.resume(self.paused)
            self.paused = []
        elif self.paused:
            # Wakes librdkafka's main thread, which sends the heartbeat that is due and so
            # hears of the coming rebalance at once: without this, it heard of it ~0.5 s
            # later (its own timer), with both workers idle meanwhile.
            consumer.assignment()


def _partition_count(consumer: Consumer, topic: str, timeout_s: float) -> int | None:
    try:
        found = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    except Exception:  # noqa: BLE001 - only an optimisation of the start: the worker reads anyway
        return None
    return len(found.partitions) if found is not None and found.partitions else None


def _one_batch(
    worker: int,
    config: WorkerConfig,
    *,
    consumer: Consumer,
    builder: NativeBatchBuilder,
    appender: PartitionAppender,
    watch: BrokerWatch,
) -> WorkerReport | None:
    """Consume, decode and commit one batch; what to report about it (None: nothing to say)."""
    topic = config.topic
    started = time.perf_counter()
    batch, at_end, polled = _gather(consumer, config, watch)
    if not polled:
        watch.check_while_idle("decoding")
        return None
    consumed = time.perf_counter()
    events = dead = 0
    decoded = committed = consumed
    retries = appender.retries
    if len(batch):
        table, dead = builder.build(batch, datetime.now(tz=UTC).replace(tzinfo=None))
        decoded = time.perf_counter()
        try:
            appender.commit(table, list(batch.positions.values()))
            events = len(batch) - dead
        except StaleBatchError:
            # Another owner got there first: resume these partitions from the log.
            _seek_back(consumer, appender, topic, list(batch.positions))
            at_end, dead = [], 0
        committed = time.perf_counter()
    watch.give_up_if_too_long("decoding")
    if not (events or dead or at_end):
        return None
    return WorkerReport(
        worker,
        events,
        dead,
        tuple(at_end),
        consume_s=consumed - started,
        decode_s=decoded - consumed,
        commit_s=committed - decoded,
        retries=appender.retries - retries,
    )


def _gather(consumer: Consumer, config: WorkerConfig, watch: BrokerWatch) -> tuple[RawBatch, list[int], int]:
    """Consume calls of `consume_size` up to `batch_size` messages: (batch, partitions at end, messages).

    A call that comes back with fewer messages than asked for (the broker has no more ready,
    a trickle while following) ends the batch at once, so gathering never waits for data and
    adds no latency. A partition's end does not: at the end of a cold build the partitions
    end one after another, and ending the batch at each gave every worker two or three
    small batches (and commits) in its last second.
    """
    batch = RawBatch()
    at_end: list[int] = []
    polled = 0
    while polled < config.batch_size:
        asked = min(config.consume_size, config.batch_size - polled)
        messages = consumer.consume(asked, timeout=IDLE_WAIT_S if polled == 0 else 0)
        polled += len(messages)
        piece, ends = read_batch(messages, config.topic, watch)
        full = len(messages) == asked
        del messages  # the message objects are not needed any more: free them now
        batch.extend(piece)
        at_end.extend(ends)
        if not full:
            break
    return batch, at_end, polled


def _resume(topic: str, partition: int, known: Mapping[str, Position]) -> TopicPartition:
    position = known.get(kafka_stream(topic, partition))
    # Positions hold the last offset in the log; resume at the next one (or the beginning).
    return TopicPartition(topic, partition, position.offset + 1 if position else -2)


def _seek_back(consumer: Consumer, appender: PartitionAppender, topic: str, streams: list[str]) -> None:
    streams = [stream for stream in streams if stream in appender.expected]  # revoked ones: not ours
    known = appender.owned(streams)
    for stream in streams:
        partition = int(stream.rsplit(":", 1)[1])
        for _ in range(20):
            try:
                consumer.seek(_resume(topic, partition, known))
                break
            except Exception:  # noqa: BLE001 - the partition may not be fetching yet
                time.sleep(0.1)
