"""Reward periods: close a month, issue statements, adjust on recompute.

Closing records `RewardPeriodClosed` (the ledger position and promoted version the scores
were computed at) and one `RewardStatementIssued` per employee, all in one ledger
transaction. Statements are facts: a later replay under new rules never rewrites them;
`adjust` compares the live promoted scores with what each employee was last told and
issues `RewardAdjustmentIssued` events for the differences.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb

from crm_ledger.settings import Settings
from ledger.application import LedgerApplication
from ledger.checkpoints import chain_at
from ledger.connect import open_ledger
from ledger.errors import ConflictError, ValidationError
from ledger.records import RecordParser, epoch_ms, format_timestamp
from projections.readonly import reader, reflected_position
from projections.service import catch_up
from projections.store import REWARD_FACTS, ProjectionDB, VersionInfo, rows_as_dicts, versions_of
from rewards.errors import PeriodError

_NAMESPACE = uuid.UUID("a4c2e8f0-6b1d-4e3a-9f5c-2d7b8e0a1c3f")
SCORE_DIGITS = 6




#: The years a period can be in.
FIRST_YEAR, LAST_YEAR = 1970, 9998


def parse_period(text: str) -> str:
    """A YYYY-MM period, or a PeriodError naming the problem."""
    # ASCII digits only: `\d` and int() also take other scripts' digits (fullwidth, Arabic-Indic).
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}", text or "") or not 1 <= int(text[5:]) <= 12:
        raise PeriodError(f"period: expected YYYY-MM (e.g. 2026-03), got {text!r}")
    if not FIRST_YEAR <= int(text[:4]) <= LAST_YEAR:
        # Event times are milliseconds since 1970; a period beyond has no events to close
        # (and a closed period is a fact for good: a typo must not become one).
        raise PeriodError(f"period: {text!r} is outside {FIRST_YEAR}-01 to {LAST_YEAR}-12")
    return text


def period_end(period: str) -> datetime:
    year, month = int(period[:4]), int(period[5:])
    return datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class LiveScore:
    employee_id: str
    score: float
    team_id: str | None
    details: dict[str, Any]


def _source_kind(version: VersionInfo) -> str:
    return "ledger" if version.source == "ledger" else "kafka"


def _promoted(versions: list[VersionInfo]) -> VersionInfo:
    """The promoted version among `versions`, or a PeriodError saying how to make one."""
    promoted = next((v for v in versions if v.promoted), None)
    if promoted is None:
        raise PeriodError("no version is promoted: run `crm-ledger project` (or promote a version) first")
    return promoted


def _promoted_fresh(settings: Settings, app: LedgerApplication, db: ProjectionDB) -> VersionInfo:
    """The promoted version, caught up with the log first so scores include every event."""
    promoted = db.promoted_version()
    if promoted is None:
        raise PeriodError("no version is promoted: run `crm-ledger project` (or promote a version) first")
    version = db.find_version(promoted)
    catch_up(db, version, settings=settings, source=_source_kind(version), app=app)
    return db.find_version(promoted)


def live_scores(con: duckdb.DuckDBPyConnection, version: VersionInfo, period: str) -> dict[str, LiveScore]:
    """Scores of `version` for the period, with components and KPI rows for the statement."""
    schema = version.schema
    components: dict[str, list[dict[str, Any]]] = {}
    for row in rows_as_dicts(
        con.execute(
            f"SELECT employee_id, component, kind, kpi, kpi_value, sample_n, weight, cap, value, "
            f"100 * weighted AS points FROM {schema}.reward_components WHERE period = ? "
            "ORDER BY employee_id, component",
            [period],
        )
    ):
        components.setdefault(row.pop("employee_id"), []).append(row)
    kpis: dict[str, list[dict[str, Any]]] = {}
    for row in rows_as_dicts(
        con.execute(
            f"SELECT * EXCLUDE (last_activity_at) FROM {schema}.kpi_employee_month WHERE period = ? "
            "ORDER BY employee_id, team_id",
            [period],
        )
    ):
        kpis.setdefault(row["employee_id"], []).append(row)
    scores: dict[str, LiveScore] = {}
    for employee, score, team in con.execute(
        f"SELECT employee_id, score, team_id FROM {schema}.reward_score "
        "WHERE period = ? ORDER BY employee_id",
        [period],
    ).fetchall():
        scores[employee] = LiveScore(
            employee,
            round(float(score), SCORE_DIGITS),
            team,
            {
                "team_id": team,
                "spec_name": version.name,
                "components": components.get(employee, []),
                "kpis": kpis.get(employee, []),
            },
        )
    return scores


def _late_events(con: duckdb.DuckDBPyConnection, version: VersionInfo, period: str, position: int) -> int:
    start = datetime.strptime(period, "%Y-%m")
    end = period_end(period).replace(tzinfo=None)
    types = ", ".join(f"'{t}'" for t in REWARD_FACTS)
    row = con.execute(
        f"SELECT count(*) FROM {version.schema}.events WHERE occurred_at >= ? AND occurred_at < ? "
        f"AND notification_id > ? AND event_type NOT IN ({types})",
        [start, end, position],
    ).fetchone()
    return int(row[0]) if row else 0


def _record(app: LedgerApplication, raws: list[dict[str, Any]]) -> None:
    parser = RecordParser(app.registry, allow_internal=True)
    app.record([parser.parse(raw) for raw in raws], atomic=True)


@dataclass
class CloseResult:
    period: str
    version: str
    position: int
    statements: int
    #: the hash-chain value after `position`: what a copy kept outside the ledger pins
    chain_head: str = ""


def close_period(settings: Settings, period: str, now: datetime | None = None) -> CloseResult:
    """Close a finished month at the promoted version: one statement per scored employee."""
    period = parse_period(period)
    now = now or datetime.now(tz=UTC)
    if period_end(period) > now:
        raise PeriodError(
            f"period {period} has not ended yet (it ends {period_end(period):%Y-%m-%d}); it cannot be closed"
        )
    app = open_ledger(settings)
    if app.reward_period(period) is not None:
        raise PeriodError(f"period {period} is already closed")
    with ProjectionDB(settings.projections_db, create=False) as db:
        version = _promoted_fresh(settings, app, db)
        scores = live_scores(db.connection, version, period)
        if not scores:
            # A close is for good: a month without a score (a typo, data not yet ingested or
            # projected) is not closed with nothing in it.
            raise PeriodError(
                f"period {period} has no scores in version {version.version} (no events in that month, or "
                "not projected yet?): nothing to close"
            )
        row = db.connection.execute(
            f"SELECT coalesce(max(notification_id), 0) FROM {version.schema}.events"
        ).fetchone()
        position = int(row[0]) if row else 0
    # From the store itself (the source of truth), not from the projection's copy.
    head = chain_at(app, position).chain
    at = format_timestamp(epoch_ms(now))
    raws: list[dict[str, Any]] = [
        {
            "type": "RewardPeriodClosed",
            "event_id": str(uuid.uuid5(_NAMESPACE, f"{period}:closed")),
            "occurred_at": at,
            "period": period,
            "ledger_position": position,
            "version": version.version,
            "spec_name": version.name,
            "chain_head": head,
        }
    ]
    for live in scores.values():
        raws.append(
            {
                "type": "RewardStatementIssued",
                "event_id": str(uuid.uuid5(_NAMESPACE, f"{period}:{live.employee_id}:statement")),
                "occurred_at": at,
                "period": period,
                "employee_id": live.employee_id,
                "score": live.score,
                "components": json.dumps(live.details, default=str, sort_keys=True),
                "version": version.version,
                "spec_name": version.name,
            }
        )
    try:
        _record(app, raws)
    except ConflictError:
        # Its event id is the period's: another run closed it since the check above.
        app.reset_cached_aggregates()
        if app.reward_period(period) is not None:
            raise PeriodError(f"period {period} is already closed (by a run beside this one)") from None
        raise
    return CloseResult(period, version.version, position, len(scores), head)


@dataclass
class Drift:
    employee_id: str
    told: float
    live: float
    told_version: str | None

    @property
    def delta(self) -> float:
        return round(self.live - self.told, SCORE_DIGITS)


@dataclass
class PeriodStatus:
    period: str
    closed: bool
    closed_version: str | None = None
    position: int | None = None
    promoted: str | None = None
    statements: int = 0
    adjustments: int = 0
    late_events: int = 0
    drifts: list[Drift] = field(default_factory=list)
    #: ledger events the promoted version's tables do not reflect yet (status reads, never
    #: catches up: live scores and late events are what the projection holds)
    behind: int = 0
    #: the source the promoted version is fed from ("ledger", or a Kafka label)
    source: str = "ledger"

    @property
    def behind_line(self) -> str | None:
        """One line saying how far the projection lags the ledger and what catches it up."""
        if not self.behind:
            return None
        catch_up = (
            "`crm-ledger project`"
            if self.source == "ledger"
            else "`crm-ledger relay`, then `crm-ledger project --source kafka`"
        )
        return (
            f"note: the promoted version {self.promoted} is {self.behind} event(s) behind the ledger, "
            f"so its live scores leave those out; {catch_up} catches it up"
        )

    def to_json(self) -> str:
        payload = {k: v for k, v in self.__dict__.items() if k != "drifts"}
        payload["drifts"] = [{**d.__dict__, "delta": d.delta} for d in self.drifts]
        return json.dumps(payload, indent=2)


def period_status(settings: Settings, period: str, app: LedgerApplication | None = None) -> PeriodStatus:
    """Late events since the close and how far live scores drift from what was told, as the
    promoted version holds them (read only: `behind` says how far it lags the ledger)."""
    period = parse_period(period)
    app = app or open_ledger(settings, read_only=True)
    closed = app.reward_period(period)
    if closed is None:
        raise PeriodError(f"period {period} is not closed (close it with `crm-ledger period close {period}`)")
    facts = app.period_facts(period)
    status = PeriodStatus(
        period,
        True,
        closed.projection_version,
        closed.ledger_position,
        statements=sum(1 for f in facts if f.event_type == "RewardStatementIssued"),
        adjustments=sum(1 for f in facts if f.event_type == "RewardAdjustmentIssued"),
    )
    with reader(settings.projections_db) as con:
        version = _promoted(versions_of(con))
        status.promoted = version.version
        status.source = version.source
        status.late_events = _late_events(con, version, period, closed.ledger_position)
        live = live_scores(con, version, period)
    status.behind = max(0, app.max_position() - reflected_position(settings.projections_db, version))
    for employee in sorted(set(live) | set(closed.told)):
        told = closed.told.get(employee, 0.0)
        now = live[employee].score if employee in live else 0.0
        if abs(now - told) > 10**-SCORE_DIGITS:
            status.drifts.append(Drift(employee, told, now, closed.told_version.get(employee)))
    return status


@dataclass
class Adjustment:
    employee_id: str
    old_score: float
    new_score: float
    old_version: str
    new_version: str
    reason: str

    @property
    def delta(self) -> float:
        return round(self.new_score - self.old_score, SCORE_DIGITS)


def planned_adjustments(status: PeriodStatus) -> list[Adjustment]:
    """The adjustments that would bring the statements to the live scores of `status`."""
    adjustments = []
    for drift in status.drifts:
        reasons = []
        if drift.told_version and drift.told_version != status.promoted:
            reasons.append(f"rules changed: {drift.told_version} -> {status.promoted}")
        if status.late_events:
            reasons.append(f"{status.late_events} late event(s) since the close")
        adjustments.append(
            Adjustment(
                drift.employee_id,
                drift.told,
                drift.live,
                drift.told_version or "(none)",
                status.promoted or "",
                "; ".join(reasons) or "recomputed",
            )
        )
    return adjustments


def adjust_period(settings: Settings, period: str, *, dry_run: bool = False) -> list[Adjustment]:
    """Issue the adjustments that bring statements to live scores, after catching the promoted
    version up with the log; with `dry_run`, only compute them from what the projection
    holds (read only, as `period_status`)."""
    app = open_ledger(settings)
    if dry_run:
        return planned_adjustments(period_status(settings, period, app))
    parse_period(period)
    if app.reward_period(period) is not None:
        with ProjectionDB(settings.projections_db, create=False) as db:
            _promoted_fresh(settings, app, db)
    try:
        return _issue_new(app, _planned(settings, app, period))
    except (ConflictError, ValidationError):
        # Another run recorded between this one's look and its recording (the same adjustment,
        # or one that moved what was told): plan again from what the ledger holds now.
        return _issue_new(app, _planned(settings, app, period))


def _planned(
    settings: Settings, app: LedgerApplication, period: str
) -> list[tuple[Adjustment, dict[str, Any]]]:
    """The adjustments to issue now, each with its record.

    How many times each employee was told so far is read before the plan and is part of an
    adjustment's id: two runs at once planning the same move make one fact, while the same
    move made again later (a score back and forth under one version) is a fact of its own.
    """
    closed = app.reward_period(period)
    told_times = dict(closed.told_times) if closed is not None else {}
    adjustments = planned_adjustments(period_status(settings, period, app))
    at = format_timestamp(epoch_ms(datetime.now(tz=UTC)))
    return [
        (
            a,
            {
                "type": "RewardAdjustmentIssued",
                "event_id": str(
                    uuid.uuid5(
                        _NAMESPACE,
                        f"{period}:{a.employee_id}:{told_times.get(a.employee_id, 0)}:"
                        f"{a.old_score!r}->{a.new_score!r}@{a.new_version}",
                    )
                ),
                "occurred_at": at,
                "period": period,
                "employee_id": a.employee_id,
                "old_score": a.old_score,
                "new_score": a.new_score,
                "delta": a.delta,
                "old_version": a.old_version,
                "new_version": a.new_version,
                "reason": a.reason,
            },
        )
        for a in adjustments
    ]


def _issue_new(app: LedgerApplication, planned: list[tuple[Adjustment, dict[str, Any]]]) -> list[Adjustment]:
    """Record the planned adjustments the ledger does not hold yet, and return them.

    Another run at the same time plans the same adjustments (the same event ids) and issues
    them at its own moment: those it issued are issued, not a conflict over the clock.
    """
    fresh = [(a, raw) for a, raw in planned if app.recorded_fact(raw["event_id"]) is None]
    if fresh:
        _record(app, [raw for _, raw in fresh])
    return [a for a, _ in fresh]


def drop_version(settings: Settings, reference: str) -> VersionInfo:
    """Drop a version (id, prefix or name) unless it is promoted or a reward period's
    statements name it: in the decoded logs, or in the ledger beyond them (a period closed
    since the last projection)."""
    with ProjectionDB(settings.projections_db, create=False) as db:
        target = db.find_version(reference)
        # The ledger is read (the caller made sure it exists): without it, a period closed
        # since the last projection could not be seen.
        beyond = _periods_naming(open_ledger(settings), target.version, db.logged_position())
        db.drop(target, beyond)
    return target


def _periods_naming(app: LedgerApplication, version: str, after: int) -> set[str]:
    """The periods whose reward facts after notification `after` name `version`."""
    periods: set[str] = set()
    start = after + 1
    while batch := list(app.read_notifications(start, 5_000)):
        for notification in batch:
            event_type, record = app.codec.decode(notification.state)
            if event_type in REWARD_FACTS and version in (record.get("version"), record.get("new_version")):
                periods.add(str(record["period"]))
        start = batch[-1].id + 1
    return periods
