"""The write model: eventsourcing aggregates that validate each fact before it is recorded.

Every aggregate records its facts as one generic pair of events (`Started`, `Recorded`)
carrying the ledger event type and its fields; the fields' shape is owned by the Avro
schemas in `schemas/` and checked by `ledger.records`, so the classes here hold only the
state each lifecycle rule needs. Ingest is idempotent through the store's event-id index
(`ledger.recorders`), so an aggregate keeps no list of the event ids it applied: it would
only grow with its history and the memory of every cached aggregate with it.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

from eventsourcing.domain import Aggregate

from ledger.errors import IllegalTransitionError, ValidationError
from ledger.records import Fact, format_timestamp

#: Fixed namespace: aggregate ids are derived from business keys, so they are stable.
_ID_NAMESPACE = uuid.UUID("6f1d9c5e-3b0a-4d52-9a61-1c2e6b7d8f90")


_NAMESPACE_BYTES = _ID_NAMESPACE.bytes


@functools.lru_cache(maxsize=131072)
def aggregate_hex(kind: str, key: str) -> str:
    """`aggregate_id(kind, key).hex`, computed without building a UUID object.

    Bulk ingest derives one id per fact; this is uuid5 done by hand (SHA-1 of namespace
    and name, version 5 and RFC 4122 variant bits set).
    """
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{kind}:{key}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()


@functools.lru_cache(maxsize=65536)
def aggregate_id(kind: str, key: str) -> uuid.UUID:
    """The aggregate id of a business key, e.g. ('case', 'C-17'): a uuid5 in a fixed namespace."""
    return uuid.UUID(hex=aggregate_hex(kind, key))


class LedgerAggregate(Aggregate):
    """Common base: records facts and remembers their event ids."""

    KIND = ""
    #: The event types this aggregate records; the first starts it.
    EVENT_TYPES = cast("tuple[str, ...]", ())

    class Recorded(Aggregate.Event):
        """A fact recorded on an existing aggregate."""

        event_type: str
        event_id: str
        occurred_at: int
        data: Mapping[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, LedgerAggregate)
            aggregate._apply_fact(self.event_type, self.event_id, self.occurred_at, self.data)

    class Started(Aggregate.Created, Recorded):
        """The fact that starts an aggregate: the same fields, plus eventsourcing's creation."""

    def __init__(self) -> None:
        """No state of its own; subclasses' `super().__init__()` stops here, not at eventsourcing's."""

    @classmethod
    def start(cls, fact: Fact, key: str, recorded_at: datetime | None = None) -> LedgerAggregate:
        """A new aggregate whose first event is `fact` (already checked by the caller)."""
        return cls._create(
            cls.Started,
            id=aggregate_id(cls.KIND, key),
            timestamp=recorded_at,
            event_type=fact.event_type,
            event_id=fact.event_id,
            occurred_at=fact.occurred_at,
            data=dict(fact.data),
        )

    def record(self, fact: Fact, recorded_at: datetime | None = None) -> None:
        """Append a checked fact to this aggregate."""
        self.trigger_event(
            self.Recorded,
            timestamp=recorded_at,
            event_type=fact.event_type,
            event_id=fact.event_id,
            occurred_at=fact.occurred_at,
            data=dict(fact.data),
        )

    def _apply_fact(self, event_type: str, event_id: str, occurred_at: int, data: Mapping[str, Any]) -> None:
        self.when(event_type, occurred_at, data)

    def when(self, event_type: str, occurred_at: int, data: Mapping[str, Any]) -> None:
        """Evolve state by one fact; subclasses override."""


class Customer(LedgerAggregate):
    KIND = "customer"
    EVENT_TYPES = ("CustomerRegistered", "CustomerDetailsChanged", "CustomerForgotten")

    def __init__(self) -> None:
        super().__init__()
        self.customer_id: str = ""
        self.registered_at: int = 0
        self.forgotten: bool = False

    def when(self, event_type: str, occurred_at: int, data: Mapping[str, Any]) -> None:
        if event_type == "CustomerRegistered":
            self.customer_id = data["customer_id"]
            self.registered_at = occurred_at
            self.forgotten = False
        elif event_type == "CustomerForgotten":
            self.forgotten = True

    def check(self, fact: Fact) -> None:
        """Rules for a fact about this customer."""
        if fact.event_type == "CustomerRegistered":
            raise ValidationError("customer_id", f"customer {self.customer_id!r} is already registered")
        if self.forgotten and fact.event_type == "CustomerDetailsChanged":
            raise ValidationError("customer_id", f"customer {self.customer_id!r} was forgotten")
        if fact.event_type == "CustomerForgotten" and self.forgotten:
            raise ValidationError("customer_id", f"customer {self.customer_id!r} is already forgotten")


class Employee(LedgerAggregate):
    KIND = "employee"
    EVENT_TYPES = ("EmployeeJoined", "EmployeeMovedTeam", "EmployeeLeft")

    def __init__(self) -> None:
        super().__init__()
        self.employee_id: str = ""
        self.team_id: str = ""
        self.joined_at: int = 0
        self.left_at: int | None = None
        #: (from occurred_at, team) in ledger order: team goals ask who was in a team when.
        self.teams: list[tuple[int, str]] = []

    def when(self, event_type: str, occurred_at: int, data: Mapping[str, Any]) -> None:
        if event_type == "EmployeeJoined":
            self.employee_id = data["employee_id"]
            self.team_id = data["team_id"]
            self.joined_at = occurred_at
            self.left_at = None
            self.teams = [(occurred_at, data["team_id"])]
        elif event_type == "EmployeeMovedTeam":
            self.team_id = data["team_id"]
            self.teams.append((occurred_at, data["team_id"]))
        elif event_type == "EmployeeLeft":
            self.left_at = occurred_at

    def check(self, fact: Fact) -> None:
        """Rules for a fact about this employee's own membership."""
        if fact.event_type == "EmployeeJoined":
            raise ValidationError("employee_id", f"employee {self.employee_id!r} already joined")
        if self.left_at is not None:
            raise ValidationError("employee_id", f"employee {self.employee_id!r} has left")
        if fact.occurred_at < self.joined_at:
            raise ValidationError("occurred_at", "is before the employee joined")

    def check_active(self, field: str, occurred_at: int) -> None:
        """The employee must have joined, and not yet left, at `occurred_at`."""
        if occurred_at < self.joined_at:
            raise ValidationError(
                field,
                f"employee {self.employee_id!r} had not joined yet at {format_timestamp(occurred_at)}",
            )
        if self.left_at is not None and occurred_at >= self.left_at:
            raise ValidationError(
                field, f"employee {self.employee_id!r} had left at {format_timestamp(self.left_at)}"
            )

    def team_at(self, occurred_at: int) -> str | None:
        """The team the employee was in at `occurred_at` (None before joining or after leaving)."""
        if occurred_at < self.joined_at or (self.left_at is not None and occurred_at >= self.left_at):
            return None
        # The latest move at or before the moment; moves dated alike keep ledger order.
        team = None
        for since, team_id in self.teams:
            if since <= occurred_at:
                team = team_id
        return team

    def check_known(self, field: str, occurred_at: int) -> None:
        """The employee must have joined by `occurred_at` (leaving later is fine)."""
        if occurred_at < self.joined_at:
            raise ValidationError(
                field,
                f"employee {self.employee_id!r} had not joined yet at {format_timestamp(occurred_at)}",
            )


def _latest(steps: list[tuple[int, str | None]] | list[tuple[int, str]], at: int) -> str | None:
    """The employee of the latest step at or before `at` (steps dated alike: the later recorded)."""
    found: tuple[int, str | None] | None = None
    for step in steps:
        if step[0] <= at and (found is None or step[0] >= found[0]):
            found = step
    return None if found is None else found[1]


#: Case lifecycle: which states each step may follow.
CASE_TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "CaseAccepted": (frozenset({"opened", "escalated", "reopened"}), "accepted"),
    "CaseEscalated": (frozenset({"accepted", "escalated", "reopened"}), "escalated"),
    "CaseResolved": (frozenset({"accepted", "escalated", "reopened"}), "resolved"),
    "CaseReopened": (frozenset({"resolved"}), "reopened"),
    "CaseClosed": (frozenset({"resolved"}), "closed"),
}


class Case(LedgerAggregate):
    KIND = "case"
    EVENT_TYPES = ("CaseOpened", *CASE_TRANSITIONS)

    def __init__(self) -> None:
        super().__init__()
        self.case_id: str = ""
        self.customer_id: str = ""
        self.opened_at: int = 0
        self.state: str = ""
        #: (occurred_at, employee) of each step that gave the case an owner (opening,
        #: acceptance, escalation to someone) or a resolver, in ledger order: a survey answer
        #: synced late is attributed as things stood at its own time, not as they stand now.
        self.owners: list[tuple[int, str | None]] = []
        self.resolvers: list[tuple[int, str]] = []

    def when(self, event_type: str, occurred_at: int, data: Mapping[str, Any]) -> None:
        if event_type == "CaseOpened":
            self.case_id = data["case_id"]
            self.customer_id = data["customer_id"]
            self.opened_at = occurred_at
            self.state = "opened"
            self.owners = [(occurred_at, data.get("employee_id"))]
            self.resolvers = []
            return
        self.state = CASE_TRANSITIONS[event_type][1]
        if event_type == "CaseAccepted":
            self.owners.append((occurred_at, data["employee_id"]))
        elif event_type == "CaseEscalated" and data.get("to_employee_id"):
            self.owners.append((occurred_at, data["to_employee_id"]))
        elif event_type == "CaseResolved":
            self.resolvers.append((occurred_at, data["employee_id"]))

    def attributed_at(self, occurred_at: int) -> str | None:
        """Whose work a survey answer given at `occurred_at` (not before the opening) rates: the
        case's latest resolver by then, else its owner by then.

        Within one run facts are applied in time order, so this is the state the answer meets;
        across runs it is the same answer, whatever was recorded about the case since. A step
        at the answer's very instant counts as before it, in one run too: there an answer
        comes after the other facts of its instant (`ledger.ordering.RATES_THE_INSTANT`).
        """
        return _latest(self.resolvers, occurred_at) or _latest(self.owners, occurred_at)

    def check(self, fact: Fact) -> None:
        """The state machine: an illegal step is an error, never an event."""
        if fact.event_type == "CaseOpened":
            raise ValidationError("case_id", f"case {self.case_id!r} is already open")
        allowed, _ = CASE_TRANSITIONS[fact.event_type]
        if self.state not in allowed:
            step = fact.event_type.removeprefix("Case").lower()
            raise IllegalTransitionError(
                "case_id",
                f"case {self.case_id!r} is {self.state}: it cannot be {step} "
                f"(allowed from: {', '.join(sorted(allowed))})",
            )
        if fact.occurred_at < self.opened_at:
            raise ValidationError("occurred_at", f"is before case {self.case_id!r} was opened")
        given = fact.get("customer_id")
        if given and given != self.customer_id:
            raise ValidationError(
                "customer_id", f"case {self.case_id!r} belongs to customer {self.customer_id!r}"
            )


class Article(LedgerAggregate):
    KIND = "article"
    EVENT_TYPES = (
        "ArticleCreated",
        "ArticlePublished",
        "ArticleImproved",
        "ArticleLinked",
        "ArticleFlagged",
        "ArticleRetired",
    )

    def __init__(self) -> None:
        super().__init__()
        self.article_id: str = ""
        self.author_id: str = ""
        self.created_at: int = 0
        self.published: bool = False
        self.retired: bool = False

    def when(self, event_type: str, occurred_at: int, data: Mapping[str, Any]) -> None:
        if event_type == "ArticleCreated":
            self.article_id = data["article_id"]
            self.author_id = data["employee_id"]
            self.created_at = occurred_at
            self.published = False
            self.retired = False
        elif event_type == "ArticlePublished":
            self.published = True
        elif event_type == "ArticleRetired":
            self.retired = True

    def check(self, fact: Fact) -> None:
        """Article lifecycle: a retired article is read-only history."""
        if fact.event_type == "ArticleCreated":
            raise ValidationError("article_id", f"article {self.article_id!r} already exists")
        self.check_usable("article_id", fact.occurred_at)
        if fact.event_type == "ArticlePublished" and self.published:
            raise IllegalTransitionError("article_id", f"article {self.article_id!r} is already published")
        given = fact.get("author_id")
        if given and given != self.author_id:
            raise ValidationError(
                "author_id", f"article {self.article_id!r} was written by {self.author_id!r}"
            )

    def check_usable(self, field: str, occurred_at: int) -> None:
        """The article exists at `occurred_at` and is not retired."""
        if self.retired:
            raise IllegalTransitionError(field, f"article {self.article_id!r} is retired")
        if occurred_at < self.created_at:
            raise ValidationError("occurred_at", f"is before article {self.article_id!r} was created")


class Occurrence(LedgerAggregate):
    """A one-off fact (an interaction, survey answer, compliment...): keyed by its event id."""

    KIND = "occurrence"
    EVENT_TYPES = (
        "InteractionRecorded",
        "RelationshipAttemptMade",
        "ComplimentReceived",
        "SurveyAnswered",
        "KnowledgeShared",
        "FollowUpScheduled",
    )

    def __init__(self) -> None:
        super().__init__()
        self.event_type: str = ""
        self.employee_id: str | None = None

    def when(self, event_type: str, occurred_at: int, data: Mapping[str, Any]) -> None:
        self.event_type = event_type
        self.employee_id = data.get("employee_id")


class RewardPeriod(LedgerAggregate):
    """A closed reward month: its statements and adjustments."""

    KIND = "period"
    EVENT_TYPES = ("RewardPeriodClosed", "RewardStatementIssued", "RewardAdjustmentIssued")

    def __init__(self) -> None:
        super().__init__()
        self.period: str = ""
        self.ledger_position: int = 0
        self.projection_version: str = ""
        #: hash-chain value after `ledger_position` (closes before RewardPeriodClosed v2: None)
        self.chain_head: str | None = None
        self.told: dict[str, float] = {}  # employee id -> score last told
        self.told_version: dict[str, str] = {}  # employee id -> version of that score
        self.told_times: dict[str, int] = {}  # employee id -> statements and adjustments issued

    def when(self, event_type: str, occurred_at: int, data: Mapping[str, Any]) -> None:
        if event_type == "RewardPeriodClosed":
            self.period = data["period"]
            self.ledger_position = data["ledger_position"]
            self.projection_version = data["version"]
            self.chain_head = data.get("chain_head")
        elif event_type in ("RewardStatementIssued", "RewardAdjustmentIssued"):
            # What the employee is told now, by a statement or an adjustment.
            employee = data["employee_id"]
            statement = event_type == "RewardStatementIssued"
            self.told[employee] = data["score"] if statement else data["new_score"]
            self.told_version[employee] = data["version"] if statement else data["new_version"]
            self.told_times[employee] = self.told_times.get(employee, 0) + 1

    def check(self, fact: Fact) -> None:
        """A period closes once; each employee gets one statement, then only adjustments."""
        if fact.event_type == "RewardPeriodClosed":
            raise ValidationError("period", f"period {self.period} is already closed")
        employee = fact.get("employee_id")
        if fact.event_type == "RewardStatementIssued" and employee in self.told:
            raise ValidationError("employee_id", f"{employee!r} already has a statement for {self.period}")
        if fact.event_type == "RewardAdjustmentIssued":
            told = self.told.get(employee, 0.0)
            if abs(told - fact.get("old_score")) > 1e-9:
                raise ValidationError(
                    "old_score", f"{employee!r} was last told {told}, not {fact.get('old_score')}"
                )


class TeamGoal(LedgerAggregate):
    """A goal a team agreed on: set once, revised by agreement while open, closed once."""

    KIND = "goal"
    EVENT_TYPES = ("TeamGoalSet", "TeamGoalRevised", "TeamGoalClosed")

    def __init__(self) -> None:
        super().__init__()
        self.goal_id: str = ""
        self.team_id: str = ""
        #: what the goal gauges: a revision's target is checked against its range
        self.kpi: str = ""
        self.from_period: str = ""
        self.to_period: str = ""
        self.set_at: int = 0
        self.closed: bool = False

    def when(self, event_type: str, occurred_at: int, data: Mapping[str, Any]) -> None:
        if event_type == "TeamGoalSet":
            self.goal_id = data["goal_id"]
            self.team_id = data["team_id"]
            self.kpi = data["kpi"]
            self.from_period = data["from_period"]
            self.to_period = data["to_period"]
            self.set_at = occurred_at
            self.closed = False
        elif event_type == "TeamGoalRevised" and data.get("to_period"):
            self.to_period = data["to_period"]
        elif event_type == "TeamGoalClosed":
            self.closed = True

    def check(self, fact: Fact) -> None:
        """A goal id is set once; a closed goal is history; nothing is dated before the setting."""
        if fact.event_type == "TeamGoalSet":
            raise ValidationError("goal_id", f"goal {self.goal_id!r} is already set")
        if self.closed:
            raise IllegalTransitionError("goal_id", f"goal {self.goal_id!r} is closed")
        if fact.occurred_at < self.set_at:
            raise ValidationError("occurred_at", f"is before goal {self.goal_id!r} was set")
        given = fact.get("team_id")
        if given and given != self.team_id:
            raise ValidationError("team_id", f"goal {self.goal_id!r} belongs to team {self.team_id!r}")


class Contract(LedgerAggregate):
    """A service contract: its customer, term and whether it is still active.

    A contract id names one contract at a time: it may start again only after it ended,
    and always for the same customer.
    """

    KIND = "contract"
    EVENT_TYPES = ("ContractStarted", "ContractRenewed", "ContractEnded")

    def __init__(self) -> None:
        super().__init__()
        self.contract_id: str = ""
        self.customer_id: str = ""
        self.started_at: int = 0
        self.starts_on: int = 0
        self.ends_on: int = 0
        self.active: bool = False

    def when(self, event_type: str, occurred_at: int, data: Mapping[str, Any]) -> None:
        if event_type == "ContractStarted":
            self.contract_id = data["contract_id"]
            self.customer_id = data["customer_id"]
            self.started_at = occurred_at
            self.starts_on = data["starts_on"]
            self.ends_on = data["ends_on"]
            self.active = True
        elif event_type == "ContractRenewed":
            self.ends_on = data["ends_on"]
        elif event_type == "ContractEnded":
            self.active = False

    def check(self, fact: Fact) -> None:
        """No two active contracts with one id; renewals extend; an ended contract is history."""
        given = fact.get("customer_id")
        if given and given != self.customer_id:
            raise ValidationError(
                "customer_id", f"contract {self.contract_id!r} belongs to customer {self.customer_id!r}"
            )
        if fact.event_type == "ContractStarted":
            if self.active:
                raise ValidationError("contract_id", f"contract {self.contract_id!r} is already active")
            check_term(fact)
            return
        if not self.active:
            raise IllegalTransitionError("contract_id", f"contract {self.contract_id!r} has ended")
        if fact.occurred_at < self.started_at:
            raise ValidationError("occurred_at", f"is before contract {self.contract_id!r} was started")
        if fact.event_type == "ContractRenewed" and fact.get("ends_on") <= self.ends_on:
            raise ValidationError(
                "ends_on",
                f"a renewal must extend the term beyond {format_timestamp(self.ends_on)}, "
                f"got {format_timestamp(fact.get('ends_on'))}",
            )


def check_follow_up(fact: Fact) -> None:
    """A follow-up is promised for later than the promise."""
    if fact.get("due_at") <= fact.occurred_at:
        raise ValidationError("due_at", f"must be after occurred_at ({format_timestamp(fact.occurred_at)})")


def check_term(fact: Fact) -> None:
    """A contract's dates are ordered: it starts before it ends."""
    if fact.get("ends_on") <= fact.get("starts_on"):
        raise ValidationError(
            "ends_on",
            f"must be after starts_on ({format_timestamp(fact.get('starts_on'))}), "
            f"got {format_timestamp(fact.get('ends_on'))}",
        )


class Site(LedgerAggregate):
    """A customer's site and the products installed there (the installed base).

    Keyed by site id, so a site belongs to exactly one customer: an installation that
    names another customer is refused.
    """

    KIND = "site"
    EVENT_TYPES = ("ProductInstalled", "ProductRemoved")

    def __init__(self) -> None:
        super().__init__()
        self.site_id: str = ""
        self.customer_id: str = ""
        self.first_install_at: int = 0
        self.installed: dict[str, str] = {}  # serial -> product

    def when(self, event_type: str, occurred_at: int, data: Mapping[str, Any]) -> None:
        if not self.site_id:
            self.site_id = data["site_id"]
            self.customer_id = data["customer_id"]
            self.first_install_at = occurred_at
        if event_type == "ProductInstalled":
            self.installed[data["serial"]] = data["product"]
        else:
            self.installed.pop(data["serial"], None)

    def check(self, fact: Fact) -> None:
        """The site's customer is fixed; a serial is installed once and removed once."""
        given = fact.get("customer_id")
        if given and given != self.customer_id:
            raise ValidationError(
                "customer_id",
                f"site {self.site_id!r} belongs to customer {self.customer_id!r}, not {given!r}",
            )
        serial = fact.get("serial")
        if fact.event_type == "ProductInstalled" and serial in self.installed:
            raise ValidationError("serial", f"{serial!r} is already installed at site {self.site_id!r}")
        if fact.event_type == "ProductRemoved" and serial not in self.installed:
            raise ValidationError("serial", f"{serial!r} is not installed at site {self.site_id!r}")
        if fact.occurred_at < self.first_install_at:
            raise ValidationError("occurred_at", f"is before site {self.site_id!r}'s first installation")


class FieldVisit(LedgerAggregate):
    """A field visit: scheduled for an open case, then completed or cancelled, once."""

    KIND = "visit"
    EVENT_TYPES = ("FieldVisitScheduled", "FieldVisitCompleted", "FieldVisitCancelled")

    def __init__(self) -> None:
        super().__init__()
        self.visit_id: str = ""
        self.case_id: str = ""
        self.customer_id: str = ""
        self.employee_id: str = ""
        self.scheduled_at: int = 0
        self.state: str = ""

    def when(self, event_type: str, occurred_at: int, data: Mapping[str, Any]) -> None:
        if event_type == "FieldVisitScheduled":
            self.visit_id = data["visit_id"]
            self.case_id = data["case_id"]
            self.customer_id = data["customer_id"]
            self.employee_id = data["employee_id"]
            self.scheduled_at = occurred_at
            self.state = "scheduled"
        else:
            self.state = "completed" if event_type == "FieldVisitCompleted" else "cancelled"

    def check(self, fact: Fact) -> None:
        """Only a scheduled visit can be completed or cancelled; arrival follows scheduling."""
        if fact.event_type == "FieldVisitScheduled":
            raise ValidationError("visit_id", f"visit {self.visit_id!r} is already scheduled")
        if self.state != "scheduled":
            step = fact.event_type.removeprefix("FieldVisit").lower()
            raise IllegalTransitionError(
                "visit_id", f"visit {self.visit_id!r} is {self.state}: it cannot be {step}"
            )
        if fact.occurred_at < self.scheduled_at:
            raise ValidationError("occurred_at", f"is before visit {self.visit_id!r} was scheduled")
        # A completion names the visit's engineer; a cancellation may be anyone's.
        owned = (
            ("customer_id", "employee_id") if fact.event_type == "FieldVisitCompleted" else ("customer_id",)
        )
        for field in owned:
            given, held = fact.get(field), getattr(self, field)
            if given and given != held:
                role = "customer" if field == "customer_id" else "engineer"
                raise ValidationError(field, f"visit {self.visit_id!r} has {role} {held!r}, not {given!r}")
        arrived = fact.get("arrived_at")
        if arrived is not None:
            if arrived < self.scheduled_at:
                raise ValidationError("arrived_at", f"is before visit {self.visit_id!r} was scheduled")
            if arrived > fact.occurred_at:
                raise ValidationError("arrived_at", "is after the visit was recorded as completed")


AGGREGATES: tuple[type[LedgerAggregate], ...] = (
    Customer,
    Employee,
    Case,
    Article,
    Occurrence,
    RewardPeriod,
    TeamGoal,
    Contract,
    Site,
    FieldVisit,
)
#: event type -> (aggregate class, whether the event starts the aggregate)
EVENT_OWNERS: dict[str, tuple[type[LedgerAggregate], bool]] = {
    event_type: (aggregate, event_type == aggregate.EVENT_TYPES[0] or aggregate is Occurrence)
    for aggregate in AGGREGATES
    for event_type in aggregate.EVENT_TYPES
}
