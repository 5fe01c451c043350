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
