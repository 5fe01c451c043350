"""The write model's rules: lifecycles, references, and who was active when."""

from __future__ import annotations

from typing import Any

import pytest

from ledger.application import LedgerApplication
from ledger.records import RecordParser
from tests.factory import basics, rec


def record(
    app: LedgerApplication, parser: RecordParser, *raws: dict[str, Any]
) -> list[tuple[str, str | None]]:
    outcomes = app.record([parser.parse(r) for r in raws])
    return [(o.status, o.error.field if o.error else None) for o in outcomes]


@pytest.fixture
def ready(app: LedgerApplication, parser: RecordParser) -> LedgerApplication:
    assert {s for s, _ in record(app, parser, *basics())} == {"accepted"}
    return app


def _open(case_id: str = "k1", at: str = "2026-01-10T09:00:00Z") -> dict[str, Any]:
    return rec("CaseOpened", at, case_id=case_id, customer_id="c1", kind="complaint", channel="phone")


LEGAL = [
    ["CaseAccepted", "CaseResolved", "CaseClosed"],
    [
        "CaseAccepted",
        "CaseEscalated",
        "CaseEscalated",
        "CaseResolved",
        "CaseReopened",
        "CaseAccepted",
        "CaseResolved",
        "CaseClosed",
    ],
    ["CaseAccepted", "CaseResolved", "CaseReopened", "CaseResolved"],
    ["CaseAccepted", "CaseEscalated", "CaseAccepted", "CaseResolved"],
]
ILLEGAL = [
    (["CaseResolved"], "opened"),
    (["CaseClosed"], "opened"),
    (["CaseReopened"], "opened"),
    (["CaseEscalated"], "opened"),
    (["CaseAccepted", "CaseReopened"], "accepted"),
    (["CaseAccepted", "CaseClosed"], "accepted"),
    (["CaseAccepted", "CaseResolved", "CaseClosed", "CaseReopened"], "closed"),
    (["CaseAccepted", "CaseResolved", "CaseClosed", "CaseAccepted"], "closed"),
    (["CaseAccepted", "CaseResolved", "CaseEscalated"], "resolved"),
]
_FIELDS = {
    "CaseAccepted": {"employee_id": "e1"},
    "CaseEscalated": {"employee_id": "e1", "to_employee_id": "e3", "level": 1},
    "CaseResolved": {"employee_id": "e1", "resolution_code": "fixed", "first_contact": True},
    "CaseReopened": {"reason": "again"},
    "CaseClosed": {"employee_id": "e1"},
}


def _steps(steps: list[str]) -> list[dict[str, Any]]:
    return [
        rec(step, f"2026-01-10T1{i}:00:00Z", case_id="k1", **_FIELDS[step]) for i, step in enumerate(steps)
    ]


@pytest.mark.parametrize("steps", LEGAL)
def test_legal_lifecycles(ready: LedgerApplication, parser: RecordParser, steps: list[str]) -> None:
    assert record(ready, parser, _open(), *_steps(steps)) == [("accepted", None)] * (len(steps) + 1)


@pytest.mark.parametrize(("steps", "state"), ILLEGAL)
def test_illegal_transitions_are_errors_not_events(
    ready: LedgerApplication, parser: RecordParser, steps: list[str], state: str
) -> None:
    before = ready.max_position()
    outcomes = ready.record([parser.parse(r) for r in [_open(), *_steps(steps)]])
    assert [o.status for o in outcomes[:-1]] == ["accepted"] * len(steps)
    last = outcomes[-1]
    assert last.status == "rejected"
    assert last.error is not None and last.error.field == "case_id"
    assert f"is {state}" in last.error.reason
    assert ready.max_position() == before + len(steps)


def test_unknown_references_are_rejected(ready: LedgerApplication, parser: RecordParser) -> None:
    result = record(
        ready,
        parser,
        rec(
            "InteractionRecorded",
            customer_id="nobody",
            employee_id="e1",
            channel="chat",
            direction="inbound",
        ),
        rec(
            "InteractionRecorded",
            customer_id="c1",
            employee_id="ghost",
            channel="chat",
            direction="inbound",
        ),
        rec("CaseAccepted", case_id="missing", employee_id="e1"),
        rec("ArticleLinked", article_id="nope", case_id="k1", employee_id="e1"),
        rec(
            "SurveyAnswered",
            customer_id="c1",
            interaction_id="00000000-0000-4000-8000-000000000000",
            csat=4,
        ),
        rec("SurveyAnswered", customer_id="c1", csat=4),
    )
    assert result == [
        ("rejected", "customer_id"),
        ("rejected", "employee_id"),
        ("rejected", "case_id"),
        ("rejected", "case_id"),
        ("rejected", "interaction_id"),
        ("rejected", "case_id"),
    ]


def test_employee_must_be_active_at_the_time(ready: LedgerApplication, parser: RecordParser) -> None:
    left = rec("EmployeeLeft", "2026-02-01T00:00:00Z", employee_id="e2")
    before_join = rec(
        "RelationshipAttemptMade",
        "2025-12-01T00:00:00Z",
        customer_id="c1",
        employee_id="e1",
        channel="phone",
    )
    while_active = rec(
        "RelationshipAttemptMade",
        "2026-01-15T00:00:00Z",
        customer_id="c1",
        employee_id="e2",
        channel="phone",
    )
    after_leaving = rec(
        "RelationshipAttemptMade",
        "2026-02-15T00:00:00Z",
        customer_id="c1",
        employee_id="e2",
        channel="phone",
    )
    compliment_later = rec(
        "ComplimentReceived",
        "2026-02-20T00:00:00Z",
        customer_id="c1",
        employee_id="e2",
        channel="email",
    )
    assert record(ready, parser, left, before_join, while_active, after_leaving, compliment_later) == [
        ("accepted", None),
        ("rejected", "employee_id"),
        ("accepted", None),
        ("rejected", "employee_id"),
        ("accepted", None),
    ]


def test_case_steps_cannot_precede_opening(ready: LedgerApplication, parser: RecordParser) -> None:
    early = rec("CaseAccepted", "2026-01-09T00:00:00Z", case_id="k1", employee_id="e1")
    assert record(ready, parser, _open(), early) == [
        ("accepted", None),
        ("rejected", "occurred_at"),
    ]


def test_retired_article_cannot_be_linked(ready: LedgerApplication, parser: RecordParser) -> None:
    result = record(
        ready,
        parser,
        _open(),
        rec("ArticleCreated", article_id="a1", employee_id="e1", title="How to"),
        rec("ArticleLinked", "2026-01-11T00:00:00Z", article_id="a1", case_id="k1", employee_id="e2"),
        rec("ArticleRetired", "2026-01-12T00:00:00Z", article_id="a1"),
        rec("ArticleLinked", "2026-01-13T00:00:00Z", article_id="a1", case_id="k1", employee_id="e3"),
        rec("ArticleImproved", "2026-01-13T00:00:00Z", article_id="a1", employee_id="e3"),
    )
    assert result[:4] == [("accepted", None)] * 4
    assert result[4:] == [("rejected", "article_id"), ("rejected", "article_id")]


def test_ledger_fills_in_what_it_knows(ready: LedgerApplication, parser: RecordParser) -> None:
    record(
        ready,
        parser,
        _open(),
        *_steps(["CaseAccepted", "CaseResolved"]),
        rec("ArticleCreated", article_id="a1", employee_id="e3", title="How to"),
        rec("ArticleLinked", "2026-01-12T00:00:00Z", article_id="a1", case_id="k1", employee_id="e1"),
        rec("SurveyAnswered", "2026-01-12T00:00:00Z", customer_id="c1", case_id="k1", csat=5),
    )
    decoded = [ready.codec.decode(n.state) for n in ready.read_notifications(1, 100)]
    by_type = dict(decoded)
    assert by_type["CaseResolved"]["customer_id"] == "c1"
    assert by_type["ArticleLinked"]["author_id"] == "e3"
    assert by_type["SurveyAnswered"]["employee_id"] == "e1"


def test_duplicates_in_one_batch_land_once(ready: LedgerApplication, parser: RecordParser) -> None:
    interaction = rec(
        "InteractionRecorded",
        customer_id="c1",
        employee_id="e1",
        channel="chat",
        direction="inbound",
    )
    opening = _open()
    assert record(ready, parser, interaction, dict(interaction), opening, dict(opening)) == [
        ("accepted", None),
        ("duplicate", None),
        ("accepted", None),
        ("duplicate", None),
    ]


def test_survey_needs_a_score(ready: LedgerApplication, parser: RecordParser) -> None:
    assert record(ready, parser, _open(), rec("SurveyAnswered", customer_id="c1", case_id="k1")) == [
        ("accepted", None),
        ("rejected", "csat"),
    ]


def test_aggregates_survive_a_restart(settings: Any, parser: RecordParser) -> None:
    first = LedgerApplication(settings.eventsourcing_env())
    record(first, parser, *basics(), _open(), *_steps(["CaseAccepted"]))
    first.close()
    second = LedgerApplication(settings.eventsourcing_env())
    assert record(second, parser, *_steps(["CaseReopened"])) == [("rejected", "case_id")]
    assert record(second, parser, *_steps(["CaseAccepted", "CaseResolved"])[1:]) == [("accepted", None)]
