"""The bulk write path: the ledger's rules applied to plain state, rows written in bulk.

`LedgerApplication.record` builds an eventsourcing aggregate and event object per fact and
lets the mapper and recorder turn them into rows. For loading years of history that
machinery costs more than the rules themselves, so `BulkWriter` decides every fact through
the very same `LedgerApplication.decide` (one rule set, no second copy) against a unit of
work that keeps the same aggregate classes as plain state: a fact is applied with the
aggregate's own `when`, its version counted here, and the event becomes a row
`(originator id, version, topic, Avro bytes)` at once. Rows and their event-id index rows
are inserted with one statement batch per store transaction through the ledger's recorder,
exactly as the eventsourcing path writes them: the same bytes (apart from `recorded_at` and
ciphertext nonces), the same notification order, the same rejects. The differential tests
in `tests/test_bulk_differential.py` hold the two paths to that.

A decided batch is written while the next batch is decided (`ledger.write_behind`): by a
writing process in a large run (`ledger.write_process`, started by `expect_large_run`),
else by a thread of its own; its outcomes are returned once it is committed.

Aggregates stay in a bounded cache between batches; one missing from it is read back from
the store and rebuilt with `when`. A batch that another writer got in the way of (a
version or event id taken) is decided again on fresh state, like `record` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.sqlite import SQLiteAggregateRecorder

from crm_ledger.errors import CrmLedgerError
from ledger.application import (
    LedgerApplication,
    Outcome,
    check_rejections_not_raced,
    decided_again_on_contention,
    encoded_size_bound,
    named_references,
)
from ledger.batch_rows import BatchRows, EventRow, encoded, write_batch
from ledger.domain import EVENT_OWNERS, LedgerAggregate, Occurrence, aggregate_hex
from ledger.existence import existing_ids, index_is_empty, indexed_events
from ledger.prepared import Prepared, finish
from ledger.records import Fact, epoch_ms
from ledger.vault import PERSONAL_FIELDS
from ledger.write_behind import InFlight, WriteBehind
from schemas.fast_encoder import zigzag_varint
from schemas.registry import NAMESPACE

_uncached_hex = aggregate_hex.__wrapped__
#: Aggregates kept between batches (the eventsourcing path's cache holds as many).
CACHED_AGGREGATES = 200_000
Ref = tuple[str, str]


class _State:
    """An aggregate as plain state and how many events it has (its version)."""

    __slots__ = ("aggregate", "hex_id", "used", "version")

    def __init__(self, aggregate: LedgerAggregate, hex_id: str, version: int, used: int = 0) -> None:
        self.aggregate = aggregate
        self.hex_id = hex_id
        self.version = version
        #: The batch that last moved it to the cache's recent end (`BulkUnitOfWork.get`).
        self.used = used


def _blank(cls: type[LedgerAggregate]) -> LedgerAggregate:
    """A new aggregate's initial state, without eventsourcing's creation event."""
    aggregate = object.__new__(cls)
    cls.__init__(aggregate)
    return aggregate


class BulkUnitOfWork:
    """One batch against plain aggregate state (see the module docstring)."""

    def __init__(self, writer: BulkWriter, recorded_at: datetime) -> None:
        self._writer = writer
        self._cache = writer.cache
        writer.batches += 1
        self._batch = writer.batches
        self.recorded_at_ms = epoch_ms(recorded_at)
        self._absent: set[Ref] = set()
        #: This batch's new one-off facts (never cached across batches, like `record`).
        self._occurrences: dict[Ref, _State] = {}
        self._states: dict[int, _State] = {}  # id(aggregate) -> its state, for `record`
        #: The new events' rows, in fact order, as the store receives them (the message may
        #: still be the record to encode: `ledger.batch_rows`).
        self.rows: list[EventRow] = []
        self._topics = writer.topics
        #: The fact being decided and what its worker prepared (see `judging`).
        self._given: Fact | None = None
        self._given_data: Mapping[str, Any] | None = None
        self._prepared: Prepared | None = None
        self._recorded_at = zigzag_varint(self.recorded_at_ms)
        self.stored_ids: dict[str, bytes] = {}
        self.batch_facts: dict[str, Fact] = {}
        self.new_keys: dict[str, bytes] = {}
        self.interactions: list[tuple[str, str | None]] = []

    def prefetch(self, facts: Sequence[Fact], prepared: Sequence[Prepared | None]) -> None:
        """Ask the store once which ids it holds: the event-id index and uncached aggregates.

        The aggregates each fact names come with its prepared message where a worker
        prepared one (`ledger.prepared`), else they are found here.
        """
        app = self._writer.app
        behind = self._writer.behind
        ids = {f.event_id for f in facts}
        if behind.forgets_any({f.data.get("customer_id") for f in facts} if behind.forgetting else ()):
            # Their keys must be gone from the store before this batch asks it for keys.
            behind.settle()
        elif behind.encodes_any(ids):
            # The batch in flight holds some of these facts but their messages are being
            # encoded in the writing process: the store answers for them once committed.
            behind.settle()
        # The batch still being written (if any) answers for its own event ids: the same
        # messages the index will point to once it is committed.
        in_flight = behind.in_flight.stored if behind.in_flight is not None else {}
        asked = ids.difference(in_flight)
        self.stored_ids = {} if self._writer.fresh_store else indexed_events(app.recorder, asked)
        self.stored_ids.update((i, in_flight[i]) for i in ids.intersection(in_flight))
        # The named aggregates that are not cached, in one pass (no set of every reference).
        cache = self._cache
        unknown: set[Ref] = set()
        add = unknown.add
        for fact, ready in zip(facts, prepared, strict=True):
            named = ready[3] if ready is not None else None
            for ref in named if named is not None else named_references(fact):
                if ref not in cache:
                    add(ref)
        # A one-off fact's aggregate is keyed by its own event id, and every stored event is
        # in the index (same transaction): an id the index lacks has no aggregate either.
        own = {(Occurrence.KIND, f.event_id) for f in facts}
        unknown -= own
        by_id = {aggregate_hex(kind, key): (kind, key) for kind, key in unknown}
        # Aggregates the batch in flight writes exist (mostly interactions that surveys of
        # this batch name); their state is read from the store, after its commit, if needed.
        written = behind.in_flight.originators.intersection(by_id) if behind.in_flight is not None else set()
        present = {by_id[found] for found in existing_ids(app.recorder, by_id.keys() - written)}
        present.update(by_id[found] for found in written)
        stored = self.stored_ids
        self._absent = (unknown - present) | ({r for r in own if r[1] not in stored} if stored else own)
        app.vault.prefetch(f.data["customer_id"] for f in facts if f.event_type in PERSONAL_FIELDS)

    def judging(self, fact: Fact, prepared: Prepared | None) -> None:
        """The next fact to be decided, with its prepared message (None when there is none)."""
        self._given = fact
        self._given_data = fact.data
        self._prepared = prepared

    def size_bound(self, fact: Fact) -> int:
        if self._prepared is not None and fact is self._given:
            bound = self._prepared[2]
            if bound >= 0:
                return bound
            # An upper estimate (`ledger.prepared`): under the limit, the bound is too; over
            # it, the bound itself decides and names the size in the reject.
            if -bound <= self._writer.app.max_event_bytes:
                return -bound
        return encoded_size_bound(fact)

    def get(self, cls: type[LedgerAggregate], key: str) -> LedgerAggregate | None:
        ref = (cls.KIND, key)
        state = self._occurrences.get(ref)
        if state is None:
            # Taken out and put back: the cache then evicts the least recently used first, so
            # a customer or employee active throughout a long history stays cached while
            # closed cases make way (evicting by first use read such entities back again
            # and again once the history outgrew the cache). Once per batch is enough: the
            # cache is trimmed only between batches, so the order of use within one does
            # not matter (an employee is named by thousands of a batch's facts).
            state = self._cache.get(ref)
            if state is not None and state.used != self._batch:
                del self._cache[ref]
                self._cache[ref] = state
                state.used = self._batch
        if state is None:
            if ref in self._absent:
                return None
            state = self._writer.load(cls, key)
            if state is None:
                self._absent.add(ref)
                return None
            if cls is not Occurrence:
                state.used = self._batch
                self._cache[ref] = state
        aggregate = state.aggregate
        if not isinstance(aggregate, cls):
            return None
        self._states[id(aggregate)] = state
        return aggregate

    def start(self, cls: type[LedgerAggregate], fact: Fact, key: str) -> None:
        ref = (cls.KIND, key)
        aggregate = _blank(cls)
        # A one-off fact's id is never asked for again: computed without the shared cache,
        # where a million of them would only push out the ids of customers and cases.
        hex_id = _uncached_hex(cls.KIND, key) if cls is Occurrence else aggregate_hex(cls.KIND, key)
        state = _State(aggregate, hex_id, 0, self._batch)
        self._states[id(aggregate)] = state
        if cls is Occurrence:
            self._occurrences[ref] = state
            if fact.event_type == "InteractionRecorded":
                self.interactions.append((fact.event_id, fact.data.get("employee_id")))
        else:
            self._cache[ref] = state
        self._absent.discard(ref)
        self._apply(state, fact)

    def record(self, aggregate: LedgerAggregate, fact: Fact) -> None:
        self._apply(self._states[id(aggregate)], fact)

    def _apply(self, state: _State, fact: Fact) -> None:
        state.aggregate._apply_fact(fact.event_type, fact.event_id, fact.occurred_at, fact.data)
        state.version += 1
        prepared = self._prepared
        if prepared is not None and prepared[0] is not None and fact.data == self._given_data:
            # Judged as given (nothing filled in or encrypted): the prepared message holds.
            message = finish(prepared[0], prepared[1] or b"", self._recorded_at)
            self.rows.append(
                (state.hex_id, state.version, self._topics[fact.event_type], message, fact.event_id)
            )
            return
        # What the Avro mapper stores for an eventsourcing event: its fields plus the envelope.
        record = dict(fact.data)
        record["event_id"] = fact.event_id
        record["occurred_at"] = fact.occurred_at
        record["recorded_at"] = self.recorded_at_ms
        self.rows.append((state.hex_id, state.version, self._topics[fact.event_type], record, fact.event_id))


class BulkWriter:
    """Records batches of facts through `LedgerApplication.decide`, written in bulk.

    One writer serves one run (an import): its cache is only valid while nothing else
    writes through the same application object, so `close` makes the application forget
    its own cached aggregates afterwards.
    """

    def __init__(self, app: LedgerApplication, cache_size: int | None = None) -> None:
        self.app = app
        self.cache: dict[Ref, _State] = {}
        #: Batches decided so far (each `BulkUnitOfWork` numbers itself with it).
        self.batches = 0
        self._cache_size = CACHED_AGGREGATES if cache_size is None else cache_size
        self._shareable = _shareable(app)
        #: Each event type's topic (the stored events' `topic` column).
        self.topics = {event_type: f"{NAMESPACE}.{event_type}" for event_type in EVENT_OWNERS}
        self._behind = WriteBehind()
        #: Whether the store held no event when the run began and no other writer has got in
        #: the way since. Then every event id it holds was written by this run, and the
        #: event-id index is not asked about each fact (~5 µs an event at 1M): a fact already
        #: saved by an earlier batch of the run is either judged new, and its batch's commit
        #: fails on the index's unique key, or rejected, and `check_rejections_not_raced`
        #: finds it; either way the batch is decided again on fresh state, with the index
        #: asked from then on. A first import, the usual large one, asks the index nothing.
        self.fresh_store = index_is_empty(app.recorder)

    def record(
        self, facts: Sequence[Fact], prepared: Sequence[Prepared | None] | None = None
    ) -> list[Outcome]:
        """Validate and save a batch like `LedgerApplication.record` (same rules and outcomes).

        `prepared` holds each fact's message as its parse worker prepared it (`ledger.prepared`).
        The batch is committed when this returns (see `submit` for the overlapped form).
        """
        done = self.submit(facts, prepared, None) + self.finish()
        return done[-1][1]

    def submit(
        self, facts: Sequence[Fact], prepared: Sequence[Prepared | None] | None = None, token: Any = None
    ) -> list[tuple[Any, list[Outcome]]]:
        """Decide a batch and hand it to the writing thread (`ledger.write_behind`).

        Returns the batches committed meanwhile (the one handed over before this one, if
        any): each as its `token` with its outcomes, in the order they were submitted. A
        batch's outcomes are final only once it is committed; `finish` returns the last.
        """
        given = list(facts)
        ready: list[Prepared | None] = list(prepared) if prepared is not None else [None] * len(given)

        def decide() -> _Decided:
            return self._decide(given, ready)

        decided = decided_again_on_contention(decide, self._forget_cached_state)
        done, redone = self._previous()
        if redone:
            # Decided on top of a batch that was decided again: decide it again too.
            decided = decided_again_on_contention(decide, self._forget_cached_state)
        self._hand_over(decided, token)
        return done

    def finish(self) -> list[tuple[Any, list[Outcome]]]:
        """Wait for the batch being written; returns it (token, outcomes) once committed."""
        return self._previous()[0]

    def expect_large_run(self) -> None:
        """The run is large: start the writing process now, while the input is still read.

        It then writes every batch handed over, on the other core; its start-up (a new
        interpreter) overlaps the reading. Stores that only this process can reach (an
        in-memory SQLite database) keep the writing thread.
        """
        if self._shareable:
            self._behind.use_process(self.app.name, self.app.env, self.app.registry)

    @property
    def behind(self) -> WriteBehind:
        """The writing thread and the batch in flight in it."""
        return self._behind

    def _forget_cached_state(self) -> None:
        # The store answers for everything from now on: the batch in flight must be in it.
        self._behind.settle()
        self.fresh_store = False
        self.cache.clear()
        self.app.vault.clear_cache()

    def _previous(self) -> tuple[list[tuple[Any, list[Outcome]]], bool]:
        """The batch in flight once committed, and whether it had to be decided again.

        When another writer got in the way of its commit, it is decided again on fresh state
        and written before anything else is decided (what was decided on top of it is void).
        """
        batch = self._behind.take()
        if batch is None:
            return [], False
        if batch.error is None:
            return [(batch.token, batch.outcomes)], False
        if batch.committed:
            raise batch.error  # saved; what failed after the commit is no race to decide again
        self._forget_cached_state()
        self.app.forget_handlers(batch.interactions)
        failures = [batch.error]

        def again() -> list[Outcome]:
            if failures:
                raise failures.pop()  # judged like any failed attempt: contention or not
            decided = self._decide(batch.facts, batch.prepared)
            self._hand_over(decided, batch.token)
            taken = self._behind.take()
            assert taken is not None
            if taken.error is not None and taken.committed:
                raise _Saved(taken.error)
            if taken.error is not None:
                self._forget_cached_state()
                self.app.forget_handlers(taken.interactions)
                raise taken.error
            return taken.outcomes

        try:
            outcomes = decided_again_on_contention(again, self._forget_cached_state)
        except _Saved as saved:
            raise saved.error from None
        return [(batch.token, outcomes)], True

    def close(self) -> None:
        """Drop cached state; the application's own cache may be behind what was written.

        A batch still being written is waited for (never cut off); one not yet returned
        by `submit` or `finish` is not reported.
        """
        self._behind.close()
        self.cache.clear()
        self.app.reset_cached_aggregates()

    def load(self, cls: type[LedgerAggregate], key: str) -> _State | None:
        """An aggregate rebuilt from its stored events (None when the store has none)."""
        hex_id = aggregate_hex(cls.KIND, key)
        if self.behind.writes_any((hex_id,)):
            self.behind.settle()  # its events may be in the batch still being written
        stored = self.app.recorder.select_events(UUID(hex=hex_id))
        if not stored:
            return None
        event_type, _ = self.app.codec.decode(stored[0].state)
        aggregate = _blank(EVENT_OWNERS[event_type][0])
        version = 0
        for event in stored:
            event_type, record = self.app.codec.decode(event.state)
            data = {k: v for k, v in record.items() if k not in _ENVELOPE}
            aggregate._apply_fact(event_type, record["event_id"], record["occurred_at"], data)
            version = event.originator_version
        return _State(aggregate, hex_id, version)

    def _decide(self, facts: list[Fact], prepared: list[Prepared | None]) -> _Decided:
        app = self.app
        work = BulkUnitOfWork(self, datetime.now(tz=UTC))
        try:
            work.prefetch(facts, prepared)
            outcomes = []
            for fact, ready in zip(facts, prepared, strict=True):
                work.judging(fact, ready)
                outcomes.append(app.decide(fact, work))
            check_rejections_not_raced(app.recorder, facts, outcomes)
        except BaseException:
            # Cached state may hold this batch's unsaved facts.
            self.cache.clear()
            raise
        finally:
            app.vault.end_prefetch()
        forgotten = [
            f.data["customer_id"]
            for f, o in zip(facts, outcomes, strict=True)
            if o.status == "accepted" and f.event_type == "CustomerForgotten"
        ]
        return _Decided(facts, prepared, outcomes, work, forgotten)

    def _hand_over(self, decided: _Decided, token: Any) -> None:
        """Start writing a decided batch; the next batch is decided on the state it leaves."""
        app = self.app
        vault = app.vault
        work = decided.work
        rows = BatchRows(work.rows, dict(work.new_keys), decided.forgotten)
        if not self._behind.in_process:
            # The writing thread would hold the interpreter while encoding: done here. (The
            # writing process encodes them itself, on the other core.)
            rows = encoded(rows, app.codec.encode)
        batch = InFlight(
            token=token,
            facts=decided.facts,
            prepared=decided.prepared,
            outcomes=decided.outcomes,
            stored={row[4]: row[3] for row in rows.events if isinstance(row[3], bytes)},
            encoding=frozenset(row[4] for row in rows.events if not isinstance(row[3], bytes)),
            originators=frozenset(row[0] for row in rows.events),
            forgotten=frozenset(decided.forgotten),
            interactions=work.interactions,
        )

        def committed() -> None:
            batch.committed = True

        def write() -> None:  # in the writing thread: the store only, no shared caches
            write_batch(app.recorder, vault, rows, committed)

        # What the next batch is decided on, ahead of the commit (undone if it fails).
        vault.remember_keys(rows.new_keys)
        vault.drop_cached(decided.forgotten)
        app.remember_handlers(work.interactions)
        self._trim()
        self._behind.start(batch, write, rows)

    def _trim(self) -> None:
        # Least recently used first (`get` moves what it finds to the end); an evicted
        # aggregate is read back when needed.
        excess = len(self.cache) - self._cache_size
        if excess > 0:
            for ref in list(self.cache)[:excess]:
                del self.cache[ref]


_ENVELOPE = frozenset({"event_id", "occurred_at", "recorded_at"})


def _shareable(app: LedgerApplication) -> bool:
    """Whether another process can write to the application's store (not an in-memory one)."""
    if not isinstance(app.recorder, SQLiteAggregateRecorder):
        return str(app.env.get("PERSISTENCE_MODULE") or "").startswith("eventsourcing.postgres")
    name = str(app.env.get("SQLITE_DBNAME") or "")
    return bool(name) and ":memory:" not in name and "mode=memory" not in name


class _Saved(CrmLedgerError):  # noqa: N818 - a wrapper, raised through the retry loop
    """An error after a batch was committed: passed through the retries, never retried."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True, slots=True)
class _Decided:
    """A batch decided, not yet handed to the writing thread."""

    facts: list[Fact]
    prepared: list[Prepared | None]
    outcomes: list[Outcome]
    work: BulkUnitOfWork
    forgotten: list[str]
