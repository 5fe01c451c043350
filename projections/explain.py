"""`explain`: a reward score, its components, the KPI values and the events behind each KPI."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb

from crm_ledger.kpis import measure_kpis
from projections.errors import ProjectionError
from projections.store import rows_as_dicts

#: Which measured acts feed which KPI (from crm_ledger.kpis).
MEASURE_KPIS = {measure: " / ".join(names) for measure, names in measure_kpis().items()}


@dataclass
class Explanation:
    employee_id: str
    period: str
    version: str
    spec_name: str
    score: float
    team_id: str | None
    components: list[dict[str, Any]] = field(default_factory=list)
    kpis: list[dict[str, Any]] = field(default_factory=list)
    evidence: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def components_total(self) -> float:
        return 100.0 * float(sum(c["weighted"] for c in self.components))

    def to_json(self) -> str:
        payload = asdict(self)
        payload["components_total"] = self.components_total
        return json.dumps(payload, indent=2, default=str)

    def to_text(self) -> str:
        lines = [
            f"Reward score of {self.employee_id} for {self.period}: {self.score:.2f} "
            f"(version {self.version}, spec {self.spec_name!r}, team {self.team_id})",
            "",
            f"{'component':<22} {'kind':<9} {'KPI':<22} {'KPI value':>9} {'sample':>7} "
            f"{'weight':>7} {'cap':>6} {'value':>7} {'points':>7}",
        ]
        for c in self.components:
            kpi_value = "" if c["kpi_value"] is None else f"{c['kpi_value']:.4g}"
            cap = "" if c["cap"] is None else f"{c['cap']:g}"
            lines.append(
                f"{c['component']:<22} {c['kind']:<9} {c['kpi']:<22} {kpi_value:>9} {c['sample_n']:>7} "
                f"{c['weight']:>7.2f} {cap:>6} {c['value']:>7.3f} {100 * c['weighted']:>7.2f}"
            )
        lines.append(f"{'total':<98}{self.components_total:>8.2f}")
        lines.append("")
        for kpi in self.kpis:
            shown = {
                k: v for k, v in kpi.items() if v not in (None, 0) and k not in {"employee_id", "period"}
            }
            lines.append("KPIs: " + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))
        for measure, events in self.evidence.items():
            lines.append("")
            lines.append(f"{MEASURE_KPIS.get(measure, measure)}: {len(events)} event(s)")
            for event in events[:50]:
                value = "" if event["value"] in (None, 1.0) else f" value={_fmt(event['value'])}"
                lines.append(
                    f"  {event['occurred_at']}  {event['event_type']:<22} {event['event_id']}{value}"
                )
            if len(events) > 50:
                lines.append(f"  ... {len(events) - 50} more (use --format json)")
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _rows(connection: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    return rows_as_dicts(connection.execute(sql, params))


def explain(connection: duckdb.DuckDBPyConnection, schema: str, employee_id: str, period: str) -> Explanation:
    """Everything behind one employee's score in one period, from version `schema`."""
    scores = _rows(
        connection,
        f"SELECT * FROM {schema}.reward_score WHERE employee_id = ? AND period = ?",
        [employee_id, period],
    )
    if not scores:
        known = connection.execute(
            f"SELECT count(*) FROM {schema}.reward_score WHERE employee_id = ?", [employee_id]
        ).fetchone()
        if not known or not known[0]:
            raise ProjectionError(f"no reward scores for employee {employee_id!r} in version {schema}")
        raise ProjectionError(f"employee {employee_id!r} has no reward score for period {period!r}")
    score = scores[0]
    result = Explanation(
        employee_id, period, score["spec_version"], score["spec_name"], score["score"], score["team_id"]
    )
    result.components = _rows(
        connection,
        f"SELECT component, kind, kpi, kpi_value, sample_n, weight, cap, value, weighted "
        f"FROM {schema}.reward_components WHERE employee_id = ? AND period = ? ORDER BY component",
        [employee_id, period],
    )
    result.kpis = _rows(
        connection,
        f"SELECT * EXCLUDE (last_activity_at) FROM {schema}.kpi_employee_month "
        "WHERE employee_id = ? AND period = ?",
        [employee_id, period],
    )
    evidence = _rows(
        connection,
        f"""SELECT m.measure, m.value, m.fcr, m.reopened, m.knowledge, m.ref, m.event_id, m.occurred_at,
                   e.event_type, e.notification_id
            FROM {schema}.measures m LEFT JOIN {schema}.events e ON e.event_id = m.event_id
            WHERE m.employee_id = ? AND strftime(m.occurred_at, '%Y-%m') = ?
            ORDER BY m.measure, m.occurred_at, m.event_id""",
        [employee_id, period],
    )
    for row in evidence:
        result.evidence.setdefault(row.pop("measure"), []).append(row)
    return result
