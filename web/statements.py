"""The reward statement page, rebuilt from the audit mirror and drawn by the statement view.

`crm-ledger statement` reads the ledger store; the web pages never open the store, so the
same `Statement` is assembled here from the statement and adjustment facts as mirrored in
`ledger_events`, and rendered with `Statement.to_html()`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ledger.records import epoch_ms, format_timestamp
from rewards.statement import Statement
from web.errors import NotFoundError


def _payload(row: dict[str, Any]) -> dict[str, Any]:
    value = row["payload"]
    return dict(json.loads(value) if isinstance(value, str) else value)


def _millis(moment: Any) -> int:
    return epoch_ms(moment) if isinstance(moment, datetime) else int(moment)


def statement_from_events(events: Sequence[dict[str, Any]], employee_id: str, period: str) -> Statement:
    """The statement of `employee_id` for `period`, the team comparison and adjustments since."""
    statements = [(row, _payload(row)) for row in events if row["event_type"] == "RewardStatementIssued"]
    mine = next(((row, p) for row, p in statements if p["employee_id"] == employee_id), None)
    if mine is None:
        raise NotFoundError(f"no statement for employee {employee_id!r} in {period}")
    _row, payload = mine
    details = json.loads(payload["components"])
    team_id = details.get("team_id")
    team_scores = sorted(
        (float(p["score"]) for _, p in statements if json.loads(p["components"]).get("team_id") == team_id),
        reverse=True,
    )
    team = {
        "members": len(team_scores),
        "average": sum(team_scores) / len(team_scores) if team_scores else None,
        "rank": team_scores.index(float(payload["score"])) + 1 if team_scores else None,
    }
    adjustments = []
    for event in events:
        if event["event_type"] != "RewardAdjustmentIssued":
            continue
        p = _payload(event)
        if p["employee_id"] == employee_id:
            adjustments.append(
                {
                    "issued_at": format_timestamp(_millis(p["occurred_at"])),
                    "old_score": p["old_score"],
                    "new_score": p["new_score"],
                    "delta": p["delta"],
                    "old_version": p["old_version"],
                    "new_version": p["new_version"],
                    "reason": p["reason"],
                }
            )
    return Statement(
        employee_id,
        period,
        float(payload["score"]),
        format_timestamp(_millis(payload["occurred_at"])),
        payload["version"],
        payload["spec_name"],
        team_id,
        details.get("components", []),
        details.get("kpis", []),
        team,
        adjustments,
    )
