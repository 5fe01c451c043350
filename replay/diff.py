"""`diff`: what changes for whom between two versions of the read models.

Per employee and period: old and new score, the change, old and new rank (within the
period, best first). The summary counts changed rows, lists the largest gains and losses,
gives Spearman's rank correlation between the two rankings, names who crosses a reward
threshold, and counts changed KPI values (not only scores).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb

from crm_ledger.kpis import COMPARED_COLUMNS
from projections.ranks import average_rank
from projections.store import VersionInfo, require_built

#: The KPIs compared between versions (crm_ledger.kpis).
KPI_COLUMNS = COMPARED_COLUMNS
EPSILON = 1e-9


@dataclass(frozen=True)
class ScoreChange:
    employee_id: str
    period: str
    old_score: float | None
    new_score: float | None
    change: float | None
    old_rank: int | None
    new_rank: int | None


@dataclass
class DiffReport:
    """The comparison of version `old` with version `new`."""

    old: str
    new: str
    threshold: float
    rows: list[ScoreChange] = field(default_factory=list)
    rows_compared: int = 0
    rows_changed: int = 0
    spearman: float | None = None
    largest_gains: list[ScoreChange] = field(default_factory=list)
    largest_losses: list[ScoreChange] = field(default_factory=list)
    crossed_up: list[ScoreChange] = field(default_factory=list)
    crossed_down: list[ScoreChange] = field(default_factory=list)
    kpi_changes: dict[str, int] = field(default_factory=dict)
    #: Goal months whose outcome (met / not met / not measured) differs between the versions.
    goal_changes: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "rows_compared": self.rows_compared,
            "rows_changed": self.rows_changed,
            "spearman_rank_correlation": self.spearman,
            "threshold": self.threshold,
            "crossed_threshold_upwards": [asdict(r) for r in self.crossed_up],
            "crossed_threshold_downwards": [asdict(r) for r in self.crossed_down],
            "largest_gains": [asdict(r) for r in self.largest_gains],
            "largest_losses": [asdict(r) for r in self.largest_losses],
            "kpi_values_changed": self.kpi_changes,
            "goal_outcomes_changed": self.goal_changes,
        }

    def to_json(self) -> str:
        return json.dumps(
            {"summary": self.summary(), "rows": [asdict(r) for r in self.rows]}, indent=2, default=str
        )

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["employee_id", "period", "old_score", "new_score", "change", "old_rank", "new_rank"])
        for r in self.rows:
            writer.writerow(
                [r.employee_id, r.period, r.old_score, r.new_score, r.change, r.old_rank, r.new_rank]
            )
        return buffer.getvalue()


def _ranked(schema: str) -> str:
    # rnk is what people read (1 = best); mid_rnk gives ties their average rank, as Spearman wants.
    return (
        f"SELECT employee_id, period, score, "
        f"rank() OVER (PARTITION BY period ORDER BY score DESC) AS rnk, "
        f"{average_rank('period', 'score DESC')} AS mid_rnk "
        f"FROM {schema}.reward_score"
    )


def diff_versions(
    con: duckdb.DuckDBPyConnection, old: VersionInfo, new: VersionInfo, threshold: float = 50.0
) -> DiffReport:
    """Compare the reward scores and KPI values of two versions."""
    require_built(old)
    require_built(new)
    report = DiffReport(old.version, new.version, threshold)
    rows = con.execute(
        f"""
        SELECT coalesce(a.employee_id, b.employee_id) AS employee_id, coalesce(a.period, b.period) AS period,
               a.score, b.score, b.score - a.score AS change, a.rnk, b.rnk
        FROM ({_ranked(old.schema)}) a
        FULL OUTER JOIN ({_ranked(new.schema)}) b ON a.employee_id = b.employee_id AND a.period = b.period
        ORDER BY abs(coalesce(b.score, 0) - coalesce(a.score, 0)) DESC, employee_id, period
        """
    ).fetchall()
    report.rows = [ScoreChange(*row) for row in rows]
    report.rows_compared = len(rows)
    changed = [
        r
        for r in report.rows
        if r.old_score is None or r.new_score is None or abs(r.new_score - r.old_score) > EPSILON
    ]
    report.rows_changed = len(changed)
    both = [r for r in report.rows if r.change is not None]
    report.largest_gains = [
        r for r in sorted(both, key=lambda r: -(r.change or 0)) if (r.change or 0) > EPSILON
    ][:5]
    report.largest_losses = [
        r for r in sorted(both, key=lambda r: r.change or 0) if (r.change or 0) < -EPSILON
    ][:5]
    report.crossed_up = [r for r in both if (r.old_score or 0) < threshold <= (r.new_score or 0)]
    report.crossed_down = [r for r in both if (r.new_score or 0) < threshold <= (r.old_score or 0)]
    row = con.execute(
        f"""
        SELECT corr(a.mid_rnk, b.mid_rnk) FROM ({_ranked(old.schema)}) a
        JOIN ({_ranked(new.schema)}) b ON a.employee_id = b.employee_id AND a.period = b.period
        """
    ).fetchone()
    # Undefined (DuckDB's NaN) when the ranks do not vary, one employee a month: None, which
    # JSON can carry (NaN made `--format json` output no JSON parser takes) and pages show as such.
    value = None if row is None or row[0] is None else float(row[0])
    report.spearman = value if value is not None and math.isfinite(value) else None
    checks = ", ".join(f"count(*) FILTER (WHERE a.{c} IS DISTINCT FROM b.{c}) AS {c}" for c in KPI_COLUMNS)
    kpi_row = con.execute(
        f"""
        SELECT {checks},
            count(*) FILTER (WHERE a.employee_id IS NULL OR b.employee_id IS NULL) AS rows_only_in_one
        FROM {old.schema}.kpi_employee_month a
        FULL OUTER JOIN {new.schema}.kpi_employee_month b
            ON a.employee_id = b.employee_id AND a.team_id = b.team_id AND a.period = b.period
        """
    ).fetchone()
    names = [*KPI_COLUMNS, "rows_only_in_one"]
    report.kpi_changes = {n: int(v) for n, v in zip(names, kpi_row or (), strict=True) if v}
    report.goal_changes = goal_outcome_changes(con, old.schema, new.schema)
    return report


def goal_outcome_changes(con: duckdb.DuckDBPyConnection, old: str, new: str) -> list[dict[str, Any]]:
    """Team goal months met in one version and not in the other (or measured in only one)."""
    present = con.execute(
        "SELECT count(DISTINCT schema_name) FROM duckdb_tables() "
        "WHERE table_name = 'team_goal_progress' AND schema_name IN (?, ?)",
        [old, new],
    ).fetchone()
    if old != new and (present is None or present[0] < 2):
        return []  # a version built before team goals existed
    cursor = con.execute(
        f"""SELECT coalesce(a.team_id, b.team_id) AS team_id, coalesce(a.goal_id, b.goal_id) AS goal_id,
               coalesce(a.period, b.period) AS period, coalesce(a.kpi, b.kpi) AS kpi,
               a.target AS old_target, b.target AS new_target, a.actual AS old_actual, b.actual AS new_actual,
               a.met AS old_met, b.met AS new_met
        FROM {old}.team_goal_progress a
        FULL OUTER JOIN {new}.team_goal_progress b ON a.goal_id = b.goal_id AND a.period = b.period
        WHERE a.met IS DISTINCT FROM b.met
        ORDER BY team_id, goal_id, period"""
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
