"""Team goals and the evidence of what works, as SQL over a version's events and KPI tables.

Read models (one set per version, so a metric replay re-gauges every goal):
- `team_goal`: one row per goal, its current terms and status.
- `team_goal_progress`: one row per goal and month of its range: the target in force that
  month, the team's actual value, whether it was met, and the change from the month before.
- `team_evidence_month`: practice next to outcome per team and month, with month-over-month
  changes and the goals that started that month.
- `team_evidence_correlation`: Spearman's rank correlation between month-over-month changes
  of each practice and each outcome, per team and pooled over all teams, with its sample size.
- `team_goal_effect`: per goal and measure, the mean of the three months before the goal
  started against the mean of its months so far.

The evidence is descriptive: correlations and before/after means, never a causal claim.
Everything depends on `kpi_team_month`, `reward_score` and `reward_components`, so it is
rebuilt with the scores (`goal_model_sql`), including in weights-only versions.
"""

from __future__ import annotations

from crm_ledger.kpis import GOAL_KPIS
from ledger.goals import COMPONENT_PREFIX, SCORE
from projections.ranks import average_rank

GOAL_TABLES = (
    "team_goal",
    "team_goal_progress",
    "team_evidence_month",
    "team_evidence_correlation",
    "team_goal_effect",
)
#: Knowledge and relationship practices, and the customer outcomes put next to them.
PRACTICES = ("participation_rate", "citations", "relationship_attempts")
OUTCOMES = ("csat_pct", "fcr_rate", "ttr_median_h")
#: How many months before a goal's start form its "before" mean.
BEFORE_MONTHS = 3
#: The events a team goal is made of, as an SQL list.
GOAL_EVENTS = "('TeamGoalSet', 'TeamGoalRevised', 'TeamGoalClosed')"


def _month(expr: str) -> str:
    """A `YYYY-MM` text as the first day of that month."""
    return f"strptime({expr} || '-01', '%Y-%m-%d')::DATE"


def team_goal_sql(v: str, events: str | None = None) -> str:
    return f"""
CREATE OR REPLACE TABLE {v}.team_goal AS
WITH ev AS (
    SELECT event_type, event_id, occurred_at, notification_id,
        payload ->> 'goal_id' AS goal_id, payload ->> 'team_id' AS team_id, payload ->> 'kpi' AS kpi,
        TRY_CAST(payload ->> 'target' AS DOUBLE) AS target, payload ->> 'comparison' AS comparison,
        payload ->> 'from_period' AS from_period, payload ->> 'to_period' AS to_period,
        from_json(payload -> 'agreed_by', '["VARCHAR"]') AS agreed_by,
        payload ->> 'note' AS note, payload ->> 'outcome' AS outcome
    FROM {events or f"{v}.events"} WHERE event_type IN {GOAL_EVENTS}
),
set_ AS (
    SELECT * FROM ev WHERE event_type = 'TeamGoalSet'
    QUALIFY row_number() OVER (PARTITION BY goal_id ORDER BY occurred_at, notification_id) = 1
),
terms AS (
    SELECT goal_id,
        arg_max(target, (occurred_at, notification_id)) FILTER (WHERE target IS NOT NULL) AS target,
        arg_max(comparison, (occurred_at, notification_id))
            FILTER (WHERE comparison IS NOT NULL) AS comparison,
        arg_max(to_period, (occurred_at, notification_id)) FILTER (WHERE to_period IS NOT NULL) AS to_period,
        count(*) FILTER (WHERE event_type = 'TeamGoalRevised') AS revisions,
        max(occurred_at) FILTER (WHERE event_type = 'TeamGoalRevised') AS last_revised_at
    FROM ev WHERE event_type <> 'TeamGoalClosed' GROUP BY goal_id
),
closed AS (
    SELECT goal_id, occurred_at AS closed_at, outcome, note AS closing_note FROM ev
    WHERE event_type = 'TeamGoalClosed'
    QUALIFY row_number() OVER (PARTITION BY goal_id ORDER BY occurred_at, notification_id) = 1
)
SELECT s.goal_id, s.team_id, s.kpi, t.comparison, t.target, s.target AS initial_target,
    s.from_period, t.to_period, list_sort(s.agreed_by) AS agreed_by, s.note, s.occurred_at AS set_at,
    t.revisions, t.last_revised_at,
    CASE WHEN c.goal_id IS NULL THEN 'open' ELSE 'closed' END AS status,
    c.outcome, c.closed_at, c.closing_note
FROM set_ s JOIN terms t ON t.goal_id = s.goal_id LEFT JOIN closed c ON c.goal_id = s.goal_id
ORDER BY s.team_id, s.from_period, s.goal_id"""


def _actual() -> str:
    """The team's value of the goal's KPI in a month, from the KPI and score tables."""
    kpis = "\n".join(f"        WHEN '{k}' THEN k.{k}::DOUBLE" for k in sorted(GOAL_KPIS))
    return f"""CASE
        WHEN g.kpi = '{SCORE}' THEN s.mean_score
        WHEN g.kpi LIKE '{COMPONENT_PREFIX}%' THEN c.mean_value
        ELSE CASE g.kpi
{kpis}
        END
    END"""


def team_goal_progress_sql(v: str, events: str | None = None) -> str:
    return f"""
CREATE OR REPLACE TABLE {v}.team_goal_progress AS
WITH months AS (
    SELECT g.goal_id, strftime(m, '%Y-%m') AS period
    FROM {v}.team_goal g,
    unnest(generate_series({_month("g.from_period")},
        CASE WHEN g.closed_at IS NULL THEN {_month("g.to_period")}
             ELSE least({_month("g.to_period")}, date_trunc('month', g.closed_at)::DATE) END,
        INTERVAL 1 MONTH)) AS t(m)
),
changes AS (
    -- The setting applies from the first month; a revision from the month it was agreed on.
    SELECT payload ->> 'goal_id' AS goal_id,
        CASE WHEN event_type = 'TeamGoalSet' THEN '0000-00' ELSE strftime(occurred_at, '%Y-%m') END AS since,
        TRY_CAST(payload ->> 'target' AS DOUBLE) AS target, payload ->> 'comparison' AS comparison,
        occurred_at, notification_id
    FROM {events or f"{v}.events"} WHERE event_type IN ('TeamGoalSet', 'TeamGoalRevised')
),
in_force AS (
    SELECT m.goal_id, m.period,
        arg_max(ch.target, (ch.since, ch.occurred_at, ch.notification_id))
            FILTER (WHERE ch.target IS NOT NULL) AS target,
        arg_max(ch.comparison, (ch.since, ch.occurred_at, ch.notification_id))
            FILTER (WHERE ch.comparison IS NOT NULL) AS comparison
    FROM months m JOIN changes ch ON ch.goal_id = m.goal_id AND ch.since <= m.period
    GROUP BY m.goal_id, m.period
),
scores AS (
    SELECT team_id, period, avg(score) AS mean_score FROM {v}.reward_score GROUP BY team_id, period
),
components AS (
    SELECT team_id, period, '{COMPONENT_PREFIX}' || component AS kpi, avg(value) AS mean_value
    FROM {v}.reward_components GROUP BY team_id, period, component
),
gauged AS (
    SELECT g.team_id, g.goal_id, f.period, g.kpi, f.target, f.comparison, {_actual()} AS actual
    FROM in_force f
    JOIN {v}.team_goal g ON g.goal_id = f.goal_id
    LEFT JOIN {v}.kpi_team_month k ON k.team_id = g.team_id AND k.period = f.period
    LEFT JOIN scores s ON s.team_id = g.team_id AND s.period = f.period
    LEFT JOIN components c ON c.team_id = g.team_id AND c.period = f.period AND c.kpi = g.kpi
)
SELECT team_id, goal_id, period, kpi, target, comparison, actual,
    CASE WHEN actual IS NULL THEN NULL
         WHEN comparison = 'at_most' THEN actual <= target
         ELSE actual >= target END AS met,
    actual - lag(actual) OVER (PARTITION BY goal_id ORDER BY period) AS trend,
    actual - target AS gap
FROM gauged
ORDER BY team_id, goal_id, period"""


def _delta(column: str) -> str:
    # Only between consecutive calendar months: a gap month gives no delta.
    return (
        f"CASE WHEN lag(period) OVER w = strftime({_month('period')} - INTERVAL 1 MONTH, '%Y-%m') "
        f"THEN {column} - lag({column}) OVER w END AS d_{column}"
    )


def team_evidence_month_sql(v: str) -> str:
    measures = (*PRACTICES, *OUTCOMES)
    return f"""
CREATE OR REPLACE TABLE {v}.team_evidence_month AS
WITH base AS (
    SELECT k.team_id, k.period, k.problems_solved, k.csat_n,
        {", ".join(f"k.{m}::DOUBLE AS {m}" for m in measures)}
    FROM {v}.kpi_team_month k
),
starts AS (
    SELECT team_id, from_period AS period, count(*) AS goals_started,
        string_agg(goal_id, ', ' ORDER BY goal_id) AS goal_ids
    FROM {v}.team_goal GROUP BY team_id, from_period
),
joined AS (
    SELECT b.*, coalesce(s.goals_started, 0) AS goals_started, s.goal_ids AS goals_started_ids
    FROM base b LEFT JOIN starts s ON s.team_id = b.team_id AND s.period = b.period
)
SELECT team_id, period, problems_solved, csat_n, {", ".join(measures)},
    {", ".join(_delta(m) for m in measures)},
    goals_started, goals_started_ids
FROM joined
WINDOW w AS (PARTITION BY team_id ORDER BY period)
ORDER BY team_id, period"""


def _exact_corr(x: str, y: str) -> str:
    """Pearson's r of two rank columns, from exact integer sums.

    Ranks are multiples of 1/2, so twice a rank is an integer: the sums are exact and the
    result does not depend on the order rows arrive in (DuckDB's float `corr` does, in its
    last bits). NaN when a column is constant, as `corr` gives.
    """
    a, b = f"(2 * {x})::HUGEINT", f"(2 * {y})::HUGEINT"
    n = "count(*)::HUGEINT"
    cov = f"({n} * sum({a} * {b}) - sum({a}) * sum({b}))"
    var_a = f"({n} * sum({a} * {a}) - sum({a}) * sum({a}))"
    var_b = f"({n} * sum({b} * {b}) - sum({b}) * sum({b}))"
    return (
        f"CASE WHEN {var_a} = 0 OR {var_b} = 0 THEN 'NaN'::DOUBLE "
        f"ELSE {cov}::DOUBLE / sqrt({var_a}::DOUBLE * {var_b}::DOUBLE) END"
    )


def team_evidence_correlation_sql(v: str) -> str:
    # Every (practice, outcome) pair of a row in one scan of the months: a union of one
    # scan per pair cost ~3-6 ms more a refresh, for the same rows.
    values = ", ".join(f"('{p}', '{o}')" for p in PRACTICES for o in OUTCOMES)
    x = "CASE k.practice " + " ".join(f"WHEN '{p}' THEN t.d_{p}" for p in PRACTICES) + " END"
    y = "CASE k.outcome " + " ".join(f"WHEN '{o}' THEN t.d_{o}" for o in OUTCOMES) + " END"
    pairs = (
        f"SELECT * FROM (SELECT t.team_id, k.practice, k.outcome, {x} AS x, {y} AS y\n"
        f"    FROM {v}.team_evidence_month t CROSS JOIN (VALUES {values}) k(practice, outcome))\n"
        "    WHERE x IS NOT NULL AND y IS NOT NULL"
    )
    # Average ranks for ties, then Pearson on the ranks: Spearman's rho, as `diff` computes it.
    partition = "scope, practice, outcome"
    return f"""
CREATE OR REPLACE TABLE {v}.team_evidence_correlation AS
WITH pairs AS (
    {pairs}
),
scoped AS (
    SELECT team_id AS scope, practice, outcome, x, y FROM pairs
    UNION ALL
    SELECT '(all)', practice, outcome, x, y FROM pairs
),
ranked AS (
    SELECT scope, practice, outcome,
        {average_rank(partition, "x")} AS rx, {average_rank(partition, "y")} AS ry
    FROM scoped
)
SELECT scope AS team_id, practice, outcome,
    CASE WHEN count(*) >= 3 THEN {_exact_corr("rx", "ry")} END AS spearman, count(*) AS n
FROM ranked
GROUP BY scope, practice, outcome
ORDER BY team_id, practice, outcome"""


def team_goal_effect_sql(v: str) -> str:
    measures = (*PRACTICES, *OUTCOMES)
    unpivot = "\n    UNION ALL\n    ".join(
        f"SELECT team_id, period, '{m}' AS measure, {m} AS value FROM {v}.team_evidence_month"
        for m in measures
    )
    return f"""
CREATE OR REPLACE TABLE {v}.team_goal_effect AS
WITH long AS (
    {unpivot}
),
windows AS (
    SELECT goal_id, team_id, kpi, from_period,
        strftime({_month("from_period")} - INTERVAL {BEFORE_MONTHS} MONTH, '%Y-%m') AS before_from,
        CASE WHEN closed_at IS NULL THEN to_period
             ELSE least(to_period, strftime(closed_at, '%Y-%m')) END AS after_to
    FROM {v}.team_goal
)
SELECT w.team_id, w.goal_id, w.kpi, w.from_period, l.measure,
    avg(l.value) FILTER (WHERE l.period >= w.before_from AND l.period < w.from_period) AS before_mean,
    avg(l.value) FILTER (WHERE l.period >= w.from_period AND l.period <= w.after_to) AS after_mean,
    after_mean - before_mean AS change,
    count(l.value) FILTER (WHERE l.period >= w.before_from AND l.period < w.from_period) AS months_before,
    count(l.value) FILTER (WHERE l.period >= w.from_period AND l.period <= w.after_to) AS months_after
FROM windows w JOIN long l ON l.team_id = w.team_id
GROUP BY ALL
ORDER BY w.team_id, w.goal_id, l.measure"""


def goal_model_sql(v: str, events: str | None = None) -> list[str]:
    """Every statement of the goal and evidence read models, in dependency order.

    The goal events are read from `events` (a relation with the columns of the log), by
    default the version's view of the log, `{v}.events`.
    """
    return [
        team_goal_sql(v, events),
        team_goal_progress_sql(v, events),
        team_evidence_month_sql(v),
        team_evidence_correlation_sql(v),
        team_goal_effect_sql(v),
    ]
