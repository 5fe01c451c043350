"""A realistic, deterministic customer-relationship history (same seed = same bytes).

The simulation walks day by day: customers contact the organisation on several channels,
open cases that employees accept, escalate, resolve and sometimes see reopened; how long
that takes and how well it goes depends on each employee's skill. Skilled staff write
knowledge articles from their cases that colleagues later reuse; surveys follow outcomes;
compliments, proactive relationship attempts and knowledge sharing happen along the way.
Events stream to the output as they occur, so memory stays bounded by open work.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from importers.scheduling import Scheduled, pick
from importers.service_generator import ServiceSimulation
from ledger.records import format_timestamp

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
SEGMENTS = (("consumer", 0.6), ("smb", 0.3), ("enterprise", 0.1))
REGIONS = ("north", "south", "east", "west")
CHANNELS = (
    ("phone", 0.35),
    ("email", 0.25),
    ("chat", 0.2),
    ("web", 0.12),
    ("social", 0.05),
    ("field", 0.03),
)
TOPICS = ("billing", "delivery", "login", "outage", "contract", "product", "refund", "setup")
ROLES = ("agent", "agent", "agent", "specialist", "lead")
RESOLUTIONS = ("fixed", "explained", "refund", "replacement", "workaround")


@dataclass(frozen=True)
class GeneratorConfig:
    """Size and shape of the generated history."""

    customers: int = 1000
    employees: int = 40
    months: int = 6
    seed: int = 1
    start: str = "2025-01"
    invalid_rate: float = 0.0
    #: Contracts, installed base and field visits (drawn apart: the rest is the same without them).
    service: bool = True


@dataclass
class _Employee:
    employee_id: str
    team_id: str
    skill: float
    left_at: int | None = None


@dataclass
class _Article:
    article_id: str
    author_id: str
    quality: float
    retired: bool = False




def last_month(start: str, months: int) -> str:
    """The last month (YYYY-MM) of a history of `months` months from `start` (YYYY-MM).

    Its year may be past 9999: the caller checks it as it checks any month (`parse_period`),
    since the history's end, the month after, must still be a date.
    """
    year, month = (int(p) for p in start.split("-"))
    index = year * 12 + month - 1 + months - 1
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _month_start(start: str, offset: int) -> int:
    year, month = (int(p) for p in start.split("-"))
    month += offset
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)


class HistoryGenerator:
    """Yields event dicts in the ingest format, in time order."""

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        # Corruption draws from its own stream, so the valid history is the same at any rate.
        self._bad_rng = random.Random(config.seed * 7919 + 1)
        self._pending_bad: dict[str, Any] | None = None
        self._seq = 0
        self._queue: list[Scheduled] = []
        self.start_ms = _month_start(config.start, 0)
        self.end_ms = _month_start(config.start, config.months)
        self.employees: list[_Employee] = []
        self.customers: list[str] = []
        self.forgotten: set[str] = set()
        self.articles: list[_Article] = []
        self.teams = [f"team-{i + 1:02d}" for i in range(max(1, math.ceil(config.employees / 8)))]
        # Contracts, installed base and field visits: their own random stream and queue, so
        # every other event is the same with or without them.
        self.service = ServiceSimulation(config.seed, self.start_ms, self.end_ms, self.employees)

    # -- helpers -------------------------------------------------------------------------
    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _pick(self, weighted: tuple[tuple[str, float], ...]) -> str:
        return pick(self.rng, weighted)

    def _event(self, event_type: str, at: int, **fields: Any) -> dict[str, Any]:
        return {
            "type": event_type,
            "event_id": self._uuid(),
            "occurred_at": format_timestamp(at),
            **fields,
        }

    def _schedule(self, at: int, action: str, **payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, Scheduled(at, self._seq, action, payload))

    def _active(self, at: int) -> list[_Employee]:
        return [e for e in self.employees if e.left_at is None or e.left_at > at]

    def _staff(self, at: int) -> _Employee:
        active = self._active(at)
        # Skilled staff take a little more of the work.
        return self.rng.choices(active, weights=[0.5 + e.skill for e in active])[0]

    def _still_active(self, employee_id: str, at: int) -> _Employee:
        for employee in self.employees:
            if employee.employee_id == employee_id:
                if employee.left_at is None or employee.left_at > at:
                    return employee
                break
        return self._staff(at)

    def _customer(self) -> str | None:
        for _ in range(5):
            customer = self.rng.choice(self.customers)
            if customer not in self.forgotten:
                return customer
        return None

    # -- the simulation ------------------------------------------------------------------
    def events(self) -> Iterator[dict[str, Any]]:
        """The whole history, in time order."""
        service = self.service
        observe = service.observe if self.config.service else _ignore
        for event in self._setup():
            observe(event)
            yield event
        day = self.start_ms
        while day < self.end_ms:
            self._plan_day(day)
            if self.config.service:
                service.plan_day(day)
            while True:
                # Two queues merged by time; on a tie the main simulation goes first.
                main = self._queue[0].at if self._queue and self._queue[0].at < day + DAY_MS else None
                side = service.next_at()
                side = side if side is not None and side < day + DAY_MS else None
                if main is None and side is None:
                    break
                if main is not None and (side is None or main <= side):
                    item = heapq.heappop(self._queue)
                    if item.at >= self.end_ms:
                        continue
                    for event in self._act(item):
                        observe(event)
                        yield event
                else:
                    yield from service.run_next()
            day += DAY_MS
        # Work still in progress at the end simply stays open.

    def _setup(self) -> Iterator[dict[str, Any]]:
        before = self.start_ms - 30 * DAY_MS
        for index in range(self.config.employees):
            employee = _Employee(
                f"emp-{index + 1:04d}",
                self.teams[index % len(self.teams)],
                min(0.98, max(0.05, self.rng.betavariate(4, 3))),
            )
            self.employees.append(employee)
            yield self._event(
                "EmployeeJoined",
                before + index * 60_000,
                employee_id=employee.employee_id,
                team_id=employee.team_id,
                role=self.rng.choice(ROLES),
                name=f"Employee {index + 1}",
            )
        initial = max(1, int(self.config.customers * 0.7))
        for index in range(self.config.customers):
            at = (
                before + HOUR_MS + index * 1000
                if index < initial
                else self.rng.randrange(self.start_ms, self.end_ms)
            )
            if index < initial:
                yield from self._register(index, at)
            else:
                self._schedule(at, "register", index=index)
        # A few people move team or leave during the period.
        for employee in self.employees:
            roll = self.rng.random()
            at = self.rng.randrange(self.start_ms, self.end_ms)
            if roll < 0.08 and len(self.teams) > 1:
                self._schedule(at, "move", employee_id=employee.employee_id)
            elif roll < 0.12 and len(self.employees) > 3:
                self._schedule(at, "leave", employee_id=employee.employee_id)

    def _register(self, index: int, at: int) -> Iterator[dict[str, Any]]:
        customer_id = f"cust-{index + 1:06d}"
        self.customers.append(customer_id)
        yield self._event(
            "CustomerRegistered",
            at,
            customer_id=customer_id,
            segment=self._pick(SEGMENTS),
            region=self.rng.choice(REGIONS),
            name=f"Customer {index + 1}",
            email=f"customer{index + 1}@example.com",
        )

    def _plan_day(self, day: int) -> None:
        count = len(self.customers)
        weekday = datetime.fromtimestamp(day / 1000, tz=UTC).weekday()
        load = 0.45 if weekday >= 5 else 1.0

        def times(per_customer_per_month: float) -> Iterator[int]:
            expected = count * per_customer_per_month / 30 * load
            n = int(expected) + (1 if self.rng.random() < expected % 1 else 0)
            for _ in range(n):
                yield day + 7 * HOUR_MS + self.rng.randrange(11 * HOUR_MS)

        for at in times(1.6):
            self._schedule(at, "interaction")
        for at in times(0.35):
            self._schedule(at, "open_case")
        for at in times(0.12):
            self._schedule(at, "relationship")
        for at in times(0.06):
            self._schedule(at, "share")
        for at in times(0.004):
            self._schedule(at, "details")
        for at in times(0.0008):
            self._schedule(at, "forget")

    def _act(self, item: Scheduled) -> Iterator[dict[str, Any]]:
        handler: Callable[[int, dict[str, Any]], Iterator[dict[str, Any]]] = getattr(
            self, f"_on_{item.action}"
        )
        for event in handler(item.at, item.payload):
            yield self._maybe_corrupt(event)

    def _on_register(self, at: int, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield from self._register(payload["index"], at)

    def _on_move(self, at: int, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        employee = next(e for e in self.employees if e.employee_id == payload["employee_id"])
        if employee.left_at is not None:
            return
        employee.team_id = self.rng.choice([t for t in self.teams if t != employee.team_id])
        yield self._event("EmployeeMovedTeam", at, employee_id=employee.employee_id, team_id=employee.team_id)

    def _on_leave(self, at: int, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        employee = next(e for e in self.employees if e.employee_id == payload["employee_id"])
        if len(self._active(at)) <= 3:
            return
        employee.left_at = at
        yield self._event("EmployeeLeft", at, employee_id=employee.employee_id, reason="resigned")

    def _on_details(self, at: int, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        customer = self._customer()
        if customer:
            yield self._event(
                "CustomerDetailsChanged", at, customer_id=customer, region=self.rng.choice(REGIONS)
            )

    def _on_forget(self, at: int, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        customer = self._customer()
        if customer and len(self.customers) > 10:
            self.forgotten.add(customer)
            yield self._event("CustomerForgotten", at, customer_id=customer, reason="erasure request")

    def _on_interaction(self, at: int, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        customer = self._customer()
        if customer is None:
            return
        employee = self._staff(at)
        event = self._event(
            "InteractionRecorded",
            at,
            customer_id=customer,
            employee_id=employee.employee_id,
            channel=self._pick(CHANNELS),
            direction="inbound" if self.rng.random() < 0.8 else "outbound",
            topic=self.rng.choice(TOPICS),
            duration_s=int(self.rng.expovariate(1 / 420)) + 20,
        )
        yield event
        if self.rng.random() < 0.08:
            csat = self._csat(employee.skill)
            self._schedule(
                at + self.rng.randrange(HOUR_MS, 3 * DAY_MS),
                "survey",
                customer_id=customer,
                interaction_id=event["event_id"],
                employee_id=employee.employee_id,
                csat=csat,
            )

    def _csat(self, quality: float) -> int:
        return max(1, min(5, round(self.rng.gauss(1.8 + 3.4 * quality, 0.9))))

    def _on_relationship(self, at: int, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        customer = self._customer()
        if customer is None:
            return
        employee = self._staff(at)
        yield self._event(
            "RelationshipAttemptMade",
            at,
            customer_id=customer,
            employee_id=employee.employee_id,
            channel=self._pick(CHANNELS),
            purpose=self.rng.choice(("check-in", "renewal", "feedback", "onboarding")),
        )

    def _on_share(self, at: int, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        employee = self._staff(at)
        kind = self.rng.choice(("colleague", "colleague", "customer", "partner"))
        usable = [a for a in self.articles[-200:] if not a.retired]
        article = self.rng.choice(usable).article_id if usable and self.rng.random() < 0.7 else None
        fields: dict[str, Any] = {
            "employee_id": employee.employee_id,
            "recipient_kind": kind,
            "article_id": article,
        }
        if kind == "customer":
            fields["customer_id"] = self._customer()
        elif kind == "colleague":
            fields["recipient_id"] = self._staff(at).employee_id
        else:
            fields["recipient_id"] = f"partner-{self.rng.randrange(1, 20):02d}"
        yield self._event("KnowledgeShared", at, **fields)

    def _on_open_case(self, at: int, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        customer = self._customer()
        if customer is None:
            return
        case_id = f"case-{self._uuid()[:13]}"
        kind = self._pick((("complaint", 0.35), ("incident", 0.35), ("request", 0.3)))
        yield self._event(
            "CaseOpened",
            at,
            case_id=case_id,
            customer_id=customer,
            kind=kind,
            severity=self._pick((("low", 0.5), ("medium", 0.35), ("high", 0.15))),
            channel=self._pick(CHANNELS),
            topic=self.rng.choice(TOPICS),
            summary=f"{kind} about {self.rng.choice(TOPICS)}",
        )
        owner = self._staff(at)
        self._schedule(
            at + self.rng.randrange(60_000, 4 * HOUR_MS),
            "accept",
            case_id=case_id,
            customer_id=customer,
            employee_id=owner.employee_id,
            opened_at=at,
            escalations=0,
        )

    def _on_accept(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        owner = self._still_active(p["employee_id"], at)
        yield self._event("CaseAccepted", at, case_id=p["case_id"], employee_id=owner.employee_id)
        self._work_on(at, {**p, "employee_id": owner.employee_id})

    def _work_on(self, at: int, p: dict[str, Any]) -> None:
        owner = self._still_active(p["employee_id"], at)
        if p["escalations"] < 2 and self.rng.random() < 0.22 * (1.2 - owner.skill):
            self._schedule(at + self.rng.randrange(HOUR_MS, 2 * DAY_MS), "escalate", **p)
            return
        hours = self.rng.lognormvariate(math.log(4 + 40 * (1 - owner.skill)), 0.9)
        self._schedule(at + int(hours * HOUR_MS) + 60_000, "resolve", **p)

    def _on_escalate(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        owner = self._still_active(p["employee_id"], at)
        target = max(
            self.rng.sample(self._active(at), k=min(3, len(self._active(at)))),
            key=lambda e: e.skill,
        )
        yield self._event(
            "CaseEscalated",
            at,
            case_id=p["case_id"],
            employee_id=owner.employee_id,
            level=p["escalations"] + 1,
            to_employee_id=target.employee_id,
            reason="needs expertise",
        )
        self._work_on(at, {**p, "employee_id": target.employee_id, "escalations": p["escalations"] + 1})

    def _on_resolve(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        resolver = self._still_active(p["employee_id"], at)
        linked: list[str] = []
        usable = [a for a in self.articles[-300:] if not a.retired]
        if usable and self.rng.random() < 0.15 + 0.35 * resolver.skill:
            article = self.rng.choices(usable, weights=[a.quality for a in usable])[0]
            linked.append(article.article_id)
            yield self._event(
                "ArticleLinked",
                at - 30_000,
                article_id=article.article_id,
                case_id=p["case_id"],
                employee_id=resolver.employee_id,
            )
        first_contact = p["escalations"] == 0 and self.rng.random() < 0.35 + 0.5 * resolver.skill
        yield self._event(
            "CaseResolved",
            at,
            case_id=p["case_id"],
            employee_id=resolver.employee_id,
            resolution_code=self.rng.choice(RESOLUTIONS),
            first_contact=first_contact,
            article_ids=linked,
        )
        if not linked and self.rng.random() < 0.06 + 0.12 * resolver.skill:
            self._schedule(
                at + self.rng.randrange(HOUR_MS, 3 * DAY_MS),
                "write_article",
                case_id=p["case_id"],
                employee_id=resolver.employee_id,
            )
        quality = resolver.skill * (0.9 if p["escalations"] else 1.0)
        if self.rng.random() < 0.3:
            self._schedule(
                at + self.rng.randrange(HOUR_MS, 4 * DAY_MS),
                "survey",
                customer_id=p["customer_id"],
                case_id=p["case_id"],
                employee_id=resolver.employee_id,
                csat=self._csat(quality),
            )
        if self.rng.random() < 0.02 + 0.05 * quality:
            self._schedule(
                at + self.rng.randrange(HOUR_MS, 5 * DAY_MS),
                "compliment",
                customer_id=p["customer_id"],
                employee_id=resolver.employee_id,
            )
        if self.rng.random() < 0.14 * (1.15 - resolver.skill):
            self._schedule(
                at + self.rng.randrange(DAY_MS, 10 * DAY_MS),
                "reopen",
                **{**p, "employee_id": resolver.employee_id},
            )
        else:
            self._schedule(
                at + self.rng.randrange(2 * DAY_MS, 8 * DAY_MS),
                "close",
                case_id=p["case_id"],
                employee_id=resolver.employee_id,
            )

    def _on_reopen(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield self._event("CaseReopened", at, case_id=p["case_id"], reason="problem came back")
        owner = self._still_active(p["employee_id"], at)
        self._schedule(
            at + self.rng.randrange(60_000, 6 * HOUR_MS),
            "accept",
            **{**p, "employee_id": owner.employee_id},
        )

    def _on_close(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        closer = self._still_active(p["employee_id"], at)
        yield self._event("CaseClosed", at, case_id=p["case_id"], employee_id=closer.employee_id)

    def _on_write_article(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        author = self._still_active(p["employee_id"], at)
        article = _Article(f"kb-{len(self.articles) + 1:05d}", author.employee_id, 0.2 + author.skill)
        self.articles.append(article)
        yield self._event(
            "ArticleCreated",
            at,
            article_id=article.article_id,
            employee_id=author.employee_id,
            title=f"How to handle {self.rng.choice(TOPICS)} issues",
            source_case_id=p["case_id"],
        )
        yield self._event(
            "ArticlePublished",
            at + 3_600_000,
            article_id=article.article_id,
            employee_id=author.employee_id,
        )
        if self.rng.random() < 0.2:
            self._schedule(
                at + self.rng.randrange(DAY_MS, 30 * DAY_MS),
                "improve",
                article_id=article.article_id,
            )
        if self.rng.random() < 0.05:
            self._schedule(
                at + self.rng.randrange(10 * DAY_MS, 60 * DAY_MS),
                "retire",
                article_id=article.article_id,
            )

    def _article(self, article_id: str) -> _Article:
        return next(a for a in reversed(self.articles) if a.article_id == article_id)

    def _on_improve(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if not self._article(p["article_id"]).retired:
            yield self._event(
                "ArticleImproved",
                at,
                article_id=p["article_id"],
                employee_id=self._staff(at).employee_id,
            )

    def _on_retire(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        article = self._article(p["article_id"])
        if not article.retired:
            article.retired = True
            yield self._event("ArticleFlagged", at - 60_000, article_id=article.article_id, reason="outdated")
            yield self._event("ArticleRetired", at, article_id=article.article_id)

    def _on_survey(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        csat = p.pop("csat")
        nps = max(0, min(10, round(csat * 2 + self.rng.gauss(0, 1.5))))
        fields = {k: v for k, v in p.items() if k != "employee_id"}
        yield self._event(
            "SurveyAnswered",
            at,
            **fields,
            csat=csat if self.rng.random() < 0.95 else None,
            nps=nps,
            ces=self.rng.randint(1, 7) if self.rng.random() < 0.5 else None,
        )

    def _on_compliment(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        employee = next(e for e in self.employees if e.employee_id == p["employee_id"])
        if employee.left_at is None or employee.left_at > at:
            yield self._event(
                "ComplimentReceived",
                at,
                customer_id=p["customer_id"],
                employee_id=employee.employee_id,
                channel=self._pick(CHANNELS),
                note="thank you!",
            )

    _CORRUPTIONS = ("csat", "channel", "occurred_at", "event_id", "employee", "missing")

    def _maybe_corrupt(self, event: dict[str, Any]) -> dict[str, Any]:
        if self.config.invalid_rate <= 0 or self._bad_rng.random() >= self.config.invalid_rate:
            return event
        # The corrupted copy gets a fresh id so that the valid original stays unaffected.
        bad = dict(event, event_id=str(uuid.UUID(int=self._bad_rng.getrandbits(128), version=4)))
        kind = self._bad_rng.choice(self._CORRUPTIONS)
        if kind == "csat":
            bad = {
                "type": "SurveyAnswered",
                "event_id": bad["event_id"],
                "occurred_at": event["occurred_at"],
                "customer_id": "cust-000001",
                "case_id": "case-none",
                "csat": 9,
            }
        elif kind == "channel":
            bad["channel"] = "pigeon"
        elif kind == "occurred_at":
            bad["occurred_at"] = "yesterday-ish"
        elif kind == "event_id":
            bad["event_id"] = "not-a-uuid"
        elif kind == "employee" and "employee_id" in bad:
            bad["employee_id"] = "emp-ghost"
        elif kind == "employee":
            bad["event_id"] = "not-a-uuid-either"
        else:
            bad.pop("occurred_at")
        self._pending_bad = bad
        return event

    def stream(self) -> Iterator[dict[str, Any]]:
        """Events plus, at the configured rate, deliberately invalid records after them."""
        self._pending_bad = None
        for event in self.events():
            yield event
            if self._pending_bad is not None:
                yield self._pending_bad
                self._pending_bad = None


def _ignore(event: dict[str, Any]) -> None:
    """Observes nothing (the service simulation is off)."""


def write_history(
    config: GeneratorConfig, out: IO[str], should_stop: Callable[[], bool] = lambda: False
) -> int:
    """Write the history as JSON lines; returns the number of records written.

    `should_stop` is asked between blocks of lines; when it answers yes the writing ends
    with KeyboardInterrupt (a Ctrl-C taken as a flag: raised by Python in the middle of a
    block, it could land in a finalizer, where Python drops it, and the run went on).
    """
    count = 0
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    generator = HistoryGenerator(config)
    buffer: list[str] = []
    for event in generator.stream():
        buffer.append(dumps({k: v for k, v in event.items() if v is not None}))
        count += 1
        if len(buffer) >= 4096:
            out.write("\n".join(buffer) + "\n")
            buffer.clear()
            if should_stop():
                raise KeyboardInterrupt
    if buffer:
        out.write("\n".join(buffer) + "\n")
    return count
