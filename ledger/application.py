"""The ledger application: the only way facts enter the system.

`record()` takes a batch of checked facts, validates each against the aggregates it
touches (lifecycle rules, references, who was active when), skips facts whose event id
the ledger already holds, and saves everything valid in one store transaction.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import Environment, get_topic

from ledger.domain import (
    EVENT_OWNERS,
    Article,
    Case,
    Customer,
    Employee,
    LedgerAggregate,
    Occurrence,
    RewardPeriod,
    aggregate_hex,
    aggregate_id,
)
from ledger.errors import ValidationError
from ledger.existence import existing_ids
from ledger.mapper import AvroMapper
from ledger.records import Fact
from ledger.vault import PERSONAL_FIELDS, PREFIX, PersonalDataVault
from schemas.codec import AvroCodec
from schemas.registry import SchemaRegistry

Status = Literal["accepted", "duplicate", "rejected"]

#: Which field holds the key of the aggregate that owns each kind of event.
_KEY_FIELD: dict[type[LedgerAggregate], str] = {
    Customer: "customer_id",
    Employee: "employee_id",
    Case: "case_id",
    Article: "article_id",
    Occurrence: "event_id",
    RewardPeriod: "period",
}
#: Facts that may name an employee who has since left (they describe the past).
_ABOUT_PAST_WORK = frozenset(
    {"SurveyAnswered", "ComplimentReceived", "RewardStatementIssued", "RewardAdjustmentIssued"}
)
_OCCURRENCE_TOPIC = get_topic(Occurrence)
HANDLERS_REMEMBERED = 200_000
_REFERENCE_KINDS: tuple[tuple[str, str], ...] = (
    ("customer_id", Customer.KIND),
    ("employee_id", Employee.KIND),
    ("to_employee_id", Employee.KIND),
    ("case_id", Case.KIND),
    ("source_case_id", Case.KIND),
    ("article_id", Article.KIND),
    ("interaction_id", Occurrence.KIND),
)


def _has_personal(fact: Fact) -> bool:
    return any(fact.data.get(name) is not None for name in PERSONAL_FIELDS[fact.event_type])


def _references(fact: Fact) -> list[tuple[str, str]]:
    """(aggregate kind, key) of every aggregate a fact may read or write."""
    refs = [(Occurrence.KIND, fact.event_id)]
    data = fact.data
    for field, kind in _REFERENCE_KINDS:
        value = data.get(field)
        if value:
            refs.append((kind, value))
    refs.extend((Article.KIND, a) for a in data.get("article_ids") or ())
    return refs


@dataclass(frozen=True)
class Outcome:
    """What happened to one fact of a batch."""

    status: Status
    error: ValidationError | None = None


class _UnitOfWork:
    """Aggregates touched by one batch, looked up once each.

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

    def prefetch(self, refs: set[tuple[str, str]]) -> None:
        by_id = {aggregate_hex(kind, key): (kind, key) for kind, key in refs}
        found = existing_ids(self._app.recorder, by_id)
        self._present = {by_id[agg_id] for agg_id in found}
        self._absent = refs - self._present

    def exists(self, cls: type[LedgerAggregate], key: str) -> bool:
        """Whether the aggregate exists, without loading it when the store already said so."""
        ref = (cls.KIND, key)
        if ref in self._present or ref in self.new_occurrences:
            return True
        return self.get(cls, key) is not None

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
            self.new_occurrences[ref] = cls.Started(  # type: ignore[call-arg]
                originator_id=aggregate_id(cls.KIND, key),
                originator_version=1,
                timestamp=self.recorded_at,
                originator_topic=_OCCURRENCE_TOPIC,
                event_type=fact.event_type,
                event_id=fact.event_id,
                occurred_at=fact.occurred_at,
                data=fact.data,
            )
        else:
            self.touched[ref] = cls.start(fact, key, self.recorded_at)
        self._absent.discard(ref)

    def pending_events(self) -> list[Any]:
        events: list[Any] = list(self.new_occurrences.values())
        for aggregate in self.touched.values():
            events.extend(aggregate.collect_events())
        return events

    def aggregates_by_id(self) -> dict[UUID, LedgerAggregate]:
        return {aggregate.id: aggregate for aggregate in self.touched.values()}


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

    def __init__(self, persistence: Mapping[str, str], registry: SchemaRegistry | None = None) -> None:
        self.registry = registry or SchemaRegistry.load()
        self.codec = AvroCodec(self.registry, epoch_millis=True)
        super().__init__(env=dict(persistence))
        self.vault = PersonalDataVault(self.recorder, self.env.get("KEY_STORE"))
        # Who handled recent interactions: survey answers name them, usually days later.
        self._handlers: OrderedDict[str, str | None] = OrderedDict()

    def construct_env(self, name: str, env: Mapping[str, str] | None = None) -> Environment:
        # Library code does not read os.environ: settings are built at the edge.
        merged = dict(type(self).env)
        merged.update(env or {})
        return Environment(name, merged)

    def construct_mapper(self) -> AvroMapper:
        return AvroMapper(self.codec)

    def record(self, facts: Sequence[Fact], *, atomic: bool = False) -> list[Outcome]:
        """Validate and save a batch: valid facts land together, the rest are reported.

        With `atomic`, a batch with any rejected fact saves nothing and raises its first error.
        """
        # Keys are committed before any event encrypted with them is saved.
        self.vault.ensure_keys(
            f.data["customer_id"] for f in facts if f.event_type in PERSONAL_FIELDS and _has_personal(f)
        )
        try:
            return self._record_once(facts, atomic)
        except IntegrityError:
            # Another writer got in between: drop cached state and decide again.
            self._repository = self.construct_repository()
            return self._record_once(facts, atomic)

    def _record_once(self, facts: Sequence[Fact], atomic: bool) -> list[Outcome]:
        work = _UnitOfWork(self, datetime.now(tz=UTC))
        work.prefetch({ref for fact in facts for ref in _references(fact)})
        outcomes = [self._decide(fact, work) for fact in facts]
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
        # Shred first: a crash before the save leaves the data unreadable, never readable.
        self.vault.forget(forgotten)
        events = work.pending_events()
        if events:
            processing = ProcessingEvent[UUID]()
            processing.events.extend(events)
            processing.aggregates.update(work.aggregates_by_id())
            try:
                # eventsourcing's own recording step, given events directly: its save()
                # would re-discover them from each aggregate through slow protocol checks.
                self._record(processing)
            except Exception:
                self._repository = self.construct_repository()
                raise
            self._remember_handlers(work)
        return outcomes

    def _decide(self, fact: Fact, work: _UnitOfWork) -> Outcome:
        owner, starts = EVENT_OWNERS[fact.event_type]
        if fact.event_type in PERSONAL_FIELDS and _has_personal(fact):
            fact = self._encrypt_personal(fact)
        key = fact.event_id if owner is Occurrence else fact.data[_KEY_FIELD[owner]]
        try:
            if owner is Occurrence and work.exists(owner, key):
                return Outcome("duplicate")
            aggregate = work.get(owner, key)
            if aggregate is not None and fact.event_id in aggregate.event_ids:
                return Outcome("duplicate")
            fact = self._check_references(fact, work)
            if aggregate is None:
                if not starts:
                    raise ValidationError(_KEY_FIELD[owner], f"unknown {owner.KIND} {key!r}")
                work.start(owner, fact, key)
            else:
                aggregate.check(fact)  # type: ignore[attr-defined]
                aggregate.record(fact, work.recorded_at)
        except ValidationError as error:
            return Outcome("rejected", error)
        return Outcome("accepted")

    def _encrypt_personal(self, fact: Fact) -> Fact:
        data = dict(fact.data)
        for name in PERSONAL_FIELDS[fact.event_type]:
            value = data.get(name)
            if value is not None and not str(value).startswith(PREFIX):
                data[name] = self.vault.encrypt(data["customer_id"], str(value))
        return replace(fact, data=data)

    def _check_references(self, fact: Fact, work: _UnitOfWork) -> Fact:
        """Referenced entities exist (and were active); fill fields the ledger knows."""
        event_type = fact.event_type
        data: dict[str, Any] = dict(fact.data)
        at = fact.occurred_at

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
                data["customer_id"] = case.customer_id
        if event_type == "CaseEscalated" and data.get("to_employee_id"):
            self._employee(work, data["to_employee_id"], "to_employee_id").check_active("to_employee_id", at)
        if event_type == "CaseResolved":
            for article_id in data["article_ids"]:
                self._article(work, article_id, "article_ids").check_usable("article_ids", at)
        if event_type == "ArticleCreated" and data.get("source_case_id"):
            self._case(work, data["source_case_id"], "source_case_id")
        if event_type == "ArticleLinked":
            case = self._case(work, data["case_id"], "case_id")
            data["customer_id"] = case.customer_id
            article = work.get(Article, data["article_id"])
            if isinstance(article, Article):
                data["author_id"] = data.get("author_id") or article.author_id
        if event_type == "KnowledgeShared" and data.get("article_id"):
            self._article(work, data["article_id"], "article_id").check_usable("article_id", at)
        if event_type == "SurveyAnswered":
            data["employee_id"] = self._survey_employee(work, data)
            if all(data.get(k) is None for k in ("csat", "nps", "ces")):
                raise ValidationError("csat", "a survey answer needs at least one of csat, nps, ces")
        return replace(fact, data=data)

    def _remember_handlers(self, work: _UnitOfWork) -> None:
        for started in work.new_occurrences.values():
            if started.event_type == "InteractionRecorded":
                self._handlers[started.event_id] = started.data.get("employee_id")
        while len(self._handlers) > HANDLERS_REMEMBERED:
            self._handlers.popitem(last=False)

    def _survey_employee(self, work: _UnitOfWork, data: Mapping[str, Any]) -> str | None:
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
            handler = case.resolver_id or case.owner_id or handler
        given: str | None = data.get("employee_id")
        return given or handler

    def _employee(self, work: _UnitOfWork, employee_id: str, field: str) -> Employee:
        employee = work.get(Employee, employee_id)
        if not isinstance(employee, Employee):
            raise ValidationError(field, f"unknown employee {employee_id!r}")
        return employee

    def _case(self, work: _UnitOfWork, case_id: str, field: str) -> Case:
        case = work.get(Case, case_id)
        if not isinstance(case, Case):
            raise ValidationError(field, f"unknown case {case_id!r}")
        return case

    def _article(self, work: _UnitOfWork, article_id: str, field: str) -> Article:
        article = work.get(Article, article_id)
        if not isinstance(article, Article):
            raise ValidationError(field, f"unknown article {article_id!r}")
        return article

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
