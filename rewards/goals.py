"""`crm-ledger goal set|revise|close|list`: team goals recorded as ledger facts.

A goal is set once by agreement (the ids of the team members who agreed), gauged every
month by the read model `team_goal_progress`, revised by agreement while it runs, and
closed with its outcome. Set and close have event ids derived from the goal id, so running
the same command twice records the fact once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from crm_ledger.errors import CrmLedgerError
from crm_ledger.settings import Settings
from ledger.application import LedgerApplication
from ledger.connect import open_ledger
from ledger.errors import ConflictError
from ledger.records import RecordParser, epoch_ms, format_timestamp
from projections.readonly import reader
from projections.spec import DEFAULT_SPEC, load_spec, parse_spec
from projections.store import rows_as_dicts, versions_of

_NAMESPACE = uuid.UUID("2b6f3a0e-7c1d-4e8a-9f35-5d0c8e1b7a42")


@dataclass(frozen=True)
class GoalChange:
    """What a goal command asks the ledger to record."""

    goal_id: str
    occurred_at: datetime | None = None
    fields: tuple[tuple[str, Any], ...] = ()


def spec_components(db: Path) -> list[str]:
    """Reward components a goal may gauge: the default spec's and the promoted version's."""
    names = [c.name for c in load_spec(DEFAULT_SPEC).components]
    if not db.exists():
        return names
    try:
        with reader(db, wait_s=2.0) as connection:
            row = connection.execute(
                "SELECT v.spec_text FROM crm_versions v JOIN crm_promoted p ON p.version = v.version"
            ).fetchone()
    except (duckdb.Error, OSError, CrmLedgerError):  # a busy file or no catalog yet: the defaults only
        return names
    if row is not None:
        names += [c.name for c in parse_spec(str(row[0]), "<promoted spec>").components]
    return sorted(set(names))


def _at(moment: datetime | None) -> str:
    return format_timestamp(epoch_ms(moment or datetime.now(tz=UTC)))


def _record(app: LedgerApplication, raw: dict[str, Any], given_at: datetime | None = None) -> str:
    """Record one goal fact; `given_at` is the moment the user gave (None: now).

    A goal's setting and closing have one event id each: without a moment of its own, a
    second run means the same agreement, recorded when it first was, so it is a duplicate
    when everything else agrees (not a conflict over the clock).
    """
    if given_at is not None:
        return _record_at(app, raw, as_held=False)
    try:
        return _record_at(app, raw, as_held=True)
    except ConflictError:
        # Another run at the same time recorded it between this one's look and its recording.
        return _record_at(app, raw, as_held=True)


def _record_at(app: LedgerApplication, raw: dict[str, Any], *, as_held: bool) -> str:
    """Record `raw`; `as_held`: at the moment the ledger holds it at, if it holds it."""
    held = app.recorded_fact(raw["event_id"]) if as_held else None
    if held is not None:
        raw = {**raw, "occurred_at": format_timestamp(held.occurred_at)}
    fact = RecordParser(app.registry).parse(raw, strict=True)
    return app.record([fact], atomic=True)[0].status


def set_goal(
    settings: Settings,
    change: GoalChange,
    *,
    team_id: str,
    kpi: str,
    target: float,
    comparison: str,
    from_period: str,
    to_period: str,
    agreed_by: Sequence[str],
    note: str | None,
) -> str:
    """Record `TeamGoalSet`; 'accepted', or 'duplicate' when this goal was already set alike."""
    app = open_ledger(settings, spec_components(settings.projections_db))
    return _record(
        app,
        {
            "type": "TeamGoalSet",
            "event_id": str(uuid.uuid5(_NAMESPACE, f"{change.goal_id}:set")),
            "occurred_at": _at(change.occurred_at),
            "goal_id": change.goal_id,
            "team_id": team_id,
            "kpi": kpi,
            "target": float(target),
            "comparison": comparison,
            "from_period": from_period,
            "to_period": to_period,
            "agreed_by": list(agreed_by),
            "note": note,
        },
        change.occurred_at,
    )


def revise_goal(settings: Settings, change: GoalChange, *, agreed_by: Sequence[str], reason: str) -> str:
    """Record `TeamGoalRevised` with the changed fields (target, comparison, to_period).

    A revision given its moment (`--at`) is one event whatever the number of runs; without
    one, each run is a revision of its own (the same terms may well be agreed again later).
    """
    app = open_ledger(settings, spec_components(settings.projections_db))
    raw: dict[str, Any] = {
        "type": "TeamGoalRevised",
        "occurred_at": _at(change.occurred_at),
        "goal_id": change.goal_id,
        "agreed_by": list(agreed_by),
        "reason": reason,
    }
    raw.update({k: v for k, v in change.fields if v is not None})
    identity = json.dumps(raw, sort_keys=True)
    raw["event_id"] = str(uuid.uuid5(_NAMESPACE, identity) if change.occurred_at else uuid.uuid4())
    return _record(app, raw, change.occurred_at)


def close_goal(settings: Settings, change: GoalChange, *, outcome: str, note: str | None) -> str:
    """Record `TeamGoalClosed` (once per goal)."""
    app = open_ledger(settings, spec_components(settings.projections_db))
    return _record(
        app,
        {
            "type": "TeamGoalClosed",
            "event_id": str(uuid.uuid5(_NAMESPACE, f"{change.goal_id}:closed")),
            "occurred_at": _at(change.occurred_at),
            "goal_id": change.goal_id,
            "outcome": outcome,
            "note": note,
        },
        change.occurred_at,
    )


def list_goals(db: Path, team_id: str | None = None) -> list[dict[str, Any]]:
    """Goals of the promoted version (`team_goal`), with the months met so far."""
    where = "WHERE g.team_id = ?" if team_id else ""
    with reader(db) as connection:
        if not any(v.promoted for v in versions_of(connection)):
            # The goal views are the promoted version's: without one, "no table team_goal".
            raise CrmLedgerError("no version is promoted yet (run `crm-ledger project`)")
        return rows_as_dicts(
            connection.execute(
                f"""SELECT g.goal_id, g.team_id, g.kpi, g.comparison, g.target, g.from_period, g.to_period,
                       g.status, g.outcome, g.revisions,
                       count(p.met) FILTER (WHERE p.met) AS months_met,
                       count(p.met) AS months_gauged
                FROM team_goal g LEFT JOIN team_goal_progress p ON p.goal_id = g.goal_id
                {where}
                GROUP BY ALL ORDER BY g.team_id, g.from_period, g.goal_id""",
                [team_id] if team_id else [],
            )
        )
