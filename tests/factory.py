"""Builders of raw records for tests: small, explicit, deterministic."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

_counter = itertools.count(1)


def eid() -> str:
    return str(uuid.UUID(int=next(_counter) + 10**20, version=4))


def rec(event_type: str, at: str = "2026-01-10T10:00:00Z", **fields: Any) -> dict[str, Any]:
    return {"type": event_type, "event_id": eid(), "occurred_at": at, **fields}


def basics(at: str = "2026-01-01T00:00:00Z") -> list[dict[str, Any]]:
    """Two teams, three employees, two customers."""
    return [
        rec("EmployeeJoined", at, employee_id="e1", team_id="t1", role="agent"),
        rec("EmployeeJoined", at, employee_id="e2", team_id="t1", role="agent"),
        rec("EmployeeJoined", at, employee_id="e3", team_id="t2", role="lead"),
        rec("CustomerRegistered", at, customer_id="c1", segment="smb", region="north"),
        rec("CustomerRegistered", at, customer_id="c2", segment="consumer", region="south"),
    ]


def chat(at: str = "2026-01-10T10:00:00Z", **fields: Any) -> dict[str, Any]:
    """An inbound chat of customer c1 handled by e1 (of `basics`), with `fields` changed or added."""
    return rec(
        "InteractionRecorded", at, customer_id="c1", employee_id="e1", channel="chat", direction="inbound", **fields
    )
