"""A decided batch written by a thread of its own while the next batch is decided.

Deciding needs the interpreter; writing is mostly SQLite's B-tree work (or PostgreSQL's round
trips), during which `sqlite3` and psycopg release the interpreter lock. So the bulk writer
hands a decided batch's rows to one writing thread and decides the next batch meanwhile, on
the state the handed-over batch leaves behind: on 2 cores the two overlap.

Only one batch is ever in flight and batches are committed one after another in decision
order, so the notification order and every commit's content are those of writing each batch
before deciding the next. What the next batch asks the store while one is in flight is
answered from the batch in flight where it holds the answer (`stored`: its event ids and
messages), or after waiting for its commit (`settle`) where the store must answer (an
aggregate or a forgotten customer of the batch in flight). A batch's outcomes are reported
only once it is committed. When its commit fails because another writer got in the way, the
bulk writer decides that batch again on fresh state, then the one decided on top of it.

For large batches the writing thread gives way to a writing process (`use_process`,
`ledger.write_process`): the same rows, written by the same function, with the same
guarantees, but the store's CPU is spent on the other core.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ledger.batch_rows import BatchRows
from ledger.write_process import WriteProcess
from schemas.registry import SchemaRegistry


@dataclass(eq=False)
class InFlight:
    """A decided batch handed to the writing thread, and what it will have written."""

    #: The caller's handle of the batch (returned with its outcomes once committed).
    token: Any
    facts: list[Any]
    prepared: list[Any]
    outcomes: list[Any]
    #: Stored message of each event id the batch writes (but `encoding`).
    stored: Mapping[str, bytes]
    #: Event ids whose message the writing process encodes: the store answers for them once
    #: the batch is committed.
    encoding: frozenset[str]
    #: Aggregate ids (32 hex digits) the batch writes events of.
    originators: frozenset[str]
    #: Customers whose keys the batch deletes.
    forgotten: frozenset[str]
    #: (event id, employee id) of the batch's new interactions (handlers remembered ahead).
    interactions: list[tuple[str, str | None]]
    #: The writing thread's work (None when a writing process writes the batch).
    future: Future[None] | None = None
    settled: bool = False
    error: BaseException | None = None
    #: Set by the writing thread once the batch's transaction is committed: an error after
    #: that (wiping the log) must not make the batch be decided again.
    committed: bool = False


class WriteBehind:
    """One writing thread and the batch in flight in it (at most one)."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._process: WriteProcess | None = None
        self.in_flight: InFlight | None = None

    @property
    def in_process(self) -> bool:
        """Whether batches are written by a writing process (else by the writing thread)."""
        return self._process is not None

    def use_process(self, name: str, env: Mapping[str, str], registry: SchemaRegistry) -> None:
        """Start a process of its own that writes every batch handed over from now on.

        A batch already in flight in the writing thread stays there until it is taken.
        """
        if self._process is None:
            self._process = WriteProcess(name, env, registry)

    def start(self, batch: InFlight, write: Callable[[], None], rows: BatchRows) -> None:
        """Hand `batch` over: `write` runs in the writing thread (after the previous batch),
        or the writing process writes `rows` (`write` then runs nowhere)."""
        assert self.in_flight is None, "settle the batch in flight first"
        if self._process is not None:
            self._process.send(rows)
        else:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
            batch.future = self._executor.submit(write)
        self.in_flight = batch

    def settle(self) -> None:
        """Wait until the batch in flight is committed or has failed (its error is kept)."""
        batch = self.in_flight
        if batch is None or batch.settled:
            return
        if batch.future is None:
            assert self._process is not None
            batch.committed, batch.error = self._process.receive()
            batch.settled = True
            return
        try:
            batch.future.result()
        except BaseException as error:  # noqa: BLE001 - kept for the writer to judge
            batch.error = error
        batch.settled = True

    def take(self) -> InFlight | None:
        """The batch in flight, settled, and no longer in flight."""
        self.settle()
        batch, self.in_flight = self.in_flight, None
        return batch

    def writes_any(self, originators: Collection[str]) -> bool:
        """Whether the batch in flight writes events of any of these aggregates."""
        batch = self.in_flight
        return batch is not None and not batch.settled and not batch.originators.isdisjoint(originators)

    def encodes_any(self, event_ids: Collection[str]) -> bool:
        """Whether the batch in flight writes any of these events with a message not yet encoded."""
        batch = self.in_flight
        return batch is not None and not batch.settled and not batch.encoding.isdisjoint(event_ids)

    @property
    def forgetting(self) -> bool:
        """Whether the batch in flight, not yet settled, deletes any customer's key."""
        batch = self.in_flight
        return batch is not None and not batch.settled and bool(batch.forgotten)

    def forgets_any(self, customer_ids: Collection[str | None]) -> bool:
        """Whether the batch in flight deletes the key of any of these customers."""
        batch = self.in_flight
        return batch is not None and not batch.settled and not batch.forgotten.isdisjoint(customer_ids)

    def close(self) -> None:
        """Wait for the batch in flight (a commit is never cut off) and stop the thread or process."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._process is not None:
            self._process.close()
            self._process = None
