"""The KPIs, each defined once.

A descriptor says what a KPI column of the `kpi_*` tables is: the measure it reads (see
projections.models.measures_sql), its aggregate over those measure rows or its expression
over other KPIs (a rate is numerator / denominator), its kind, the values it can take, and
whether the spec's `[kpis]` thresholds change it. This one list drives the KPI SQL, spec
validation (which KPIs a component may use), `explain` (which KPIs a measure feeds), `diff`
(which KPIs are compared) and the targets a team goal may set, so a new KPI is added here
and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Kind = Literal["count", "rate", "statistic", "score", "time"]


@dataclass(frozen=True)
class Range:
    """The values a KPI (or a score) can take: from `low` to `high`, None where unbounded."""

    low: float | None = None
    high: float | None = None

    def holds(self, value: float) -> bool:
        """Whether `value` is a finite number inside the range (NaN and infinities never are)."""
        return (
            math.isfinite(value)
            and (self.low is None or value >= self.low)
            and (self.high is None or value <= self.high)
        )

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"from {self.low:g} to {self.high:g}"
        if self.low is not None:
            return f"{self.low:g} or more"
        if self.high is not None:
            return f"{self.high:g} or less"
        return "any finite number"


#: Counts and durations are never negative; a rate is a share from 0 to 1.
COUNT_RANGE = Range(0.0, None)
RATE_RANGE = Range(0.0, 1.0)
PERCENT_RANGE = Range(0.0, 100.0)
#: A reward score is 100 x the weighted sum of components in 0..1, weights summing to 1.
SCORE_RANGE = PERCENT_RANGE
#: A reward component's value (a capped count, a rate, a smoothed rate).
COMPONENT_RANGE = RATE_RANGE


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
    #: how pages and messages name it (the column name when None)
    label: str | None = None
    #: whether a fall is the improvement (times to resolve, escalations, reopens)
    lower_is_better: bool = False
    #: the values it can take (what a team goal's target must lie in)
    values: Range = Range()

    @property
    def title(self) -> str:
        """The KPI's name for people."""
        return self.label or self.name

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
    label: str | None = None,
    lower_is_better: bool = False,
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
        label=label,
        lower_is_better=lower_is_better,
        values=COUNT_RANGE,
    )


def _rate(
    name: str,
    numerator: str,
    denominator: str,
    *,
    additive: bool = True,
    label: str | None = None,
    lower_is_better: bool = False,
) -> Kpi:
    return Kpi(
        name,
        "rate",
        None,
        numerator=numerator,
        denominator=denominator,
        additive=additive,
        label=label,
        lower_is_better=lower_is_better,
        values=RATE_RANGE,
    )


def _quantile(name: str, q: float, label: str) -> Kpi:
    aggregate = f"quantile_cont(value, {q}) FILTER (WHERE measure = 'solved')"
    return Kpi(
        name,
        "statistic",
        "solved",
        aggregate=aggregate,
        additive=False,
        label=label,
        lower_is_better=True,
        values=COUNT_RANGE,  # hours: a duration
    )


#: Every KPI column, in table order.
KPIS: tuple[Kpi, ...] = (
    _count("csat_n", "csat", rewardable=False, label="survey answers"),
    _count("csat_satisfied", "csat", "value >= {csat_satisfied_min}", threshold=True, compared=False),
    Kpi(
        "csat_pct",
        "rate",
        None,
        numerator="csat_satisfied",
        denominator="csat_n",
        expression="100.0 * csat_satisfied / nullif(csat_n, 0)",
        threshold=True,
        label="CSAT % satisfied",
        values=PERCENT_RANGE,
    ),
    _count("nps_n", "nps", rewardable=False, label="NPS answers"),
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
        label="NPS",
        values=Range(-100.0, 100.0),  # % promoters minus % detractors
    ),
    _count("problems_solved", "solved", label="problems solved"),
    _count("fcr_n", "solved", "fcr", compared=False),
    _rate("fcr_rate", "fcr_n", "problems_solved", label="first-contact resolution"),
    _quantile("ttr_median_h", 0.5, "median hours to resolve"),
    _quantile("ttr_p90_h", 0.9, "p90 hours to resolve"),
    _count("escalations", "escalation", label="escalations", lower_is_better=True),
    Kpi(
        "cases_handled",
        "count",
        "handled",
        aggregate="count(DISTINCT ref) FILTER (WHERE measure = 'handled')",
        additive=False,
        compared=False,
        values=COUNT_RANGE,
    ),
    _rate(
        "escalation_rate",
        "escalations",
        "cases_handled",
        additive=False,
        label="escalation rate",
        lower_is_better=True,
    ),
    _count("reopened", "solved", "reopened", compared=False),
    _rate("reopen_rate", "reopened", "problems_solved", label="reopen rate", lower_is_better=True),
    _count("relationship_attempts", "relationship", label="relationship attempts"),
    _count("compliments", "compliment", label="compliments"),
    _count("articles_created", "article", label="articles created"),
    _count("citations", "citation", label="citations"),
    _count("links_made", "link", label="links made"),
    _count("shares", "share", label="shares"),
    _count("participation_n", "solved", "knowledge", compared=False),
    _rate("participation_rate", "participation_n", "problems_solved", label="knowledge participation"),
    # The service side (projections.service_models): SLA measures of the first resolver,
    # field visits and first-time fixes of the engineer; each measure row marks one act.
    _count("sla_n", "sla", compared=False),
    _count("sla_met", "sla_met", compared=False),
    _rate("sla_met_rate", "sla_met", "sla_n", label="SLAs met"),
    _count("visits", "visit", compared=False),
    _count("visits_on_time", "visit_on_time", compared=False),
    _rate("on_time_rate", "visits_on_time", "visits", label="visits on time"),
    _count("ftf_n", "ftf", compared=False),
    _count("ftf_fixed", "ftf_fixed", compared=False),
    _rate("ftf_rate", "ftf_fixed", "ftf_n", label="first-time fixes"),
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
#: The team KPI columns a team goal may gauge: those `diff` compares (the KPI contract's names).
GOAL_KPIS = frozenset(COMPARED_COLUMNS)


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
