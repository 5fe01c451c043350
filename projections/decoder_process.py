"""A decoder process's first steps: it joins the consumer group before its heavy imports.

A decoder worker needs Arrow, polars, delta-rs and fastavro, ~0.45 s of imports in a new
process. Joining a consumer group takes time too, and more when a second member comes: the
broker hands every partition to the first member to join, then (eager protocol) waits for
that member to give them all up and join again before it assigns them anew. Measured with
two workers, the first heard of the second member's join only at its next heartbeat after
its imports and ~0.5 s went by with both workers idle.

So this module needs only confluent-kafka: the process creates its consumer and subscribes
first (~0.1 s after it starts), and the group forms while the rest is imported. librdkafka
hands an assignment to the application only from within `consume`, which the worker calls
once everything is ready; the rebalance callbacks are bound then (`Rebalance`).

`WorkerConfig` and `WorkerReport` live here too: a spawned process unpickles its arguments
before it runs its target, and they must not pull in the heavy modules either.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from crm_ledger.kafka import BrokerWatch, consumer_config

#: how often a worker tells the group it is alive (and hears of a rebalance). librdkafka's
#: own timer sends them only about every 0.5 s; a settling worker wakes it more often
#: (`Settling.resume_if_due`) and then hears of the coming rebalance within this interval.
HEARTBEAT_MS = 100
#: librdkafka settings that matter for a cold read of a whole topic (measured: consume goes
#: from ~150k to ~180-220k msg/s): no CRC check of each batch, deeper prefetch, short waits.
FAST_CONSUMER = {
    "check.crcs": False,
    "queued.min.messages": 1_000_000,
    "fetch.wait.max.ms": 50,
}
#: The allocator settings of polars' and delta-rs's own jemalloc (each reads this variable
#: when it starts): keep freed pages for reuse instead of returning them to the kernel.
#: Every batch allocates and frees the same few hundred MB; with the decay polars sets for
#: both (0.5 s) their background thread handed them back and the next batch faulted them in
#: again.
#: Measured over 1,059,131 events in one worker: the Parquet writer's page faults fell from
#: ~370,000 to ~90,000 and its CPU from 3.0 to 2.3 s, the background thread's from 0.24 to
#: 0.07 s; the worker's peak memory grew by ~4% (1.39 to 1.45 GB).
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
JEMALLOC_CONF_VARIABLE = "_RJEM_MALLOC_CONF"


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a decoder worker process needs (picklable: it crosses a process boundary)."""

    bootstrap: str
    topic: str
    group_id: str
    log_path: Path
    #: messages decoded together and committed to the log in one Delta commit, at most:
    #: gathered while the consume calls come back full (the broker has more ready), so
    #: fewer, larger commits and fewer Arrow calls per row
    batch_size: int = 150_000
    #: messages per `consume` call. Small calls, each call's message objects freed before
    #: the next: Python reuses their memory instead of returning it to the kernel and
    #: faulting it in again, and each pass over the messages stays in the CPU's cache.
    #: Measured over 1,059,131 events in one worker: consume calls of 10,000 instead of
    #: 50,000 took the main thread from 6.4 to 5.4 s of CPU (page faults 420,000 to 190,000).
    consume_size: int = 10_000
    broker_timeout_s: float = 60.0
    session_timeout_ms: int = 10_000
    #: the members the group starts with (set by the pool): see `settle_s`
    group_size: int = 1
    #: at start-up, a worker assigned more than its share of the partitions (the first member
    #: to join gets them all) holds them paused up to this long while the others join, instead
    #: of reading partitions the coming rebalance hands to another member. With the eager
    #: protocol that rebalance also waits for the busy member's next poll: measured, two
    #: workers lost ~3 s of a 10 s cold build to it.
    settle_s: float = 5.0


@dataclass(frozen=True)
class WorkerReport:
    """What a worker tells the main process: progress, partitions at their end, or its failure."""

    worker: int
    events: int = 0
    dead_letters: int = 0
    #: partitions read to their end, with everything before the end committed to the log
    at_end: tuple[int, ...] = ()
    error: str | None = None
    transient: bool = False
    #: where this batch's time went (for benchmarks): seconds in consume (with reading the
    #: messages), decode, commit; and commits that lost a race and were tried again
    consume_s: float = 0.0
    decode_s: float = 0.0
    commit_s: float = 0.0
    retries: int = 0
    #: when the worker's start-up steps ended (wall clock, `time.time()`), sent once: entered
    #: (the process runs), subscribed, imported, ready (decoder and log opened), assigned
    #: (its first assignment it reads, after the group settled), first_messages (the first
    #: consumed messages arrived: the partitions' first fetches came back)
    marks: tuple[tuple[str, float], ...] = ()
    #: the worker's last word: it left the group and everything it did is in the log
    stopped: bool = False


Callback = Callable[[Consumer, list[TopicPartition]], None]


def _not_ready(_consumer: Consumer, _partitions: list[TopicPartition]) -> None:
    raise RuntimeError("a rebalance was served before the worker bound its callbacks")


class Rebalance:
    """The group's rebalance callbacks, given to `subscribe` before the worker can serve them.

    librdkafka calls them only from within `consume`; the worker binds `on_assign` and
    `on_revoke` before its first call.
    """

    def __init__(self) -> None:
        self.on_assign: Callback = _not_ready
        self.on_revoke: Callback = _not_ready

    def assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.on_assign(consumer, partitions)

    def revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.on_revoke(consumer, partitions)


@dataclass(frozen=True)
class Member:
    """A worker's consumer, subscribed to the topic, and what it needs to serve the group."""

    consumer: Consumer
    rebalance: Rebalance
    watch: BrokerWatch


def join_group(config: WorkerConfig) -> Member:
    """A consumer of the topic in the workers' group, subscribed (the join runs in the background)."""
    watch = BrokerWatch(config.bootstrap, lambda _: None, config.broker_timeout_s)
    consumer = Consumer(
        consumer_config(
            config.bootstrap,
            config.group_id,
            **FAST_CONSUMER,
            **watch.client_config(),
            **{
                "session.timeout.ms": config.session_timeout_ms,
                # A member learns of a rebalance from its heartbeat: at the default 3 s, a
                # member joining at start-up waited that long for the first to let go.
                "heartbeat.interval.ms": HEARTBEAT_MS,
            },
        )
    )
    rebalance = Rebalance()
    consumer.subscribe([config.topic], on_assign=rebalance.assigned, on_revoke=rebalance.revoked)
    return Member(consumer, rebalance, watch)


class _StopOrOrphaned:
    """The pool's stop event, taken as set once the main process is gone.

    A main process killed with kill -9 never sets the event: its workers went on consuming
    (idle once the topic was read) for good, members of the group that the next run's
    workers then shared the partitions with.
    """

    def __init__(self, stop: Any, parent: int) -> None:
        self._stop = stop
        self._parent = parent

    def is_set(self) -> bool:
        return bool(self._stop.is_set()) or os.getppid() != self._parent


def process_main(worker: int, config: WorkerConfig, stop: Any, reports: Any) -> None:
    """A decoder process: join the group, import the decoder, work, flush reports, exit at once.

    Ctrl-C reaches the whole process group: the main process decides, so the worker ignores
    it from its first instruction. Everything the worker did is committed to the log or
    reported when it returns; the interpreter's own teardown (pyarrow, polars, deltalake:
    ~0.3 s) would only make the main process wait longer at the end of every run.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    marks = {"entered": time.time()}
    member: Member | None
    try:
        member = join_group(config)
    except Exception:  # noqa: BLE001 - the worker joins again itself and reports what fails
        member = None
    marks["subscribed"] = time.time()
    # Set before polars and delta-rs load. The variable usually holds polars' own short decay
    # already (importing polars in the main process put it there, and this process inherited
    # it); in jemalloc's option string the last setting of an option wins.
    inherited = os.environ.get(JEMALLOC_CONF_VARIABLE)
    os.environ[JEMALLOC_CONF_VARIABLE] = f"{inherited},{JEMALLOC_CONF}" if inherited else JEMALLOC_CONF
    # Imported here, on purpose after the join: the group forms while these load (see above).
    from projections.decoders import run_worker  # noqa: PLC0415

    marks["imported"] = time.time()
    run_worker(worker, config, _StopOrOrphaned(stop, parent), reports, member=member, marks=marks)
    if os.getppid() != parent:
        os._exit(0)  # no one is left to read a report (and a full pipe would block its flush)
    reports.put(WorkerReport(worker, stopped=True))
    reports.close()
    reports.join_thread()
    os._exit(0)
