"""The ledger application: the only way facts enter the system.

`record()` takes a batch of checked facts, validates each against the aggregates it
touches (lifecycle rules, references, who was active when), skips facts whose event id
the ledger already holds, and saves everything valid in one store transaction.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import IntegrityError, OperationalError
from eventsourcing.sqlite import SQLiteAggregateRecorder
from eventsourcing.utils import Environment, get_topic

from ledger.domain import (
    EVENT_OWNERS,
    Article,
    Case,
    Contract,
    Customer,
    Employee,
    FieldVisit,
    LedgerAggregate,
    Occurrence,
    RewardPeriod,
    Site,
    TeamGoal,
    aggregate_hex,
    aggregate_id,
    check_follow_up,
    check_term,
)
from ledger.errors import ConflictError, StoreBusyError, ValidationError
from ledger.existence import existing_ids, index_is_empty, indexed_events
from ledger.goals import (
    COMPARISONS,
    OUTCOMES,
    check_choice,
    check_metric,
    check_range,
    check_target,
    goal_metrics,
    month_of,
)
from ledger.mapper import AvroMapper
from ledger.recorders import INDEX_TABLE
from ledger.records import ENRICHED_FIELDS, Fact, format_timestamp
from ledger.vault import FORGOTTEN, PERSONAL_FIELDS, PREFIX, PersonalDataVault
from schemas.codec import AvroCodec
from schemas.metadata import shipped
from schemas.registry import SchemaRegistry

T = TypeVar("T")
Status = Literal["accepted", "duplicate", "rejected", "conflict"]
#: Attempts at a batch when concurrent writers keep getting in between.
WRITE_ATTEMPTS = 12
#: The largest encoded event (bytes): what one Kafka message can always carry.
DEFAULT_MAX_EVENT_BYTES = 512 * 1024
#: Stored events read (and, indexing a store written before the event-id index, indexed in
#: one transaction) at a time.
_BACKFILL_BATCH = 5000

#: Which field holds the key of the aggregate that owns each kind of event.
_KEY_FIELD: dict[type[LedgerAggregate], str] = {
    Customer: "customer_id",
    Employee: "employee_id",
    Case: "case_id",
    Article: "article_id",
    Occurrence: "event_id",
    RewardPeriod: "period",
    TeamGoal: "goal_id",
    Contract: "contract_id",
    Site: "site_id",
    FieldVisit: "visit_id",
}
#: Facts that may name an employee who has since left (they describe the past).
_ABOUT_PAST_WORK = frozenset(
    {"SurveyAnswered", "ComplimentReceived", "RewardStatementIssued", "RewardAdjustmentIssued"}
)
_OCCURRENCE_TOPIC = get_topic(Occurrence)
HANDLERS_REMEMBERED = 200_000
#: (field, entity kind) of every field that names an entity (`"crm.ref"` in the schemas).
_REFERENCE_KINDS: tuple[tuple[str, str], ...] = tuple(
    (field, kind) for field, kind in shipped().references if field != "article_ids"
)
#: Facts whose customer (and, for a completed visit, engineer) the ledger knows from the
#: contract, site or visit they name: filled in when left out, compared when given.
_OWNED_BY: dict[str, tuple[type[LedgerAggregate], tuple[str, ...]]] = {
    "ContractRenewed": (Contract, ("customer_id",)),
    "ContractEnded": (Contract, ("customer_id",)),
    "ProductRemoved": (Site, ("customer_id",)),
    "FieldVisitCompleted": (FieldVisit, ("customer_id", "employee_id")),
    "FieldVisitCancelled": (FieldVisit, ("customer_id",)),
}
#: Case states in which a case is still open (a field visit may be scheduled for it).
_OPEN_CASE_STATES = frozenset({"opened", "accepted", "escalated", "reopened"})


def _has_personal(fact: Fact) -> bool:
    return any(fact.data.get(name) is not None for name in PERSONAL_FIELDS[fact.event_type])


#: The same as a mapping: each reference field names one kind of entity.
_REFERENCE_KIND_OF: dict[str, str] = dict(_REFERENCE_KINDS)
assert len(_REFERENCE_KIND_OF) == len(_REFERENCE_KINDS)
_REFERENCE_FIELDS = frozenset(_REFERENCE_KIND_OF)


def _references(fact: Fact) -> list[tuple[str, str]]:
    """(aggregate kind, key) of every aggregate a fact may read or write (in no particular order)."""
    return [(Occurrence.KIND, fact.event_id), *named_references(fact)]


def named_references(fact: Fact) -> tuple[tuple[str, str], ...]:
    """(aggregate kind, key) of every aggregate a fact names in its fields (not its own one-off
    aggregate, keyed by its event id: see `_references`)."""
    refs = []
    data = fact.data
    kind_of = _REFERENCE_KIND_OF
    # The fact's reference fields found by one set operation (in C), not a loop over its fields.
    for field in _REFERENCE_FIELDS.intersection(data):
        value = data[field]
        if value:
            refs.append((kind_of[field], value))
    # Lists only where there are any: two generator extends per fact cost a third of this.
    articles = data.get("article_ids")
    if articles:
        refs.extend([(Article.KIND, a) for a in articles])
    agreed = data.get("agreed_by")
    if agreed:
        refs.extend([(Employee.KIND, e) for e in agreed])
    return tuple(refs)


#: Fields the ledger fills in when a client leaves them out (never compared when absent).
_FILLED_IN = ENRICHED_FIELDS


def _same_customer(given: str | None, case: Case) -> str:
    """The case's customer; a fact naming another customer is refused, never rewritten."""
    if given and given != case.customer_id:
        raise ValidationError(
            "customer_id", f"case {case.case_id!r} belongs to customer {case.customer_id!r}, not {given!r}"
        )
    return case.customer_id


#: Words of a store error that mean another writer was in the way. PostgreSQL's "pipeline
#: aborted" says an earlier statement of the same pipelined insert failed (under concurrent
#: runs: a unique key another run took first) and psycopg reported that one instead: the whole
#: transaction was rolled back, so deciding again on fresh state is safe.
_CONTENTION_WORDS = ("locked", "busy", "deadlock", "serializ", "concurrent", "pipeline aborted")


def _contended(error: Exception) -> bool:
    """Whether a store error means another writer was in the way (worth deciding again)."""
    text = str(error).lower()
    return any(word in text for word in _CONTENTION_WORDS)


def decided_again_on_contention(attempt: Callable[[], T], forget: Callable[[], None]) -> T:
    """Run `attempt`; when another writer got in between, `forget` cached state and run it again.

    A unique key taken or a busy store is contention: retried with a growing random pause,
    up to `WRITE_ATTEMPTS` times. A full disk or a read-only file is no race and is raised.
    """
    for number in range(1, WRITE_ATTEMPTS + 1):
        try:
            return attempt()
        except (IntegrityError, OperationalError) as error:
            if isinstance(error, OperationalError) and not _contended(error):
                raise  # the CLI says what it is
            forget()
            if number == WRITE_ATTEMPTS:
                raise StoreBusyError(
                    f"the event store stayed busy after {number} attempts ({error}); "
                    "nothing of this batch was written: run the same command again"
                ) from error
            time.sleep(random.uniform(0.01, 0.05) * number)
    raise AssertionError("unreachable")


def check_rejections_not_raced(recorder: Any, facts: Sequence[Fact], outcomes: Sequence[Outcome]) -> None:
    """Raise contention when a fact judged invalid was recorded meanwhile by another run.

    The batch asked the event-id index which facts are stored, then read aggregate state: a
    concurrent run that saves the same facts in between makes their own effects look like a
    contradiction (a serial "already installed", a case "already closed"). Rejections are
    not written, so no unique key catches it; asking the index again does, and the batch is
    then decided again on fresh state, where those facts are duplicates.
    """
    judged = {f.event_id for f, o in zip(facts, outcomes, strict=True) if o.status == "rejected"}
    if judged and indexed_events(recorder, judged):
        raise IntegrityError("another run recorded facts of this batch while it was decided")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def encoded_size_bound(fact: Fact) -> int:
    """An upper bound of the fact's Avro size (personal fields as ciphertext).

    Avro writes a string as a varint length (at most 10 bytes) plus its UTF-8 bytes and any
    number in at most 10 bytes; ciphertext is base64 of nonce, text and tag, with a prefix.
    """
    personal = PERSONAL_FIELDS.get(fact.event_type, ())
    size = 64 + len(fact.event_id)
    for name, value in fact.data.items():
        if isinstance(value, str):
            length = len(value.encode("utf-8", "surrogatepass"))
            if name in personal:
                length = len(PREFIX) + 4 * ((length + 28 + 2) // 3)
            size += 10 + length
        elif isinstance(value, list):
            size += 10 + sum(10 + len(str(v).encode("utf-8", "surrogatepass")) for v in value)
        else:
            size += 10
    return size


@dataclass(frozen=True)
class Outcome:
    """What happened to one fact of a batch."""

    status: Status
    error: ValidationError | None = None


#: Shared (outcomes are immutable): one object per accepted fact cost ~0.5 µs each.
_ACCEPTED = Outcome("accepted")
_DUPLICATE = Outcome("duplicate")


class UnitOfWork(Protocol):
    """What `LedgerApplication.decide` needs of a batch: its aggregates, ids and new keys.

    Two implementations share the one rule set in `decide`: `_UnitOfWork` below (eventsourcing
    aggregates and events) and `ledger.bulk.BulkUnitOfWork` (the same aggregate classes as
    plain state, rows written in bulk).
    """

    #: Event ids the store already holds -> the stored message.
    stored_ids: dict[str, bytes]
    #: Event ids accepted earlier in this batch -> the fact as given.
    batch_facts: dict[str, Fact]
    #: Personal-data keys made for this batch's accepted facts (customer id -> key).
    new_keys: dict[str, bytes]

    def get(self, cls: type[LedgerAggregate], key: str) -> LedgerAggregate | None:
        """The aggregate of `cls` under `key` as of this batch, or None when there is none."""

    def start(self, cls: type[LedgerAggregate], fact: Fact, key: str) -> None:
        """Start a new aggregate with a checked fact."""

    def record(self, aggregate: LedgerAggregate, fact: Fact) -> None:
        """Append a checked fact to an aggregate of this batch."""

    def size_bound(self, fact: Fact) -> int:
        """`encoded_size_bound(fact)` (the bulk path may have it computed already)."""


class _UnitOfWork:
    """Aggregates touched by one batch, looked up once each, and its new events in fact order.

    Ids the store does not hold are found with one query per batch (`prefetch`), so new
    facts, the bulk of any import, cost no read at all. Internally aggregates are keyed
    by (kind, business key) tuples, which hash far faster than UUIDs.
    """

    def __init__(self, app: LedgerApplication, recorded_at: datetime) -> None:
        self._app = app
        self.recorded_at = recorded_at
        self.touched: dict[tuple[str, str], LedgerAggregate] = {}
        #: One-off facts are only events: no aggregate object is kept for them.
        self.new_occurrences: dict[tuple[str, str], LedgerAggregate.Started] = {}
        self._absent: set[tuple[str, str]] = set()
        self._present: set[tuple[str, str]] = set()
        #: The batch's new events in the order of its facts: that is the notification order.
        self.events: list[Any] = []
        self.index_rows: list[tuple[str, str, int]] = []
        #: Event ids the store already holds -> the stored message.
        self.stored_ids: dict[str, bytes] = {}
        #: Event ids accepted earlier in this batch -> the fact as given.
        self.batch_facts: dict[str, Fact] = {}
        self.new_keys: dict[str, bytes] = {}

    def prefetch(self, refs: set[tuple[str, str]], event_ids: set[str]) -> None:
        by_id = {aggregate_hex(kind, key): (kind, key) for kind, key in refs}
        found = existing_ids(self._app.recorder, by_id)
        self._present = {by_id[agg_id] for agg_id in found}
        self._absent = refs - self._present
        self.stored_ids = indexed_events(self._app.recorder, event_ids)

    def get(self, cls: type[LedgerAggregate], key: str) -> LedgerAggregate | None:
        ref = (cls.KIND, key)
        aggregate = self.touched.get(ref)
        if aggregate is not None:
            return aggregate if isinstance(aggregate, cls) else None
        started = self.new_occurrences.get(ref)
        if started is not None:
            aggregate = started.mutate(None)
        elif ref in self._absent:
            return None
        else:
            try:
                aggregate = self._app.repository.get(aggregate_id(cls.KIND, key))
            except AggregateNotFoundError:
                self._absent.add(ref)
                return None
        if not isinstance(aggregate, cls):
            return None
        if cls is not Occurrence:
            self.touched[ref] = aggregate
        return aggregate

    def start(self, cls: type[LedgerAggregate], fact: Fact, key: str) -> None:
        ref = (cls.KIND, key)
        if cls is Occurrence:
            started = cls.Started(  # type: ignore[call-arg]
                originator_id=aggregate_id(cls.KIND, key),
                originator_version=1,
                timestamp=self.recorded_at,
                originator_topic=_OCCURRENCE_TOPIC,
                event_type=fact.event_type,
                event_id=fact.event_id,
                occurred_at=fact.occurred_at,
                data=fact.data,
            )
            self.new_occurrences[ref] = started
            self._claim([started])
        else:
            aggregate = cls.start(fact, key, self.recorded_at)
            self.touched[ref] = aggregate
            self._claim(aggregate.collect_events())
        self._absent.discard(ref)

    def record(self, aggregate: LedgerAggregate, fact: Fact) -> None:
        aggregate.record(fact, self.recorded_at)
        self._claim(aggregate.collect_events())

    @staticmethod
    def size_bound(fact: Fact) -> int:
        return encoded_size_bound(fact)

    def _claim(self, events: Sequence[Any]) -> None:
        for event in events:
            self.events.append(event)
            self.index_rows.append((event.event_id, event.originator_id.hex, event.originator_version))

    def aggregates_by_id(self) -> dict[UUID, LedgerAggregate]:
        return {aggregate.id: aggregate for aggregate in self.touched.values()}

    def interactions(self) -> list[tuple[str, str | None]]:
        """(event id, employee id) of the batch's new interactions."""
        return [
            (started.event_id, started.data.get("employee_id"))
            for started in self.new_occurrences.values()
            if started.event_type == "InteractionRecorded"
        ]


class LedgerApplication(Application[UUID]):
    """eventsourcing Application recording ledger facts as Avro-encoded events."""

    name = "CrmLedger"
    env: ClassVar[dict[str, str]] = {
        "AGGREGATE_CACHE_MAXSIZE": "200000",
        # One writer process at a time; a concurrent writer is detected as an
        # IntegrityError on save and the batch is re-run on fresh state.
        "AGGREGATE_CACHE_FASTFORWARD": "n",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
    }

    def __init__(
        self,
        persistence: Mapping[str, str],
        registry: SchemaRegistry | None = None,
        goal_components: Iterable[str] = (),
    ) -> None:
        self.registry = registry or SchemaRegistry.load()
        #: What a team goal may gauge: team KPIs, `score`, and the spec's reward components.
        self.goal_metrics = goal_metrics(goal_components)
        self.codec = AvroCodec(self.registry, epoch_millis=True)
        super().__init__(env=dict(persistence))
        self.vault = PersonalDataVault(
            self.recorder, self.env.get("KEY_STORE"), read_only=self.env.get("KEY_STORE_READ_ONLY") == "true"
        )
        self.max_event_bytes = DEFAULT_MAX_EVENT_BYTES
        #: A store written before the event-id index, opened read-only (an auditor's copy, which
        #: refuses the index's writes): its event ids are found in memory instead, built when
        #: first asked (`recorded_fact`); the read commands never ask.
        self._index_in_memory = False
        self._positions: dict[str, int] | None = None  # event id -> notification id, when built
        if index_is_empty(self.recorder) and self.max_position() > 0:
            if self.env.get("LEDGER_READ_ONLY") == "true":
                self._index_in_memory = True
            else:
                self._backfill_index()
        # Who handled recent interactions: survey answers name them, usually days later.
        self._handlers: OrderedDict[str, str | None] = OrderedDict()

    def construct_env(self, name: str, env: Mapping[str, str] | None = None) -> Environment:
        # Library code does not read os.environ: settings are built at the edge.
        merged = dict(type(self).env)
        merged.update(env or {})
        # The recorders that keep the event-id index in the same transaction as the events.
        postgres = merged.get("PERSISTENCE_MODULE", "").startswith("eventsourcing.postgres")
        merged.setdefault(
            "APPLICATION_RECORDER_TOPIC",
            "ledger.postgres_recorder:PostgresLedgerRecorder"
            if postgres
            else "ledger.recorders:SQLiteLedgerRecorder",
        )
        return Environment(name, merged)

    def construct_mapper(self) -> AvroMapper:
        return AvroMapper(self.codec)

    def record(self, facts: Sequence[Fact], *, atomic: bool = False) -> list[Outcome]:
        """Validate and save a batch: valid facts land together, in order; the rest are reported.

        With `atomic`, a batch with any rejected fact saves nothing and raises its first error.
        When another writer gets in between (a unique key taken, the store busy), the batch is
        decided again on fresh state, with a growing random pause.
        """

        def forget_cached_state() -> None:
            # Another writer changed the store under the cached state.
            self._repository = self.construct_repository()
            self.vault.clear_cache()

        return decided_again_on_contention(lambda: self._record_once(facts, atomic), forget_cached_state)

    def _record_once(self, facts: Sequence[Fact], atomic: bool) -> list[Outcome]:
        work = _UnitOfWork(self, datetime.now(tz=UTC))
        work.prefetch({ref for fact in facts for ref in _references(fact)}, {f.event_id for f in facts})
        outcomes = [self.decide(fact, work) for fact in facts]
        check_rejections_not_raced(self.recorder, facts, outcomes)
        forgotten = [
            f.data["customer_id"]
            for f, o in zip(facts, outcomes, strict=True)
            if o.status == "accepted" and f.event_type == "CustomerForgotten"
        ]
        if atomic:
            rejected = next((o for o in outcomes if o.error is not None), None)
            if rejected is not None and rejected.error is not None:
                self._repository = self.construct_repository()  # forget the half-applied batch
                raise rejected.error
        if work.events:
            # Keys before the events encrypted with them; shredding before the forget is
            # saved: a crash in between leaves data unreadable, never readable.
            self.vault.store_new_keys(work.new_keys)
            self.vault.forget(forgotten)
            processing = ProcessingEvent[UUID]()
            processing.events.extend(work.events)
            processing.aggregates.update(work.aggregates_by_id())
            processing.saved_kwargs["event_index"] = work.index_rows
            try:
                # eventsourcing's own recording step, given events directly: its save()
                # would re-discover them from each aggregate through slow protocol checks.
                self._record(processing)
            except Exception:
                self._repository = self.construct_repository()
                raise
            self.remember_handlers(work.interactions())
        return outcomes

    def decide(self, fact: Fact, work: UnitOfWork) -> Outcome:
        """Judge one fact against the batch's state and, when valid, apply it to `work`.

        This is the ledger's one rule set: every write path decides through it.
        """
        owner, starts = EVENT_OWNERS[fact.event_type]
        key = fact.event_id if owner is Occurrence else fact.data[_KEY_FIELD[owner]]
        try:
            earlier = work.batch_facts.get(fact.event_id)
            if earlier is not None:
                return self._same_fact(fact, earlier)
            stored = work.stored_ids.get(fact.event_id)
            if stored is not None:
                return self._same_fact(fact, self._stored_fact(stored))
            size = work.size_bound(fact)
            if size > self.max_event_bytes:
                raise ValidationError(
                    "(record)", f"too large: up to {size} bytes encoded, the limit is {self.max_event_bytes}"
                )
            checked = self._check_references(fact, work)
            aggregate = work.get(owner, key)
            if aggregate is None and not starts:
                raise ValidationError(_KEY_FIELD[owner], f"unknown {owner.KIND} {key!r}")
            if aggregate is not None:
                aggregate.check(checked)  # type: ignore[attr-defined]
            # Encrypted only once accepted: keys are made for facts that land, never for rejects.
            if checked.event_type in PERSONAL_FIELDS and _has_personal(checked):
                checked = self._encrypt_personal(checked, work)
            if aggregate is None:
                work.start(owner, checked, key)
            else:
                work.record(aggregate, checked)
        except ValidationError as error:
            # Without its traceback: its frames' callers hold the batch's outcomes, which would
            # hold this error, a cycle keeping the whole batch alive until a full collection.
            return Outcome("rejected", error.with_traceback(None))
        work.batch_facts[fact.event_id] = fact
        return _ACCEPTED

    def recorded_fact(self, event_id: str) -> Fact | None:
        """The fact the ledger holds under `event_id`, if it holds one."""
        if self._index_in_memory:
            state = self._unindexed_state(event_id)
        else:
            state = indexed_events(self.recorder, [event_id]).get(event_id)
        return None if state is None else self._stored_fact(state)

    def _unindexed_state(self, event_id: str) -> bytes | None:
        """The stored message of `event_id` in a read-only store without the event-id index."""
        if self._positions is None:
            self._positions = {found: position for found, _, _, position in self._index_rows()}
        position = self._positions.get(event_id)
        if position is None:
            return None
        (notification,) = self.read_notifications(position, 1)
        return bytes(notification.state)

    def _stored_fact(self, state: bytes) -> Fact:
        """The fact a stored message holds, personal fields decrypted."""
        event_type, record = self.codec.decode(state)
        data = {k: v for k, v in record.items() if k not in ("event_id", "occurred_at", "recorded_at")}
        for name in PERSONAL_FIELDS.get(event_type, ()):
            data[name] = self.vault.reveal(data["customer_id"], data.get(name))
        return Fact(event_type, record["event_id"], record["occurred_at"], data)

    @staticmethod
    def _same_fact(given: Fact, held: Fact) -> Outcome:
        """A duplicate when `given` says what the ledger holds under its id; else a conflict."""
        if given.event_type != held.event_type:
            return Outcome(
                "conflict",
                ConflictError(
                    "event_id", f"already names a {held.event_type} in the ledger, not a {given.event_type}"
                ),
            )
        differing = []
        if given.occurred_at != held.occurred_at:
            differing.append(
                f"occurred_at (ledger {format_timestamp(held.occurred_at)}, "
                f"given {format_timestamp(given.occurred_at)})"
            )
        personal = PERSONAL_FIELDS.get(given.event_type, ())
        for name, value in given.data.items():
            stored = held.data.get(name)
            if value is None and (given.event_type, name) in _FILLED_IN:
                continue  # left out by the client; the ledger filled it in
            if name in personal:
                if stored not in (FORGOTTEN, value):
                    differing.append(f"{name} (personal: values not shown)")
            elif stored != value:
                differing.append(f"{name} (ledger {_short(stored)}, given {_short(value)})")
        if not differing:
            return _DUPLICATE
        return Outcome(
            "conflict",
            ConflictError(
                differing[0].split(" ", 1)[0],
                "event_id already recorded with different content: " + "; ".join(differing),
            ),
        )

    def _encrypt_personal(self, fact: Fact, work: UnitOfWork) -> Fact:
        data = dict(fact.data)
        customer_id = data["customer_id"]
        key = self.vault.key_for_new_fact(customer_id, work.new_keys)
        for name in PERSONAL_FIELDS[fact.event_type]:
            value = data.get(name)
            if value is not None and not str(value).startswith(PREFIX):
                data[name] = self.vault.encrypt(customer_id, str(value), key)
        return replace(fact, data=data)

    def _backfill_index(self) -> None:
        """Index every stored event id (a store written before the index existed)."""
        rows = self._index_rows()
        while batch := [row[:3] for row in itertools.islice(rows, _BACKFILL_BATCH)]:
            with self.recorder.datastore.transaction(commit=True) as cursor:  # type: ignore[attr-defined]
                mark = "?" if isinstance(self.recorder, SQLiteAggregateRecorder) else "%s"
                cursor.executemany(
                    f"INSERT INTO {INDEX_TABLE} VALUES ({mark}, {mark}, {mark}) ON CONFLICT DO NOTHING", batch
                )

    def _index_rows(self) -> Iterator[tuple[str, str, int, int]]:
        """(event id, originator id as hex, originator version, notification id) of every
        stored event, in notification order."""
        start = 1
        while True:
            batch = list(self.read_notifications(start, _BACKFILL_BATCH))
            if not batch:
                return
            for notification in batch:
                _, record = self.codec.decode(notification.state)
                originator = notification.originator_id
                hex_id = originator.hex if isinstance(originator, UUID) else UUID(str(originator)).hex
                yield record["event_id"], hex_id, notification.originator_version, notification.id
            start = batch[-1].id + 1

    def _check_references(self, fact: Fact, work: UnitOfWork) -> Fact:
        """Referenced entities exist (and were active); fill fields the ledger knows."""
        event_type = fact.event_type
        data: dict[str, Any] = dict(fact.data)
        at = fact.occurred_at
        owned = _OWNED_BY.get(event_type)
        if owned is not None:
            # Filled before the checks below, so a filled-in engineer is checked like a given one;
            # a given value that contradicts the owner is refused by the owner's own check.
            owner = work.get(owned[0], data[_KEY_FIELD[owned[0]]])
            if owner is not None:
                for name in owned[1]:
                    data[name] = data.get(name) or getattr(owner, name)

        employee_id = data.get("employee_id")
        if employee_id and not event_type.startswith("Employee"):
            employee = self._employee(work, employee_id, "employee_id")
            if event_type in _ABOUT_PAST_WORK:
                employee.check_known("employee_id", at)
            else:
                employee.check_active("employee_id", at)
        customer_id = data.get("customer_id")
        if customer_id and not event_type.startswith("Customer") and work.get(Customer, customer_id) is None:
            raise ValidationError("customer_id", f"unknown customer {customer_id!r}")

        if event_type.startswith("Case") and event_type != "CaseOpened":
            case = work.get(Case, data["case_id"])
            if isinstance(case, Case):
                data["customer_id"] = _same_customer(customer_id, case)
        if event_type == "CaseEscalated" and data.get("to_employee_id"):
            self._employee(work, data["to_employee_id"], "to_employee_id").check_active("to_employee_id", at)
        if event_type == "CaseResolved":
            for article_id in data["article_ids"]:
                self._article(work, article_id, "article_ids").check_usable("article_ids", at)
        if event_type == "ArticleCreated" and data.get("source_case_id"):
            self._case(work, data["source_case_id"], "source_case_id")
        if event_type == "ArticleLinked":
            case = self._case(work, data["case_id"], "case_id")
            data["customer_id"] = _same_customer(customer_id, case)
            article = work.get(Article, data["article_id"])
            if isinstance(article, Article):
                data["author_id"] = data.get("author_id") or article.author_id
        if event_type == "KnowledgeShared" and data.get("article_id"):
            self._article(work, data["article_id"], "article_id").check_usable("article_id", at)
        if event_type.startswith("TeamGoal"):
            self._check_goal(work, event_type, data, at)
        if event_type == "ContractStarted":
            check_term(fact)
        if event_type == "FollowUpScheduled":
            check_follow_up(fact)
        if event_type == "FieldVisitScheduled":
            data["customer_id"] = self._visit_case(work, data, at)
        if event_type == "SurveyAnswered":
            data["employee_id"] = self._survey_employee(work, data, at)
            if all(data.get(k) is None for k in ("csat", "nps", "ces")):
                raise ValidationError("csat", "a survey answer needs at least one of csat, nps, ces")
        # Not dataclasses.replace: this runs for every fact of an import, and replace is slower.
        return Fact(event_type, fact.event_id, at, data)

    def _check_goal(self, work: UnitOfWork, event_type: str, data: dict[str, Any], at: int) -> None:
        """A goal gauges a known metric over a sane range, agreed by members of its team."""
        if event_type == "TeamGoalSet":
            check_metric(data["kpi"], self.goal_metrics)
            check_target(data["kpi"], data["target"])
            check_choice(data["comparison"], COMPARISONS, "comparison")
            check_range(data["from_period"], data["to_period"], month_of(at))
            team_id = data["team_id"]
        else:
            goal = work.get(TeamGoal, data["goal_id"])
            if not isinstance(goal, TeamGoal):
                raise ValidationError("goal_id", f"unknown goal {data['goal_id']!r}")
            given = data.get("team_id")
            if given and given != goal.team_id:
                raise ValidationError("team_id", f"goal {goal.goal_id!r} belongs to team {goal.team_id!r}")
            team_id = data["team_id"] = goal.team_id
            if event_type == "TeamGoalClosed":
                check_choice(data["outcome"], OUTCOMES, "outcome")
                return
            check_choice(data.get("comparison"), COMPARISONS, "comparison")
            if data.get("target") is not None:
                check_target(goal.kpi, data["target"])
            if data.get("to_period"):
                check_range(goal.from_period, data["to_period"], month_of(at))
        agreed = data.get("agreed_by") or []
        if not agreed:
            raise ValidationError("agreed_by", "a team goal is agreed by at least one member of the team")
        if len(set(agreed)) != len(agreed):
            raise ValidationError("agreed_by", "names an employee twice")
        for employee_id in agreed:
            employee = self._employee(work, employee_id, "agreed_by")
            employee.check_active("agreed_by", at)
            team = employee.team_at(at)
            if team != team_id:
                raise ValidationError(
                    "agreed_by",
                    f"employee {employee_id!r} was in team {team!r}, not {team_id!r}, "
                    f"at {format_timestamp(at)}",
                )

    def remember_handlers(self, interactions: Iterable[tuple[str, str | None]]) -> None:
        """Note who handled newly saved interactions (event id, employee id)."""
        for event_id, employee_id in interactions:
            self._handlers[event_id] = employee_id
        while len(self._handlers) > HANDLERS_REMEMBERED:
            self._handlers.popitem(last=False)

    def forget_handlers(self, interactions: Iterable[tuple[str, str | None]]) -> None:
        """Undo `remember_handlers` for interactions whose batch was not saved after all."""
        for event_id, _ in interactions:
            self._handlers.pop(event_id, None)

    def _survey_employee(self, work: UnitOfWork, data: Mapping[str, Any], at: int) -> str | None:
        case_id, interaction_id = data.get("case_id"), data.get("interaction_id")
        if not case_id and not interaction_id:
            raise ValidationError("case_id", "a survey answer must name a case_id or interaction_id")
        handler: str | None = None
        if interaction_id and interaction_id in self._handlers:
            handler = self._handlers[interaction_id]
        elif interaction_id:
            interaction = work.get(Occurrence, interaction_id)
            if not isinstance(interaction, Occurrence) or interaction.event_type != "InteractionRecorded":
                raise ValidationError("interaction_id", f"unknown interaction {interaction_id!r}")
            handler = interaction.employee_id
        if case_id:
            case = self._case(work, case_id, "case_id")
            _same_customer(data.get("customer_id"), case)
            if at < case.opened_at:
                # In one run such an answer meets no case yet ("unknown case"): refused in a
                # later run too, whatever was recorded since.
                raise ValidationError("occurred_at", f"is before case {case_id!r} was opened")
            handler = case.attributed_at(at) or handler
        given: str | None = data.get("employee_id")
        return given or handler

    def _visit_case(self, work: UnitOfWork, data: Mapping[str, Any], at: int) -> str:
        """A visit is for an open case; its site, when named, is the case customer's. Returns the customer."""
        case = self._case(work, data["case_id"], "case_id")
        if case.state not in _OPEN_CASE_STATES:
            raise ValidationError(
                "case_id", f"case {case.case_id!r} is {case.state}: no visit can be scheduled"
            )
        if at < case.opened_at:
            raise ValidationError("occurred_at", f"is before case {case.case_id!r} was opened")
        customer_id = _same_customer(data.get("customer_id"), case)
        site_id = data.get("site_id")
        if site_id:
            site = work.get(Site, site_id)
            if not isinstance(site, Site):
                raise ValidationError("site_id", f"unknown site {site_id!r}")
            if site.customer_id != customer_id:
                raise ValidationError(
                    "site_id",
                    f"site {site_id!r} belongs to customer {site.customer_id!r}, not {customer_id!r}",
                )
        if data["window_end"] <= data["window_start"]:
            raise ValidationError("window_end", "must be after window_start")
        return customer_id

    def _employee(self, work: UnitOfWork, employee_id: str, field: str) -> Employee:
        employee = work.get(Employee, employee_id)
        if not isinstance(employee, Employee):
            raise ValidationError(field, f"unknown employee {employee_id!r}")
        return employee

    def _case(self, work: UnitOfWork, case_id: str, field: str) -> Case:
        case = work.get(Case, case_id)
        if not isinstance(case, Case):
            raise ValidationError(field, f"unknown case {case_id!r}")
        return case

    def _article(self, work: UnitOfWork, article_id: str, field: str) -> Article:
        article = work.get(Article, article_id)
        if not isinstance(article, Article):
            raise ValidationError(field, f"unknown article {article_id!r}")
        return article

    def reset_cached_aggregates(self) -> None:
        """Forget cached aggregates (the store was written to by another path)."""
        self._repository = self.construct_repository()

    def reward_period(self, period: str) -> RewardPeriod | None:
        """The closed period's aggregate, or None while the period is open."""
        try:
            found: LedgerAggregate = self.repository.get(aggregate_id(RewardPeriod.KIND, period))
        except AggregateNotFoundError:
            return None
        return found if isinstance(found, RewardPeriod) else None

    def period_facts(self, period: str) -> list[Fact]:
        """Every fact recorded about a closed period, in order (close, statements, adjustments)."""
        events = self.events.get(aggregate_id(RewardPeriod.KIND, period))
        return [Fact(e.event_type, e.event_id, e.occurred_at, e.data) for e in events]  # type: ignore[attr-defined]

    def max_position(self) -> int:
        """The highest notification id in the store (0 when empty)."""
        return int(self.recorder.max_notification_id() or 0)

    def read_notifications(self, start: int, limit: int, stop: int | None = None) -> Iterable[Any]:
        """Stored notifications from `start` (inclusive), in order."""
        return self.recorder.select_notifications(start=start, limit=limit, stop=stop)
