"""The service side of the generated history: contracts, installed base and field visits.

It runs beside `HistoryGenerator`'s simulation and draws from its own random stream and its
own queue, so the rest of the history is byte-identical with or without it: it only
*observes* the events the main simulation emits (registrations, cases, surveys) and reads
the employees' skills, never changes them.

- Most business customers (and some consumers) hold a contract with a plan, an annual value
  and response-time SLAs; terms run a year, so many come up for renewal during the history.
  Customers with complaints and low satisfaction churn more often; some upgrade instead.
- Contract holders have products installed at a site; products are added and removed now
  and then, and removed when the customer churns.
- Incidents and complaints about products at a customer with installed products often need
  a field visit. The engineer's skill drives arriving within the promised window and fixing
  the problem at the first visit; an unfixed problem gets a second visit.
"""

from __future__ import annotations

import heapq
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from importers.scheduling import Scheduled, pick
from ledger.records import format_timestamp

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
#: plan -> (typical annual value, SLA hours for critical, high, medium, low)
PLANS: dict[str, tuple[float, tuple[int, int, int, int]]] = {
    "basic": (240.0, (48, 72, 120, 168)),
    "standard": (2_400.0, (24, 48, 72, 120)),
    "premium": (24_000.0, (8, 24, 48, 72)),
}
PLAN_BY_SEGMENT: dict[str, tuple[tuple[str, float], ...]] = {
    "consumer": (("basic", 0.9), ("standard", 0.1)),
    "smb": (("basic", 0.3), ("standard", 0.6), ("premium", 0.1)),
    "enterprise": (("standard", 0.4), ("premium", 0.6)),
}
CONTRACT_RATE = {"consumer": 0.25, "smb": 0.7, "enterprise": 0.95}
PRODUCTS = ("boiler", "heat-pump", "router", "printer", "meter", "solar-inverter", "controller")
PARTS = ("fuse", "valve", "board", "sensor", "cable", "filter", "pump")
FIELD_TOPICS = frozenset({"outage", "product", "setup", "delivery"})


class StaffMember(Protocol):
    """What the simulation reads of an employee."""

    employee_id: str
    skill: float
    left_at: int | None


@dataclass
class _Customer:
    customer_id: str
    segment: str
    sites: list[str] = field(default_factory=list)
    products: dict[str, tuple[str, str]] = field(default_factory=dict)  # serial -> (site, product)
    contract_id: str | None = None
    plan: str = ""
    value: float = 0.0
    ends_on: int = 0
    contracts: int = 0
    complaints: int = 0
    csat: list[int] = field(default_factory=list)




def add_months(epoch_ms: int, months: int) -> int:
    """The same day and time `months` later (clamped to the month's last day)."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    month = moment.month - 1 + months
    year, month = moment.year + month // 12, month % 12 + 1
    day = min(moment.day, 28)
    return int(moment.replace(year=year, month=month, day=day).timestamp() * 1000)


def _midnight(epoch_ms: int) -> int:
    return epoch_ms - epoch_ms % DAY_MS


class ServiceSimulation:
    """Contracts, installations and visits, from their own random stream and queue."""

    def __init__(self, seed: int, start_ms: int, end_ms: int, employees: Sequence[StaffMember]) -> None:
        self.rng = random.Random(seed * 104_729 + 17)
        self.start_ms = start_ms
        self.end_ms = end_ms
        self._employees = employees
        self._queue: list[Scheduled] = []
        self._seq = 0
        self.customers: dict[str, _Customer] = {}
        self._cases: dict[str, str] = {}  # open case -> customer
        self._resolved: dict[str, str] = {}  # resolved, not yet closed case -> customer
        self._forgotten: set[str] = set()
        self._registered = 0
        self._visits = 0

    # -- plumbing ----------------------------------------------------------------------------
    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _event(self, event_type: str, at: int, **fields: Any) -> dict[str, Any]:
        return {"type": event_type, "event_id": self._uuid(), "occurred_at": format_timestamp(at), **fields}

    def _schedule(self, at: int, action: str, **payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, Scheduled(at, self._seq, action, payload))

    def next_at(self) -> int | None:
        """When the next scheduled action is due (None when nothing is scheduled)."""
        return self._queue[0].at if self._queue else None

    def run_next(self) -> Iterator[dict[str, Any]]:
        """Perform the next scheduled action; the events it produces, in order."""
        item = heapq.heappop(self._queue)
        if item.at >= self.end_ms:
            return iter(())
        return getattr(self, f"_on_{item.action}")(item.at, item.payload)  # type: ignore[no-any-return]

    def _pick(self, weighted: tuple[tuple[str, float], ...]) -> str:
        return pick(self.rng, weighted)

    def _engineer(self, at: int, until: int | None = None) -> StaffMember | None:
        """A field engineer (every third employee) active at `at` (and still at `until`)."""
        last = at if until is None else until
        team = [
            e for i, e in enumerate(self._employees) if i % 3 == 2 and (e.left_at is None or e.left_at > last)
        ]
        if not team:
            return None
        return self.rng.choices(team, weights=[0.5 + e.skill for e in team])[0]

    @staticmethod
    def _active(employee: StaffMember, at: int) -> bool:
        return employee.left_at is None or employee.left_at > at

    # -- what the main simulation did ------------------------------------------------------
    def observe(self, event: dict[str, Any]) -> None:
        """Learn from one event of the main history (never changes it)."""
        kind = event["type"]
        if kind == "CustomerRegistered":
            self._on_registered(event)
        elif kind == "CustomerForgotten":
            self._forgotten.add(event["customer_id"])
        elif kind == "CaseOpened":
            self._on_case_opened(event)
        elif kind == "CaseResolved":
            customer_id = self._cases.pop(event["case_id"], None)
            if customer_id is not None:
                self._resolved[event["case_id"]] = customer_id
        elif kind == "CaseClosed":
            self._resolved.pop(event["case_id"], None)
        elif kind == "CaseReopened":
            # Case steps name only the case: its customer is remembered from the opening.
            customer_id = self._resolved.pop(event["case_id"], None)
            if customer_id is not None:
                self._cases[event["case_id"]] = customer_id
        elif kind == "SurveyAnswered" and event.get("csat") is not None:
            customer = self.customers.get(event["customer_id"])
            if customer is not None:
                customer.csat.append(event["csat"])

    def _on_registered(self, event: dict[str, Any]) -> None:
        customer = _Customer(event["customer_id"], event["segment"])
        self.customers[customer.customer_id] = customer
        index = self._registered
        self._registered += 1
        at = _ms(event["occurred_at"])
        if self.rng.random() < CONTRACT_RATE.get(customer.segment, 0.25):
            if at < self.start_ms:
                # Customers from before the history: their contracts began up to a year ago.
                signed = self.start_ms - 2 * DAY_MS + index * 10
                starts_on = _midnight(self.start_ms - self.rng.randrange(DAY_MS, 364 * DAY_MS))
            else:
                signed = at + self.rng.randrange(HOUR_MS, 5 * DAY_MS)
                starts_on = _midnight(signed + DAY_MS)
            self._schedule(signed, "start_contract", customer_id=customer.customer_id, starts_on=starts_on)
        elif self.rng.random() < 0.1:
            at = max(at, self.start_ms - DAY_MS + index * 10) + self.rng.randrange(HOUR_MS, 20 * DAY_MS)
            self._schedule(at, "install", customer_id=customer.customer_id, count=1)

    def _on_case_opened(self, event: dict[str, Any]) -> None:
        customer = self.customers.get(event["customer_id"])
        if customer is None:
            return
        self._cases[event["case_id"]] = customer.customer_id
        if event["kind"] == "complaint":
            customer.complaints += 1
        wants_visit = event["kind"] != "request" and event.get("topic") in FIELD_TOPICS
        if wants_visit and customer.products and self.rng.random() < 0.6:
            at = _ms(event["occurred_at"]) + self.rng.randrange(30 * 60_000, 6 * HOUR_MS)
            self._schedule(at, "schedule_visit", case_id=event["case_id"], customer_id=customer.customer_id)

    # -- contracts ----------------------------------------------------------------------------
    def _on_start_contract(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        customer = self.customers[p["customer_id"]]
        if customer.customer_id in self._forgotten or customer.contract_id is not None:
            return
        plan = p.get("plan") or self._pick(PLAN_BY_SEGMENT.get(customer.segment, PLAN_BY_SEGMENT["consumer"]))
        typical, sla = PLANS[plan]
        customer.contracts += 1
        customer.contract_id = f"ctr-{customer.customer_id.removeprefix('cust-')}-{customer.contracts}"
        customer.plan = plan
        customer.value = round(typical * self.rng.lognormvariate(0, 0.35), 2)
        years = 1 if customer.segment != "enterprise" or self.rng.random() < 0.6 else 2
        customer.ends_on = add_months(p["starts_on"], 12 * years)
        engineer = self._engineer(at)
        yield self._event(
            "ContractStarted",
            at,
            contract_id=customer.contract_id,
            customer_id=customer.customer_id,
            plan=plan,
            product=None,
            annual_value=customer.value,
            currency="EUR",
            starts_on=format_timestamp(p["starts_on"]),
            ends_on=format_timestamp(customer.ends_on),
            sla_hours_critical=sla[0],
            sla_hours_high=sla[1],
            sla_hours_medium=sla[2],
            sla_hours_low=sla[3],
        )
        self._plan_renewal(customer, at)
        if not customer.products and engineer is not None:
            self._schedule(
                at + self.rng.randrange(HOUR_MS, 3 * DAY_MS),
                "install",
                customer_id=customer.customer_id,
                count=1 + int(self.rng.random() * (3 if plan == "premium" else 2)),
            )

    def _plan_renewal(self, customer: _Customer, at: int) -> None:
        decide = max(at + HOUR_MS, customer.ends_on - self.rng.randrange(DAY_MS, 45 * DAY_MS))
        if decide < self.end_ms:
            self._schedule(
                decide, "renewal", customer_id=customer.customer_id, contract_id=customer.contract_id
            )

    def _on_renewal(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        customer = self.customers[p["customer_id"]]
        if customer.contract_id != p["contract_id"]:
            return
        unhappy = bool(customer.csat) and sum(customer.csat) / len(customer.csat) < 3.0
        churn = 0.06 + 0.05 * min(customer.complaints, 4) + (0.2 if unhappy else 0.0)
        if customer.customer_id in self._forgotten:
            churn = 1.0
        customer.complaints = 0
        customer.csat.clear()
        roll = self.rng.random()
        if roll < churn:
            # The customer lets it run out: it ends at its end date.
            self._schedule(
                max(at + HOUR_MS, customer.ends_on),
                "end_contract",
                customer_id=customer.customer_id,
                contract_id=customer.contract_id,
                reason="churned",
            )
        elif roll < churn + 0.05 and customer.plan != "premium":
            # An upgrade: the contract is replaced by one on a better plan.
            upgrade = "standard" if customer.plan == "basic" else "premium"
            self._schedule(
                at,
                "end_contract",
                customer_id=customer.customer_id,
                contract_id=customer.contract_id,
                reason="replaced",
                upgrade=upgrade,
            )
        else:
            customer.ends_on = add_months(customer.ends_on, 12)
            customer.value = round(customer.value * self.rng.uniform(1.0, 1.08), 2)
            yield self._event(
                "ContractRenewed",
                at,
                contract_id=customer.contract_id,
                customer_id=customer.customer_id,
                ends_on=format_timestamp(customer.ends_on),
                annual_value=customer.value,
            )
            self._plan_renewal(customer, at)

    def _on_end_contract(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        customer = self.customers[p["customer_id"]]
        if customer.contract_id != p["contract_id"]:
            return
        customer.contract_id = None
        upgrade = p.get("upgrade")
        replaced_by = None
        if upgrade:
            replaced_by = f"ctr-{customer.customer_id.removeprefix('cust-')}-{customer.contracts + 1}"
        yield self._event(
            "ContractEnded",
            at,
            contract_id=p["contract_id"],
            customer_id=customer.customer_id,
            reason=p["reason"],
            replaced_by=replaced_by,
        )
        if upgrade:
            yield from self._on_start_contract(
                at + 60_000,
                {"customer_id": customer.customer_id, "plan": upgrade, "starts_on": _midnight(at + DAY_MS)},
            )
        elif customer.products:
            self._schedule(
                at + self.rng.randrange(DAY_MS, 20 * DAY_MS), "remove_all", customer_id=customer.customer_id
            )

    # -- installed base -------------------------------------------------------------------
    def _on_install(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        customer = self.customers[p["customer_id"]]
        engineer = self._engineer(at)
        if engineer is None or customer.customer_id in self._forgotten:
            return
        if not customer.sites or (customer.segment == "enterprise" and self.rng.random() < 0.2):
            customer.sites.append(
                f"site-{customer.customer_id.removeprefix('cust-')}-{len(customer.sites) + 1}"
            )
        for n in range(p["count"]):
            site = self.rng.choice(customer.sites)
            serial = f"SN-{self._uuid()[:8].upper()}"
            product = self.rng.choice(PRODUCTS)
            customer.products[serial] = (site, product)
            yield self._event(
                "ProductInstalled",
                at + n * 60_000,
                site_id=site,
                customer_id=customer.customer_id,
                product=product,
                serial=serial,
                employee_id=engineer.employee_id,
            )

    def _on_remove_all(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        customer = self.customers[p["customer_id"]]
        if customer.contract_id is not None:
            return  # came back in the meantime
        for n, (serial, (site, _)) in enumerate(sorted(customer.products.items())):
            yield self._event(
                "ProductRemoved",
                at + n * 60_000,
                site_id=site,
                serial=serial,
                customer_id=customer.customer_id,
                reason="contract ended",
            )
        customer.products.clear()

    def plan_day(self, day: int) -> None:
        """Everyday changes to the installed base (new products, replacements)."""
        holders = [c for c in self.customers.values() if c.contract_id is not None and c.products]
        expected = len(holders) * 0.02 / 30
        count = int(expected) + (1 if self.rng.random() < expected % 1 else 0)
        for _ in range(count):
            customer = self.rng.choice(holders)
            at = day + 8 * HOUR_MS + self.rng.randrange(9 * HOUR_MS)
            if self.rng.random() < 0.3:
                self._schedule(at, "replace", customer_id=customer.customer_id)
            else:
                self._schedule(at, "install", customer_id=customer.customer_id, count=1)

    def _on_replace(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        customer = self.customers[p["customer_id"]]
        if not customer.products or customer.customer_id in self._forgotten:
            return
        serial = self.rng.choice(sorted(customer.products))
        site, _ = customer.products.pop(serial)
        yield self._event(
            "ProductRemoved",
            at,
            site_id=site,
            serial=serial,
            customer_id=customer.customer_id,
            reason="replaced",
        )
        yield from self._on_install(at + 60_000, {"customer_id": customer.customer_id, "count": 1})

    # -- field visits ---------------------------------------------------------------------
    def _on_schedule_visit(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        customer = self.customers[p["customer_id"]]
        if self._cases.get(p["case_id"]) != customer.customer_id or not customer.products:
            return  # resolved or closed meanwhile: no visit needed
        window_start = _hour(at + self.rng.randrange(3 * HOUR_MS, 48 * HOUR_MS))
        window_end = window_start + 4 * HOUR_MS
        engineer = self._engineer(at, until=window_end + 12 * HOUR_MS)
        if engineer is None:
            return
        self._visits += 1
        visit_id = f"visit-{self._visits:07d}"
        site, _ = self.rng.choice(sorted(customer.products.values()))
        yield self._event(
            "FieldVisitScheduled",
            at,
            visit_id=visit_id,
            case_id=p["case_id"],
            customer_id=customer.customer_id,
            employee_id=engineer.employee_id,
            site_id=site,
            window_start=format_timestamp(window_start),
            window_end=format_timestamp(window_end),
        )
        if self.rng.random() < 0.07:
            cancel_at = at + self.rng.randrange(HOUR_MS, max(2 * HOUR_MS, window_start - at))
            self._schedule(cancel_at, "cancel_visit", visit_id=visit_id, customer_id=customer.customer_id)
            return
        skill = engineer.skill
        if self.rng.random() < 0.55 + 0.4 * skill:
            arrived = window_start + self.rng.randrange(0, 4 * HOUR_MS)
        else:
            arrived = window_end + 60_000 + int(self.rng.expovariate(1 / (2 * HOUR_MS)))
        fixed = self.rng.random() < 0.35 + 0.55 * skill
        done = arrived + self.rng.randrange(30 * 60_000, 3 * HOUR_MS)
        self._schedule(
            done,
            "complete_visit",
            visit_id=visit_id,
            case_id=p["case_id"],
            customer_id=customer.customer_id,
            employee_id=engineer.employee_id,
            arrived=arrived,
            fixed=fixed,
        )

    def _on_complete_visit(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        engineer = next(e for e in self._employees if e.employee_id == p["employee_id"])
        if not self._active(engineer, at):
            yield from self._on_cancel_visit(at, {**p, "reason": "engineer unavailable"})
            return
        parts = sorted(self.rng.sample(PARTS, k=self.rng.choice((0, 0, 1, 1, 2))))
        yield self._event(
            "FieldVisitCompleted",
            at,
            visit_id=p["visit_id"],
            customer_id=p["customer_id"],
            arrived_at=format_timestamp(p["arrived"]),
            fixed=p["fixed"],
            parts_used=parts,
        )
        if not p["fixed"]:
            self._schedule(
                at + self.rng.randrange(HOUR_MS, DAY_MS),
                "schedule_visit",
                case_id=p["case_id"],
                customer_id=p["customer_id"],
            )

    def _on_cancel_visit(self, at: int, p: dict[str, Any]) -> Iterator[dict[str, Any]]:
        reason = p.get("reason") or self.rng.choice(
            ("customer not available", "solved remotely", "rescheduled")
        )
        yield self._event(
            "FieldVisitCancelled", at, visit_id=p["visit_id"], customer_id=p["customer_id"], reason=reason
        )


def _ms(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(moment.timestamp() * 1000)


def _hour(epoch_ms: int) -> int:
    return epoch_ms - epoch_ms % HOUR_MS
