"""The read models, as set-based SQL over a version's `events` table.

Everything here is a pure function of the events and the metric spec, rebuilt in one
transaction, with a fixed row order: replaying the same log gives identical tables.
Definitions follow "Metric definitions v1" in the design; see docs/read-models.md for each column.
"""

from __future__ import annotations

from crm_ledger.kpis import ADDITIVE_COUNTS, BY_NAME, KPIS, Kpi
from projections.goals import goal_model_sql
from projections.readmodels import (
    INTERMEDIATE_TABLES,
    KPI_TABLES,
    MODEL_TABLES,
    SCORE_TABLES,
    SPEC_INDEPENDENT_TABLES,
    STABLE_VIEWS,
)
from projections.service_models import profile_service_sql, service_measures_select, service_model_sql
from projections.spec import KPI_PARAMETERS, Component, MetricSpec

#: The table lists come from the one list of read models (re-exported for existing callers).
__all__ = [
    "INTERMEDIATE_TABLES",
    "KPI_TABLES",
    "MODEL_TABLES",
    "SCORE_TABLES",
    "SPEC_INDEPENDENT_TABLES",
    "STABLE_VIEWS",
]

PROFILE_CHANNELS = ("phone", "email", "chat", "web", "field", "social")
PERIODS = {
    "month": "strftime(occurred_at, '%Y-%m')",
    "week": "strftime(occurred_at, '%G-W%V')",
    "day": "strftime(occurred_at, '%Y-%m-%d')",
}
#: The first day of each grain's period: what an incremental update groups and selects the
#: KPI rows by. Formatting a moment as text costs ~0.1 us, ten times truncating it, and an
#: update filters and groups tens of thousands of rows per table: the text of a period is
#: formatted once per group instead (PERIOD_FORMATS of its first day, the same text as
#: PERIODS gives every moment in it: an ISO week starts on its Monday).
PERIOD_STARTS = {grain: f"CAST(date_trunc('{grain}', occurred_at) AS DATE)" for grain in PERIODS}
PERIOD_FORMATS = {"month": "%Y-%m", "week": "%G-W%V", "day": "%Y-%m-%d"}
assert all(PERIODS[g] == f"strftime(occurred_at, '{f}')" for g, f in PERIOD_FORMATS.items())


def team_history_sql(v: str, ev: str, scope: str = "TRUE") -> str:
    """Team membership over time; `scope` restricts employees (incremental maintenance)."""
    return f"""
SELECT employee_id, team_id, occurred_at AS valid_from
FROM {ev}
WHERE event_type IN ('EmployeeJoined', 'EmployeeMovedTeam') AND ({scope})
QUALIFY row_number() OVER (
    PARTITION BY employee_id, occurred_at ORDER BY notification_id DESC NULLS LAST) = 1
ORDER BY employee_id, valid_from"""


#: Measures that depend on all of a case's events, not just on the event they come from.
CASE_MEASURES = ("solved", "citation")


def measures_sql(v: str, ev: str, scope: str = "TRUE") -> str:
    """One row per measured act, attributed to an employee and their team at that time.

    `scope` is a condition on the columns of `raw` (the rows before their team is
    attached; incremental maintenance); every row depends only on its own event, or
    (CASE_MEASURES) on its case's events, and on the employee's team history. The rows out
    of scope are dropped before the team history is joined: DuckDB does not push the
    condition below the ASOF join, which otherwise attributes every row read (13,656 rows
    for 440 kept in a 1,000-event update at 1M: 54 of the statement's 63 ms). A full build
    (no scope) reads `raw` itself: Spark's optimizer fails on the filtered copy of a union.
    """
    scoped = "" if scope == "TRUE" else f",\nscoped AS (SELECT * FROM raw WHERE {scope})"
    source = "raw" if scope == "TRUE" else "scoped raw"
    return f"""
WITH ev AS (SELECT * FROM {ev}),
first_res AS (
    SELECT * FROM ev WHERE event_type = 'CaseResolved'
    QUALIFY row_number() OVER (PARTITION BY case_id ORDER BY occurred_at, notification_id) = 1
),
opened AS (
    SELECT case_id, min(occurred_at) AS opened_at FROM ev WHERE event_type = 'CaseOpened' GROUP BY case_id
),
reopened AS (
    SELECT DISTINCT r.case_id FROM first_res r
    JOIN ev e ON e.case_id = r.case_id AND e.event_type = 'CaseReopened' AND e.occurred_at > r.occurred_at
),
knowledge AS (
    SELECT case_id FROM ev WHERE event_type = 'ArticleLinked'
    UNION SELECT source_case_id FROM ev WHERE event_type = 'ArticleCreated' AND source_case_id IS NOT NULL
    UNION SELECT case_id FROM first_res WHERE len(article_ids) > 0
),
cited AS (
    SELECT * FROM ev
    WHERE event_type = 'ArticleLinked' AND author_id IS NOT NULL AND employee_id <> author_id
    QUALIFY row_number() OVER (PARTITION BY article_id, case_id ORDER BY occurred_at, notification_id) = 1
),
raw AS (
    SELECT employee_id, occurred_at, 'csat' AS measure, csat::DOUBLE AS value,
           NULL::BOOLEAN AS fcr, NULL::BOOLEAN AS reopened, NULL::BOOLEAN AS knowledge,
           coalesce(case_id, interaction_id) AS ref, event_id, case_id
    FROM ev WHERE event_type = 'SurveyAnswered' AND csat IS NOT NULL AND employee_id IS NOT NULL
    UNION ALL
    SELECT employee_id, occurred_at, 'nps', nps::DOUBLE, NULL, NULL, NULL,
           coalesce(case_id, interaction_id), event_id, case_id
    FROM ev WHERE event_type = 'SurveyAnswered' AND nps IS NOT NULL AND employee_id IS NOT NULL
    UNION ALL
    SELECT r.employee_id, r.occurred_at, 'solved',
           epoch(r.occurred_at - o.opened_at) / 3600.0,
           coalesce(r.first_contact, false), ro.case_id IS NOT NULL, k.case_id IS NOT NULL,
           r.case_id, r.event_id, r.case_id
    FROM first_res r
    LEFT JOIN opened o ON o.case_id = r.case_id
    LEFT JOIN reopened ro ON ro.case_id = r.case_id
    LEFT JOIN (SELECT DISTINCT case_id FROM knowledge) k ON k.case_id = r.case_id
    UNION ALL
    SELECT employee_id, occurred_at, 'escalation', 1, NULL, NULL, NULL, case_id, event_id, case_id
    FROM ev WHERE event_type = 'CaseEscalated'
    UNION ALL
    SELECT employee_id, occurred_at, 'handled', 1, NULL, NULL, NULL, case_id, event_id, case_id
    FROM ev WHERE event_type IN ('CaseAccepted', 'CaseEscalated', 'CaseResolved') AND employee_id IS NOT NULL
    UNION ALL
    SELECT employee_id, occurred_at, 'relationship', 1, NULL, NULL, NULL, customer_id, event_id, case_id
    FROM ev WHERE event_type = 'RelationshipAttemptMade'
    UNION ALL
    SELECT employee_id, occurred_at, 'compliment', 1, NULL, NULL, NULL, customer_id, event_id, case_id
    FROM ev WHERE event_type = 'ComplimentReceived'
    UNION ALL
    SELECT employee_id, occurred_at, 'article', 1, NULL, NULL, NULL, article_id, event_id, case_id
    FROM ev WHERE event_type = 'ArticleCreated'
    UNION ALL
    SELECT author_id, occurred_at, 'citation', 1, NULL, NULL, NULL,
           article_id || ' @ ' || case_id, event_id, case_id
    FROM cited
    UNION ALL
    SELECT employee_id, occurred_at, 'link', 1, NULL, NULL, NULL,
           article_id || ' @ ' || case_id, event_id, case_id
    FROM ev WHERE event_type = 'ArticleLinked'
    UNION ALL
    SELECT employee_id, occurred_at, 'share', 1, NULL, NULL, NULL, article_id, event_id, case_id
    FROM ev WHERE event_type = 'KnowledgeShared'
){scoped}
SELECT raw.employee_id, coalesce(th.team_id, '(none)') AS team_id, raw.occurred_at,
       raw.measure, raw.value, raw.fcr, raw.reopened, raw.knowledge, raw.ref, raw.event_id, raw.case_id
FROM {source}
ASOF LEFT JOIN {v}.team_history th
    ON raw.employee_id = th.employee_id AND raw.occurred_at >= th.valid_from"""


def kpi_select(v: str, spec: MetricSpec, grain: str, team: bool, where: str = "TRUE") -> str:
    """A KPI table's rows; `where` restricts the measures (incremental maintenance)."""
    return _kpi_select(v, spec, "team_id" if team else "employee_id, team_id", PERIODS[grain], where)


def kpi_aggregates(spec: MetricSpec, kpis: tuple[Kpi, ...]) -> str:
    """The aggregate columns of `kpis` under `spec`'s thresholds (KPIs without one are left out)."""
    return ",\n        ".join(
        f"{k.aggregate.format(**spec.kpis)} AS {k.name}" for k in kpis if k.aggregate is not None
    )


def _kpi_select(v: str, spec: MetricSpec, keys: str, period: str, where: str = "TRUE") -> str:
    """Every KPI of crm_ledger.kpis per keys and period: aggregates, then rates and scores."""
    return f"""
WITH counts AS (
    SELECT {keys}, {period} AS period,
        {kpi_aggregates(spec, KPIS)}
    FROM {v}.measures
    WHERE {where}
    GROUP BY ALL
)
SELECT {keys}, period,
    {", ".join(k.select() for k in KPIS)}
FROM counts
ORDER BY {keys}, period"""


# The spec's [kpis] parameters are thresholds read by threshold KPIs only
# (kpi_rethreshold_select relies on it).
assert {p for k in KPIS if k.threshold and k.aggregate for p in KPI_PARAMETERS if p in k.aggregate} == set(
    KPI_PARAMETERS
)
assert not any(p in (k.aggregate or "") for k in KPIS if not k.threshold for p in KPI_PARAMETERS)


#: A per-day histogram of the answers the threshold KPIs read (kpi_rethreshold_select).
ANSWERS = "crm_answers"


def answers_histogram_sql(measures: str) -> str:
    """Survey answers counted per employee, team, day, measure and value (a temp table)."""
    read = ", ".join(sorted({f"'{k.measure}'" for k in KPIS if k.threshold and k.aggregate}))
    return (
        f"CREATE OR REPLACE TEMP TABLE {ANSWERS} AS SELECT employee_id, team_id, "
        "CAST(occurred_at AS DATE) AS occurred_at, measure, value, count(*) AS n "
        f"FROM {measures}.measures WHERE measure IN ({read}) GROUP BY ALL"
    )


def kpi_rethreshold_select(base: str, spec: MetricSpec, grain: str, team: bool) -> str:
    """A KPI table under other thresholds: `base`'s rows with the threshold KPIs recomputed.

    Reads the per-day histogram of answers (answers_histogram_sql) instead of every
    measure. Identical to kpi_select over the same measures: each threshold KPI is a
    `count(*) FILTER (...)` over answer rows, and the filter reads only the measure and
    the value, so the sum of the histogram's counts under the same filter is the same
    count; a day lies in exactly one week and month; the rates and scores are the same
    expressions from crm_ledger.kpis over the same counts.
    """
    keys = "team_id" if team else "employee_id, team_id"
    table = f"kpi_{'team' if team else 'employee'}_{grain}"
    counted = tuple(k for k in KPIS if k.threshold and k.aggregate is not None)
    derived = tuple(k for k in KPIS if k.threshold and k.aggregate is None)
    summed = {
        k.name: (k.aggregate or "").replace("count(*)", "sum(n)", 1).format(**spec.kpis) for k in counted
    }
    sums = ",\n        ".join(f"CAST({sql} AS BIGINT) AS {name}" for name, sql in summed.items())
    return f"""
WITH h AS (
    SELECT {keys}, {PERIODS[grain]} AS period,
        {sums}
    FROM {ANSWERS} GROUP BY ALL
),
joined AS (
    SELECT b.* REPLACE ({", ".join(f"coalesce(h.{k.name}, 0) AS {k.name}" for k in counted)})
    FROM {base}.{table} b LEFT JOIN h USING ({keys}, period)
)
SELECT * REPLACE ({", ".join(k.select() for k in derived)})
FROM joined
ORDER BY {keys}, period"""


assert all((k.aggregate or "").startswith("count(*) FILTER") for k in KPIS if k.threshold and k.aggregate)


def kpi_sql(v: str, spec: MetricSpec) -> list[str]:
    statements = []
    for grain in PERIODS:
        for team in (False, True):
            table = f"kpi_{'team' if team else 'employee'}_{grain}"
            statements.append(f"CREATE OR REPLACE TABLE {v}.{table} AS " + kpi_select(v, spec, grain, team))
    return statements


def _component_sql(c: Component) -> str:
    """SELECT of one component: kpi_value, sample_n and value in [0, 1] per employee-month."""
    name, weight = c.name, repr(c.weight)
    if c.kind == "count":
        kpi_value = f"e.{c.kpi}::DOUBLE"
        value = f"least(e.{c.kpi} / {c.cap!r}, 1.0)"
        sample = f"e.{c.kpi}"
        cap = repr(c.cap)
    elif c.kind == "bayesian":
        # (C*m + satisfied) / (C + n): small samples are pulled toward the team's rate m.
        prior = repr(c.prior_strength)
        team_rate = "coalesce(t.csat_satisfied / nullif(t.csat_n, 0), o.csat_rate, 0.0)"
        kpi_value = "e.csat_satisfied / nullif(e.csat_n, 0)"
        value = (
            f"coalesce(({prior} * {team_rate} + e.csat_satisfied) / nullif({prior} + e.csat_n, 0), "
            f"{team_rate})"
        )
        sample = "e.csat_n"
        cap = "NULL"
    else:
        numerator, denominator = BY_NAME[c.kpi].numerator, BY_NAME[c.kpi].denominator
        own = f"e.{numerator} / nullif(e.{denominator}, 0)"
        team = f"coalesce(t.{numerator} / nullif(t.{denominator}, 0), 0.0)"
        rate = (
            f"CASE WHEN e.{denominator} >= {c.min_sample} AND e.{denominator} > 0 THEN {own} ELSE {team} END"
        )
        value = f"(1.0 - {rate})" if c.invert else rate
        kpi_value = own
        sample = f"e.{denominator}"
        cap = "NULL"
    return f"""
    SELECT e.employee_id, e.period, e.team_id, '{name}' AS component, '{c.kind}' AS kind,
           '{c.kpi}' AS kpi, {kpi_value} AS kpi_value, {sample}::BIGINT AS sample_n,
           {weight}::DOUBLE AS weight, {cap}::DOUBLE AS cap, {value} AS value
    FROM emp e
    LEFT JOIN {{v}}.kpi_team_month t ON t.team_id = e.team_id AND t.period = e.period
    LEFT JOIN org o ON o.period = e.period"""


def reward_components_select(v: str, spec: MetricSpec, where: str = "TRUE") -> str:
    """reward_components rows (long, explainable); `where` restricts periods."""
    parts = "\n    UNION ALL".join(_component_sql(c) for c in spec.components).replace("{v}", v)
    return f"""
WITH emp AS (
    SELECT employee_id, period,
        arg_max(team_id, last_activity_at) AS team_id,
        {", ".join(f"sum({name}) AS {name}" for name in ADDITIVE_COUNTS)}
    FROM {v}.kpi_employee_month WHERE {where} GROUP BY employee_id, period
),
org AS (
    SELECT period, sum(csat_satisfied) / nullif(sum(csat_n), 0) AS csat_rate
    FROM {v}.kpi_team_month GROUP BY period
),
parts AS ({parts}
)
SELECT *, weight * value AS weighted FROM parts
ORDER BY employee_id, period, component"""


def reward_score_select(v: str, spec: MetricSpec, version: str, where: str = "TRUE") -> str:
    """reward_score rows (one per employee-month) from reward_components."""
    pivot = ",\n    ".join(
        f"max(value) FILTER (WHERE component = '{c.name}') AS {c.name}" for c in spec.components
    )
    # Summed in spec order by one expression: a float SUM() would depend on row order.
    total = " + ".join(f"{c.weight!r} * {c.name}" for c in spec.components)
    return f"""
WITH pivoted AS (
    SELECT employee_id, period, any_value(team_id) AS team_id,
        {pivot}
    FROM {v}.reward_components
    WHERE {where}
    GROUP BY employee_id, period
)
SELECT employee_id, period, team_id, 100.0 * ({total}) AS score,
    '{version}' AS spec_version, '{spec.name.replace("'", "''")}' AS spec_name,
    {", ".join(c.name for c in spec.components)}
FROM pivoted
ORDER BY employee_id, period"""


def reward_sql(v: str, spec: MetricSpec, version: str) -> list[str]:
    """reward_components (long, explainable) and reward_score (one row per employee-month)."""
    return [
        f"CREATE OR REPLACE TABLE {v}.reward_components AS {reward_components_select(v, spec)}",
        f"CREATE OR REPLACE TABLE {v}.reward_score AS {reward_score_select(v, spec, version)}",
    ]


_CONTACTS = (
    "'InteractionRecorded', 'CaseOpened', 'RelationshipAttemptMade', 'SurveyAnswered', 'ComplimentReceived'"
)
_DETAILS = "'CustomerRegistered', 'CustomerDetailsChanged'"


def _slope(column: str) -> str:
    """Least-squares slope of `column` per 30 days, from exact integer sums.

    DuckDB's regr_slope accumulates floats in whatever order rows arrive, which differs
    between sources and runs; integer sums make the trend reproducible to the bit.
    """
    x = "(epoch_ms(occurred_at) // 1000)::HUGEINT"
    y = f"{column}::HUGEINT"
    n = f"count({column})::HUGEINT"
    sxy = f"sum({x} * {y}) FILTER (WHERE {column} IS NOT NULL)"
    sx = f"sum({x}) FILTER (WHERE {column} IS NOT NULL)"
    sy = f"sum({y})"
    sxx = f"sum({x} * {x}) FILTER (WHERE {column} IS NOT NULL)"
    return (
        f"CASE WHEN count({column}) > 1 AND ({n} * {sxx} - {sx} * {sx}) <> 0 THEN "
        f"(({n} * {sxy} - {sx} * {sy})::DOUBLE / ({n} * {sxx} - {sx} * {sx})::DOUBLE) * 2592000.0 END"
    )


def customer_profile_select(ev: str, scope: str = "TRUE") -> str:
    """customer_profile rows; `scope` restricts customers (a condition on `customer_id`)."""
    by_channel = ",\n    ".join(
        f"count(*) FILTER (WHERE event_type = 'InteractionRecorded' AND channel = '{c}') AS interactions_{c}"
        for c in PROFILE_CHANNELS
    )
    return f"""
WITH ev AS (SELECT * FROM {ev} WHERE customer_id IS NOT NULL AND ({scope})),
case_state AS (
    SELECT case_id, customer_id, arg_max(event_type, (occurred_at, notification_id)) AS last_step,
           any_value(kind) FILTER (WHERE event_type = 'CaseOpened') AS kind
    FROM ev WHERE event_type LIKE 'Case%' AND case_id IS NOT NULL
    GROUP BY case_id, customer_id
),
cases AS (
    SELECT customer_id, count(*) AS cases_total,
           count(*) FILTER (WHERE last_step NOT IN ('CaseResolved', 'CaseClosed')) AS open_cases,
           count(*) FILTER (WHERE kind = 'complaint') AS complaints
    FROM case_state GROUP BY customer_id
),
surveys AS (
    SELECT customer_id,
        arg_max(csat, (occurred_at, notification_id)) FILTER (WHERE csat IS NOT NULL) AS csat_latest,
        avg(csat) AS csat_avg,
        {_slope("csat")} AS csat_trend,
        arg_max(nps, (occurred_at, notification_id)) FILTER (WHERE nps IS NOT NULL) AS nps_latest,
        avg(nps) AS nps_avg,
        {_slope("nps")} AS nps_trend,
        count(*) AS surveys
    FROM ev WHERE event_type = 'SurveyAnswered' GROUP BY customer_id
),
activity AS (
    SELECT customer_id,
    count(*) FILTER (WHERE event_type = 'InteractionRecorded') AS interactions_total,
    {by_channel},
    min(occurred_at) FILTER (WHERE event_type IN ({_CONTACTS})) AS first_contact_at,
    max(occurred_at) FILTER (WHERE event_type IN ({_CONTACTS})) AS last_contact_at,
    count(*) FILTER (WHERE event_type = 'RelationshipAttemptMade') AS relationship_attempts,
    count(*) FILTER (WHERE event_type = 'ComplimentReceived') AS compliments,
    arg_max(segment, (occurred_at, notification_id))
        FILTER (WHERE event_type IN ({_DETAILS}) AND segment IS NOT NULL) AS segment,
    arg_max(region, (occurred_at, notification_id))
        FILTER (WHERE event_type IN ({_DETAILS}) AND region IS NOT NULL) AS region,
    min(occurred_at) FILTER (WHERE event_type = 'CustomerRegistered') AS registered_at,
    bool_or(event_type = 'CustomerForgotten') AS forgotten
    FROM ev GROUP BY customer_id
)
SELECT a.customer_id, a.segment, a.region, a.registered_at, coalesce(a.forgotten, false) AS forgotten,
    a.interactions_total, {", ".join(f"a.interactions_{c}" for c in PROFILE_CHANNELS)},
    a.first_contact_at, a.last_contact_at,
    coalesce(c.cases_total, 0) AS cases_total, coalesce(c.open_cases, 0) AS open_cases,
    coalesce(c.complaints, 0) AS complaints,
    s.csat_latest, s.csat_avg, s.csat_trend, s.nps_latest, s.nps_avg, s.nps_trend,
    coalesce(s.surveys, 0) AS surveys,
    a.relationship_attempts, a.compliments
FROM activity a
LEFT JOIN cases c ON c.customer_id = a.customer_id
LEFT JOIN surveys s ON s.customer_id = a.customer_id
ORDER BY a.customer_id"""


_RELIEF = "'monetary_relief', 'non_monetary_relief', 'relief'"


def complaint_kpi_select(ev: str, scope: str = "TRUE") -> str:
    """Complaint KPIs per responsible team and month, also split by channel and by product.

    Rows with channel = '(all)' and product = '(all)' are the team's month; the others
    split it by one dimension. Shares are of the complaints received in the month. `scope`
    restricts (team_id, period) of the opening (incremental maintenance).
    """
    return f"""
WITH opened AS (
    SELECT case_id, team_id, occurred_at AS received_at, channel, coalesce(topic, '(none)') AS product
    FROM {ev}
    WHERE event_type = 'CaseOpened' AND kind = 'complaint' AND team_id IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY case_id ORDER BY occurred_at, notification_id) = 1
),
sent AS (
    SELECT case_id, min(occurred_at) AS sent_at, arg_min(timely, (occurred_at, notification_id)) AS timely
    FROM {ev} WHERE event_type = 'CaseAccepted' GROUP BY case_id
),
resolved AS (
    SELECT case_id, arg_min(resolution_code, (occurred_at, notification_id)) AS code
    FROM {ev} WHERE event_type = 'CaseResolved' GROUP BY case_id
),
base AS (
    SELECT o.*, strftime(o.received_at, '%Y-%m') AS period, s.sent_at, s.timely, r.code
    FROM opened o LEFT JOIN sent s ON s.case_id = o.case_id LEFT JOIN resolved r ON r.case_id = o.case_id
),
counts AS (
    SELECT team_id, period,
        CASE WHEN grouping(channel) = 1 THEN '(all)' ELSE channel END AS channel,
        CASE WHEN grouping(product) = 1 THEN '(all)' ELSE product END AS product,
        count(*) AS complaints_received,
        count(*) FILTER (WHERE code IS NOT NULL) AS closed,
        count(*) FILTER (WHERE code IN ({_RELIEF})) AS closed_with_relief,
        count(*) FILTER (WHERE code = 'monetary_relief') AS monetary_relief,
        count(timely) AS timely_n,
        count(*) FILTER (WHERE timely) AS timely_yes,
        count(sent_at) AS sent_n,
        quantile_cont(epoch(sent_at - received_at) / 86400.0, 0.5) AS median_days_to_company
    FROM base
    WHERE {scope}
    GROUP BY GROUPING SETS ((team_id, period), (team_id, period, channel), (team_id, period, product))
)
SELECT team_id, period, channel, product, complaints_received, closed,
    closed_with_relief, closed_with_relief / complaints_received AS relief_rate,
    monetary_relief, monetary_relief / complaints_received AS monetary_relief_rate,
    timely_n, timely_yes, timely_yes / nullif(timely_n, 0) AS timely_rate,
    sent_n, median_days_to_company
FROM counts
ORDER BY team_id, period, channel, product"""


def reward_statement_select(log: str, scope: str = "TRUE") -> str:
    """Issued statements and adjustments (ledger facts, not derived scores), with running totals.

    Reads the log itself (it needs the payload); `scope` restricts (employee_id, period).
    """
    return f"""
WITH issued AS (
    SELECT employee_id, period, notification_id, event_id, occurred_at AS issued_at,
        CASE WHEN event_type = 'RewardStatementIssued' THEN 'statement' ELSE 'adjustment' END AS kind,
        CASE WHEN event_type = 'RewardStatementIssued' THEN score
             ELSE (payload ->> 'new_score')::DOUBLE END AS score,
        CASE WHEN event_type = 'RewardStatementIssued' THEN NULL
             ELSE (payload ->> 'old_score')::DOUBLE END AS old_score,
        CASE WHEN event_type = 'RewardStatementIssued' THEN score
             ELSE (payload ->> 'delta')::DOUBLE END AS amount,
        coalesce(payload ->> 'new_version', payload ->> 'version') AS version,
        payload ->> 'reason' AS reason
    FROM {log}
    WHERE event_type IN ('RewardStatementIssued', 'RewardAdjustmentIssued') AND ({scope})
)
SELECT employee_id, period, kind, score, old_score, amount,
    sum(amount) OVER (PARTITION BY employee_id, period ORDER BY notification_id) AS running_total,
    version, reason, issued_at, event_id, notification_id
FROM issued
ORDER BY employee_id, period, notification_id"""


def spec_independent_sql(v: str, ev: str, log: str) -> list[str]:
    """The tables that depend on the log only, never on the metric spec.

    The service tables (projections.service_models) read `{v}.events`, the version's view of
    the whole log with its payload; `ev` may be a subset (see projections.maintain).
    """
    return [
        f"CREATE OR REPLACE TABLE {v}.team_history AS {team_history_sql(v, ev)}",
        *service_model_sql(v),
        f"CREATE OR REPLACE TABLE {v}.measures AS {measures_sql(v, ev)}",
        f"INSERT INTO {v}.measures {service_measures_select(v)}",
        f"CREATE OR REPLACE TABLE {v}.customer_profile AS {customer_profile_select(ev)}",
        profile_service_sql(v),
        f"CREATE OR REPLACE TABLE {v}.complaint_kpi_month AS {complaint_kpi_select(ev)}",
        f"CREATE OR REPLACE TABLE {v}.reward_statement AS {reward_statement_select(log)}",
    ]


def scores_sql(v: str, spec: MetricSpec, version: str) -> list[str]:
    """The score tables (projections.readmodels, layer "scores"): rewards, then team goals.

    The goal tables read the version's `events` (the shared log), `kpi_team_month` and the
    rewards; they are cheap and always rebuilt whole, after the rewards.
    """
    return [*reward_sql(v, spec, version), *goal_model_sql(v)]


def spec_dependent_sql(v: str, spec: MetricSpec, version: str) -> list[str]:
    """The tables a metric spec defines, from `measures` (KPIs) and the KPIs (scores)."""
    return [*kpi_sql(v, spec), *scores_sql(v, spec, version)]


def all_model_sql(v: str, spec: MetricSpec, version: str, ev: str, log: str) -> list[str]:
    """Every statement that rebuilds a version's read models, in dependency order.

    `ev` holds the decoded events the version reflects (typed columns), `log` the same
    rows with their payload.
    """
    return [*spec_independent_sql(v, ev, log), *spec_dependent_sql(v, spec, version)]


def scores_only_sql(v: str, spec: MetricSpec, version: str) -> list[str]:
    """Recompute only the scores from existing KPI tables (weights, caps, smoothing changed)."""
    return scores_sql(v, spec, version)
