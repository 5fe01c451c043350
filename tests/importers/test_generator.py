"""The generator: deterministic, realistic enough, and with invalid records on request."""

from __future__ import annotations

import io
import json
from collections import Counter

from importers.generator import GeneratorConfig, write_history


def _generate(**kwargs: object) -> str:
    buffer = io.StringIO()
    write_history(GeneratorConfig(**kwargs), buffer)  # type: ignore[arg-type]
    return buffer.getvalue()


def test_same_seed_same_bytes() -> None:
    assert _generate(customers=150, employees=12, months=2, seed=5) == _generate(
        customers=150, employees=12, months=2, seed=5
    )
    assert _generate(customers=150, employees=12, months=2, seed=5) != _generate(
        customers=150, employees=12, months=2, seed=6
    )


def test_history_has_every_kind_of_fact() -> None:
    types = Counter(
        json.loads(line)["type"]
        for line in _generate(customers=600, employees=20, months=3, seed=2).splitlines()
    )
    for expected in (
        "CustomerRegistered",
        "EmployeeJoined",
        "InteractionRecorded",
        "CaseOpened",
        "CaseAccepted",
        "CaseEscalated",
        "CaseResolved",
        "CaseReopened",
        "CaseClosed",
        "SurveyAnswered",
        "ArticleCreated",
        "ArticleLinked",
        "KnowledgeShared",
        "RelationshipAttemptMade",
        "ComplimentReceived",
    ):
        assert types[expected] > 0, expected


def test_invalid_rate_adds_invalid_records() -> None:
    clean = _generate(customers=200, employees=10, months=1, seed=9).splitlines()
    dirty = _generate(customers=200, employees=10, months=1, seed=9, invalid_rate=0.05).splitlines()
    assert len(dirty) > len(clean)
    # The valid history is the same; the invalid records come in addition.
    assert [line for line in dirty if line in set(clean)] == clean


SERVICE_TYPES = frozenset(
    {
        "ContractStarted",
        "ContractRenewed",
        "ContractEnded",
        "ProductInstalled",
        "ProductRemoved",
        "FieldVisitScheduled",
        "FieldVisitCompleted",
        "FieldVisitCancelled",
    }
)


def test_service_events_leave_the_rest_of_the_history_unchanged() -> None:
    for kwargs in (
        {"customers": 300, "employees": 16, "months": 4, "seed": 7},
        {"customers": 200, "employees": 10, "months": 2, "seed": 9, "invalid_rate": 0.05},
    ):
        without = _generate(**kwargs, service=False).splitlines()
        full = _generate(**kwargs).splitlines()
        assert [line for line in full if json.loads(line).get("type") not in SERVICE_TYPES] == without
        assert len(full) > len(without)


def test_history_has_contracts_installs_and_visits() -> None:
    events = [
        json.loads(line) for line in _generate(customers=800, employees=24, months=6, seed=4).splitlines()
    ]
    types = Counter(e["type"] for e in events)
    for expected in sorted(SERVICE_TYPES):
        assert types[expected] > 0, expected
    reasons = Counter(e["reason"] for e in events if e["type"] == "ContractEnded")
    assert reasons["churned"] > 0


def test_skill_drives_on_time_arrival_and_first_time_fix() -> None:
    config = {"customers": 3000, "employees": 40, "months": 6, "seed": 12}
    events = [json.loads(line) for line in _generate(**config).splitlines()]
    skills = _skills(**config)
    median = sorted(skills.values())[len(skills) // 2]
    scheduled = {e["visit_id"]: e for e in events if e["type"] == "FieldVisitScheduled"}
    outcomes: dict[bool, list[tuple[bool, bool]]] = {True: [], False: []}
    for e in events:
        if e["type"] == "FieldVisitCompleted":
            visit = scheduled[e["visit_id"]]
            skilled = skills[visit["employee_id"]] >= median
            outcomes[skilled].append((e["arrived_at"] <= visit["window_end"], e["fixed"]))
    on_time = {k: sum(o for o, _ in rows) / len(rows) for k, rows in outcomes.items()}
    fixed = {k: sum(f for _, f in rows) / len(rows) for k, rows in outcomes.items()}
    assert on_time[True] > on_time[False]
    assert fixed[True] > fixed[False]


def _skills(**kwargs: object) -> dict[str, float]:
    from importers.generator import HistoryGenerator

    generator = HistoryGenerator(GeneratorConfig(**kwargs))  # type: ignore[arg-type]
    for _ in generator.events():
        pass
    return {e.employee_id: e.skill for e in generator.employees}


def test_the_last_month_and_the_size_limits_keep_the_history_in_time_order() -> None:
    from importers.generator import last_month
    from importers.sizes import MAX_EMPLOYEES

    assert last_month("2025-01", 1) == "2025-01" and last_month("2025-11", 3) == "2026-01"
    assert last_month("2025-01", 100_000) == "10358-04"  # past 9999: the caller refuses it
    # The last of the most employees still joins before the history's first day.
    lines = _generate(customers=1, employees=MAX_EMPLOYEES, months=1, seed=1).splitlines()
    joined = [json.loads(line)["occurred_at"] for line in lines if '"EmployeeJoined"' in line]
    assert len(joined) == MAX_EMPLOYEES and max(joined) < "2025-01-01"
