"""What each page shows, built from read-model rows: tables, charts and the plain-words method."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from markupsafe import Markup

from crm_ledger.kpis import BY_NAME, KPIS
from ledger.goals import COMPONENT_PREFIX, SCORE
from projections.goals import BEFORE_MONTHS, OUTCOMES, PRACTICES
from replay.diff import DiffReport, ScoreChange
from web.charts import Series, Target, bar_chart, line_chart
from web.data import View
from web.users import User

#: KPIs charted on every team page, goal or not.
CHARTED_KPIS = (
    "csat_pct",
    "fcr_rate",
    "ttr_median_h",
    "participation_rate",
    "citations",
    "relationship_attempts",
)
#: Outcomes where a fall is the improvement.
LOWER_IS_BETTER = frozenset(k.name for k in KPIS if k.lower_is_better)
METHOD = (
    "Each month's change is compared with the previous calendar month of the same team. "
    "Spearman's rank correlation (ρ, from −1 to 1) says how consistently months where a practice "
    "rose were months where an outcome rose; n is the number of month pairs, and ρ is shown only "
    f"from n = 3. “Before” is the mean of up to {BEFORE_MONTHS} months before a goal's first month, "
    "“after” the mean of its months so far. These are associations in this team's own history: "
    "they do not show that one thing caused another, and small n means they can be chance."
)


def kpi_label(kpi: str) -> str:
    if kpi.startswith(COMPONENT_PREFIX):
        return f"mean {kpi.removeprefix(COMPONENT_PREFIX)} component"
    if kpi == SCORE:
        return "mean reward score"
    known = BY_NAME.get(kpi)
    return known.title if known is not None else kpi


def path_segment(value: Any) -> str:
    """An id as one URL path segment, "/" included: `a/../b` becomes `a%2F..%2Fb`.

    Browsers resolve "." and ".." segments before sending a request, so an id whose "/" were
    left bare would lead to another page; an encoded "/" separates nothing for them, and the
    server decodes it before matching the routes' `{id:path}`.
    """
    return quote(str(value), safe="")


#: Path segments every URL parser (browsers, WHATWG) resolves away, encoded (`%2e`) or not.
DOT_SEGMENTS = frozenset({".", ".."})


def page_link(route: str, item_id: Any, **query: Any) -> str:
    """The address of the `route` page ("employee", "team") of `item_id`, with `query`
    parameters (None ones left out).

    An id is one path segment (`path_segment`), except "." and "..": no encoding keeps
    those from being resolved away, so they travel in the query string of the same route
    (`/employee/?id=..`), which the route answers as it answers the path.
    """
    given = {k: str(v) for k, v in query.items() if v is not None and v != ""}
    text = str(item_id)
    if text in DOT_SEGMENTS:
        return f"/{route}/?{urlencode({'id': text, **given})}"
    return f"/{route}/{path_segment(text)}" + (f"?{urlencode(given)}" if given else "")


def statement_link(employee_id: Any, period: str) -> str:
    """The address of an employee's statement of `period` (see `page_link` for "." and "..")."""
    if str(employee_id) in DOT_SEGMENTS:
        return page_link("employee", employee_id, statement=period)
    return f"{page_link('employee', employee_id)}/statement/{quote(period, safe='')}"


def id_fields(item_id: Any, **fields: Any) -> dict[str, Any]:
    """The hidden fields of a form (the version picker) on the page of `item_id`: `fields`,
    and the id itself where the page's address carries it in the query string."""
    return ({"id": str(item_id)} if str(item_id) in DOT_SEGMENTS else {}) | fields


def fmt_number(value: Any, digits: int = 2) -> str:
    """A number for a table: a dash when missing or undefined, no trailing noise.

    Undefined is a NaN: a rank correlation over values that never change has none (the read
    model holds NaN, as DuckDB's `corr` gives); "nan" means nothing to a reader.
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_rate(value: Any) -> str:
    """A 0..1 share as a percentage (a dash when missing or undefined)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{100 * float(value):.1f}%"


def _series(
    rows: Sequence[Mapping[str, Any]], periods: Sequence[str], column: str
) -> tuple[float | None, ...]:
    by_period = {r["period"]: r.get(column) for r in rows}
    return tuple(_float(by_period.get(p)) for p in periods)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def team_page(
    view: View,
    team_id: str,
    *,
    kpis: list[dict[str, Any]],
    goals: list[dict[str, Any]],
    progress: list[dict[str, Any]],
    scores: list[dict[str, Any]],
    evidence: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """Charts of the team's KPIs with goal targets, goal progress, members' scores, evidence."""
    periods = sorted({r["period"] for r in kpis} | {r["period"] for r in progress})
    by_goal: dict[str, list[dict[str, Any]]] = {}
    for row in progress:
        by_goal.setdefault(row["goal_id"], []).append(row)
    charted = list(CHARTED_KPIS) + [g["kpi"] for g in goals if g["kpi"] not in CHARTED_KPIS]
    charts = []
    for kpi in dict.fromkeys(charted):
        mine = [g for g in goals if g["kpi"] == kpi]
        if kpi in CHARTED_KPIS or kpi not in {g["kpi"] for g in goals}:
            values = _series(kpis, periods, kpi)
        else:
            # A score or component goal: the actual is what team_goal_progress gauged.
            values = _series(by_goal.get(mine[0]["goal_id"], []), periods, "actual")
        targets = [
            Target(
                f"goal {g['goal_id']}",
                _series(by_goal.get(g["goal_id"], []), periods, "target"),
                tuple(r["met"] for r in by_goal.get(g["goal_id"], [])),
            )
            for g in mine
        ]
        charts.append(line_chart(periods, [Series(kpi_label(kpi), values)], targets, title=kpi_label(kpi)))
    goal_rows = []
    for goal in goals:
        gauged = by_goal.get(goal["goal_id"], [])
        measured = [r for r in gauged if r["met"] is not None]
        goal_rows.append(
            {
                **goal,
                "label": kpi_label(goal["kpi"]),
                "months": gauged,
                "met_months": sum(1 for r in measured if r["met"]),
                "gauged_months": len(measured),
                "latest": measured[-1] if measured else None,
            }
        )
    score_periods = sorted({r["period"] for r in scores})
    members: dict[str, dict[str, float | None]] = {}
    for row in scores:
        members.setdefault(row["employee_id"], {})[row["period"]] = row["score"]
    return {
        "team_id": team_id,
        "periods": periods,
        "charts": charts,
        "kpis": kpis,
        "kpi_columns": [c for c in kpis[0] if c != "period"] if kpis else [],
        "goals": goal_rows,
        "score_periods": score_periods,
        "members": sorted(members.items()),
        "evidence": _evidence(evidence),
        "method": METHOD,
    }


def _evidence(evidence: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    months = evidence["months"]
    periods = [r["period"] for r in months]
    practice_chart = line_chart(
        periods,
        [Series(kpi_label(p), _series(months, periods, p)) for p in ("citations", "relationship_attempts")],
        title="practice: citations and relationship attempts",
    )
    outcome_chart = line_chart(
        periods,
        [Series(kpi_label(o), _series(months, periods, o)) for o in ("csat_pct",)],
        title="outcome: CSAT % satisfied",
    )
    effects: dict[str, list[dict[str, Any]]] = {}
    for row in evidence["effects"]:
        effects.setdefault(row["goal_id"], []).append(
            {**row, "label": kpi_label(row["measure"]), "better": _better(row["measure"], row["change"])}
        )
    return {
        "months": months,
        "practices": PRACTICES,
        "outcomes": OUTCOMES,
        "correlations": [
            {**r, "p_label": kpi_label(r["practice"]), "o_label": kpi_label(r["outcome"])}
            for r in evidence["correlations"]
        ],
        "effects": effects,
        "charts": [practice_chart, outcome_chart],
    }


def _better(measure: str, change: float | None) -> str:
    if change is None or abs(change) < 1e-12:
        return ""
    improved = (change < 0) if measure in LOWER_IS_BETTER else (change > 0)
    return "better" if improved else "worse"


def employee_page(
    view: View,
    employee_id: str,
    *,
    teams: list[str],
    scores: list[dict[str, Any]],
    components: list[dict[str, Any]],
    statements: list[dict[str, Any]],
    period: str,
    events: list[dict[str, Any]],
) -> dict[str, Any]:
    """Score and components over time, statements, and the events behind one month."""
    periods = [s["period"] for s in scores]
    names = sorted({c["component"] for c in components})
    by_component = {n: [c for c in components if c["component"] == n] for n in names}
    score_chart = line_chart(
        periods, [Series("score", _series(scores, periods, "score"))], title="reward score"
    )
    component_chart = line_chart(
        periods,
        [Series(n, _series(by_component[n], periods, "value")) for n in names],
        title="component values (0–1)",
    )
    counts: dict[str, int] = {}
    for event in events:
        counts[event["event_type"]] = counts.get(event["event_type"], 0) + 1
    return {
        "employee_id": employee_id,
        "teams": teams,
        "scores": scores,
        "charts": [score_chart, component_chart],
        "period": period,
        "month_components": [c for c in components if c["period"] == period],
        "month_score": next((s for s in scores if s["period"] == period), None),
        "statements": statements,
        "events": events[:300],
        "events_total": len(events),
        "event_counts": sorted(counts.items()),
    }


def versions_page(report: DiffReport | None, user: User, scope: Mapping[str, str | None]) -> dict[str, Any]:
    """The diff, limited to the user's teams' employees (aggregates are organisation-wide)."""
    if report is None:
        return {"rows": [], "crossed_up": [], "crossed_down": [], "shown_note": ""}

    def mine(rows: Sequence[ScoreChange]) -> list[ScoreChange]:
        return [r for r in rows if user.can_see(scope.get(r.employee_id))]

    changed = [r for r in mine(report.rows) if r.change is None or abs(r.change) > 1e-9]
    note = (
        ""
        if user.sees_everything
        else "Rows are limited to the employees of your teams; the summary is organisation-wide."
    )
    return {
        "rows": changed[:200],
        "rows_total": len(changed),
        "crossed_up": mine(report.crossed_up),
        "crossed_down": mine(report.crossed_down),
        "goal_changes": [g for g in report.goal_changes if user.can_see(g["team_id"])],
        "shown_note": note,
    }


def complaints_page(
    *,
    kpis: list[dict[str, Any]],
    products: list[dict[str, Any]],
    issues: list[dict[str, Any]],
    articles: list[dict[str, Any]],
) -> dict[str, Any]:
    """The complaint KPIs as a learning list: top issues, their trend, articles written from them."""
    teams = sorted({r["team_id"] for r in kpis})
    periods = sorted({r["period"] for r in kpis})
    top = sorted(teams, key=lambda t: -sum(r["complaints_received"] for r in kpis if r["team_id"] == t))[:5]
    received = line_chart(
        periods,
        [
            Series(t, _series([r for r in kpis if r["team_id"] == t], periods, "complaints_received"))
            for t in top
        ],
        title="complaints received per month (largest five)",
    )
    issue_chart = bar_chart(
        [str(i["issue"]) for i in issues],
        [float(i["complaints"]) for i in issues],
        title="top complaint issues",
    )
    return {
        "kpis": kpis,
        "products": products,
        "issues": issues,
        "articles": articles,
        "charts": [received, issue_chart] if kpis else [issue_chart],
        "empty": Markup(""),
    }
