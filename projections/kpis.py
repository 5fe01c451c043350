"""The KPIs, each defined once.

A descriptor says what a KPI column of the `kpi_*` tables is: the measure it reads (see
projections.models.measures_sql), its aggregate over those measure rows or its expression
over other KPIs (a rate is numerator / denominator), its kind, and whether the spec's
`[kpis]` thresholds change it. This one list drives the KPI SQL, spec validation (which
KPIs a component may use), `explain` (which KPIs a measure feeds) and `diff` (which KPIs
are compared), so a new KPI is added here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Kind = Literal["count", "rate", "statistic", "score", "time"]


@dataclass(frozen=True)
class Kpi:
    """One column of the KPI tables."""

    name: str
    kind: Kind
    #: the measure the KPI reads (None for a KPI computed from other KPIs)
    measure: str | None
    #: SQL aggregate over the measure rows; `{name}` placeholders are spec thresholds
    aggregate: str | None = None
    #: rates: the KPI is numerator / denominator (both KPIs of this list)
    numerator: str | None = None
    denominator: str | None = None
    #: SQL over other KPIs for a `score` (or a scaled rate)
    expression: str | None = None
    #: whether the spec's [kpis] thresholds change it
    threshold: bool = False
    #: whether rows of one employee-month in two teams (a mid-month move) add up
    additive: bool = True
    #: whether `diff` compares it between versions
    compared: bool = True
    #: whether a spec's `count` component may reward it
    rewardable: bool = True

    def select(self) -> str:
        """The KPI's SQL in the outer select (over the aggregated columns)."""
        if self.expression is not None:
            return f"{self.expression} AS {self.name}"
        if self.kind == "rate":
            return f"{self.numerator} / nullif({self.denominator}, 0) AS {self.name}"
        return self.name


def _count(
    name: str,
    measure: str,
    condition: str = "",
    *,
    threshold: bool = False,
    compared: bool = True,
    rewardable: bool = True,
) -> Kpi:
    where = f"measure = '{measure}'" + (f" AND {condition}" if condition else "")
    return Kpi(
        name,
        "count",
        measure,
        aggregate=f"count(*) FILTER (WHERE {where})",
        threshold=threshold,
        compared=compared,
        rewardable=rewardable,
    )


def _rate(name: str, numerator: str, denominator: str, *, additive: bool = True) -> Kpi:
    return Kpi(name, "rate", None, numerator=numerator, denominator=denominator, additive=additive)


def _quantile(name: str, q: float) -> Kpi:
    aggregate = f"quantile_cont(value, {q}) FILTER (WHERE measure = 'solved')"
    return Kpi(name, "statistic", "solved", aggregate=aggregate, additive=False)


#: Every KPI column, in table order.
KPIS: tuple[Kpi, ...] = (
    _count("csat_n", "csat", rewardable=False),
    _count("csat_satisfied", "csat", "value >= {csat_satisfied_min}", threshold=True, compared=False),
    Kpi(
        "csat_pct",
        "rate",
        None,
        numerator="csat_satisfied",
        denominator="csat_n",
        expression="100.0 * csat_satisfied / nullif(csat_n, 0)",
        threshold=True,
    ),
    _count("nps_n", "nps", rewardable=False),
    _count("nps_promoters", "nps", "value >= {nps_promoter_min}", threshold=True, compared=False),
    _count("nps_detractors", "nps", "value <= {nps_detractor_max}", threshold=True, compared=False),
    Kpi(
        "nps",
        "score",
        None,
        numerator="nps_promoters",
        denominator="nps_n",
        expression="100.0 * (nps_promoters - nps_detractors) / nullif(nps_n, 0)",
        threshold=True,
    ),
    _count("problems_solved", "solved"),
    _count("fcr_n", "solved", "fcr", compared=False),
    _rate("fcr_rate", "fcr_n", "problems_solved"),
    _quantile("ttr_median_h", 0.5),
    _quantile("ttr_p90_h", 0.9),
    _count("escalations", "escalation"),
    Kpi(
        "cases_handled",
        "count",
        "handled",
        aggregate="count(DISTINCT ref) FILTER (WHERE measure = 'handled')",
        additive=False,
        compared=False,
    ),
    _rate("escalation_rate", "escalations", "cases_handled", additive=False),
    _count("reopened", "solved", "reopened", compared=False),
    _rate("reopen_rate", "reopened", "problems_solved"),
    _count("relationship_attempts", "relationship"),
    _count("compliments", "compliment"),
    _count("articles_created", "article"),
    _count("citations", "citation"),
    _count("links_made", "link"),
    _count("shares", "share"),
    _count("participation_n", "solved", "knowledge", compared=False),
    _rate("participation_rate", "participation_n", "problems_solved"),
    # The service side (projections.service_models): SLA measures of the first resolver,
    # field visits and first-time fixes of the engineer; each measure row marks one act.
    _count("sla_n", "sla", compared=False),
    _count("sla_met", "sla_met", compared=False),
    _rate("sla_met_rate", "sla_met", "sla_n"),
    _count("visits", "visit", compared=False),
    _count("visits_on_time", "visit_on_time", compared=False),
    _rate("on_time_rate", "visits_on_time", "visits"),
    _count("ftf_n", "ftf", compared=False),
    _count("ftf_fixed", "ftf_fixed", compared=False),
    _rate("ftf_rate", "ftf_fixed", "ftf_n"),
    Kpi("last_activity_at", "time", None, aggregate="max(occurred_at)", additive=False, compared=False),
)
BY_NAME: Mapping[str, Kpi] = {k.name: k for k in KPIS}

#: What a spec's components may use: additive counts, and rates of additive counts.
COUNT_KPIS = frozenset(
    k.name for k in KPIS if k.kind == "count" and k.additive and k.compared and k.rewardable
)
RATE_KPIS = frozenset(
    k.name
    for k in KPIS
    if k.kind == "rate"
    and k.additive
    and BY_NAME[k.numerator or ""].additive
    and BY_NAME[k.denominator or ""].additive
)
#: The smoothed CSAT component reads `csat_satisfied` of `csat_n` (see models._component_sql).
BAYESIAN_KPIS = frozenset({"csat"})
#: The additive raw counts an employee-month sums over its team rows.
ADDITIVE_COUNTS = tuple(k.name for k in KPIS if k.kind == "count" and k.additive)
#: The KPI columns the spec's thresholds define.
THRESHOLD_COLUMNS = tuple(k.name for k in KPIS if k.threshold)
#: The KPI columns `diff` compares.
COMPARED_COLUMNS = tuple(k.name for k in KPIS if k.compared)


def measure_kpis() -> dict[str, list[str]]:
    """Which KPIs each measure feeds (directly, or through a rate or score of it)."""
    feeds: dict[str, list[str]] = {}
    for kpi in KPIS:
        if kpi.measure is not None:
            feeds.setdefault(kpi.measure, []).append(kpi.name)
    for kpi in KPIS:
        if kpi.measure is None and kpi.numerator:
            measure = BY_NAME[kpi.numerator].measure
            if measure is not None:
                feeds[measure].append(kpi.name)
    return feeds
