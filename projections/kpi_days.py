"""Per-day KPI aggregates, kept as a table so that a refresh re-aggregates only the touched days.

`kpi_days` (in the schema of each version that owns KPI tables) holds one row per employee,
team and day: every KPI aggregate that days combine into a period by a sum or a maximum
(counts, the last activity), and, for the aggregates that do not combine (quantiles,
distinct counts: `ROW_KPIS`), the values they read, as sorted lists. A day lies in exactly
one month, ISO week and day, so a period's row of any KPI table is computed from its days'
rows alone, with the same aggregate expressions over the same values (crm_ledger.kpis):

- a count is the sum of its days' counts (exact integers, cast back to BIGINT);
- the last activity is the latest of its days' last activities;
- a quantile of a measure's values runs over the union of its days' value lists (every
  value, NULLs too, which it ignores as it does over the rows);
- a distinct count of refs runs over the union of its days' distinct refs.

An incremental update replaces the `kpi_days` rows of the (employee, team, day) keys whose
measure rows it deleted or inserted, from those keys' measure rows, then recomputes the
touched periods of all six KPI tables from `kpi_days` alone, in one statement: a month's
team row reads one small row per employee and day instead of every measure row of the
month. The table is derived: a full build makes it, and an update that finds none (a
database built before it existed, a version built on Spark, a replay of a KPI change)
makes it from the measures.
"""

from __future__ import annotations

import re

from crm_ledger.kpis import KPIS, Kpi
from projections.models import PERIOD_FORMATS, PERIOD_STARTS, kpi_aggregates
from projections.spec import MetricSpec

DAYS = "kpi_days"


def _by_day(k: Kpi) -> str | None:
    """How days combine into a period for a KPI's aggregate: "sum", "max", or None (they do not)."""
    if k.aggregate is None:
        return None
    if k.aggregate.startswith("count(*) FILTER (WHERE ") and "DISTINCT" not in k.aggregate:
        return "sum"
    if k.aggregate == "max(occurred_at)":
        return "max"
    return None


#: Aggregates combined from the days' aggregates.
DAY_KPIS = tuple(k for k in KPIS if _by_day(k) is not None)
#: Aggregates recomputed from the values the days keep: a quantile of a measure's `value`,
#: or a distinct count of a measure's `ref` (nothing else is kept: a new kind fails here).
ROW_KPIS = tuple(k for k in KPIS if k.aggregate is not None and _by_day(k) is None)
_QUANTILE = re.compile(r"quantile_cont\(value, [0-9.]+\) FILTER \(WHERE measure = '(\w+)'\)")
_DISTINCT = re.compile(r"count\(DISTINCT ref\) FILTER \(WHERE measure = '(\w+)'\)")
assert all(_QUANTILE.fullmatch(k.aggregate or "") or _DISTINCT.fullmatch(k.aggregate or "") for k in ROW_KPIS)
#: (measure, column of `measures`) pairs whose values a day keeps, and their list columns.
_KEPT = tuple(
    sorted(
        {(m.group(1), "value") for k in ROW_KPIS if (m := _QUANTILE.fullmatch(k.aggregate or ""))}
        | {(m.group(1), "ref") for k in ROW_KPIS if (m := _DISTINCT.fullmatch(k.aggregate or ""))}
    )
)
# One column per measure: the rows rebuilt from the lists carry only that column.
assert len({m for m, _ in _KEPT}) == len(_KEPT)


#: The columns of `measures` the KPI aggregates read (not `event_id` or `case_id`).
READS = ("employee_id", "team_id", "occurred_at", "measure", "value", "fcr", "reopened", "knowledge", "ref")
assert not any(c in (k.aggregate or "") for k in KPIS for c in ("event_id", "case_id"))


def _list_column(measure: str, column: str) -> str:
    return f"{measure}_{column}s"


def days_select(measures: str, spec: MetricSpec) -> str:
    """`kpi_days` rows from `measures` (a relation with the columns of `measures`).

    The lists are sorted (values with NULLs last, distinct refs), so that a day's row is
    the same whatever order its measure rows were read in.
    """
    # Sorted after aggregating: an ordered aggregate sorts within every group (2x the time
    # of the whole statement at 1M events).
    kept = ",\n        ".join(
        (
            f"list_sort(list(value) FILTER (WHERE measure = '{m}'), 'ASC', 'NULLS LAST')"
            if column == "value"
            else f"list_sort(list_distinct(list(ref) FILTER (WHERE measure = '{m}' AND ref IS NOT NULL)))"
        )
        + f" AS {_list_column(m, column)}"
        for m, column in _KEPT
    )
    return f"""
SELECT employee_id, team_id, CAST(occurred_at AS DATE) AS occurred_at,
        {kpi_aggregates(spec, DAY_KPIS)},
        {kept}
FROM {measures}
GROUP BY ALL"""


def build_sql(v: str, measures: str, spec: MetricSpec) -> str:
    """The whole `kpi_days` table of schema `v` from the relation `measures`."""
    select = days_select(measures, spec)
    return f"CREATE OR REPLACE TABLE {v}.{DAYS} AS {select}\nORDER BY occurred_at, employee_id, team_id"


#: The grains, and the expression of a day's period's first day in each.
GRAINS = tuple(PERIOD_STARTS)


def _from_lists(k: Kpi) -> str:
    """A ROW_KPIS aggregate over the values its group's days keep.

    The same aggregate function over the same values: `list_aggregate` runs the quantile
    over the concatenated lists (NULLs ignored, none gives NULL, as the aggregate does
    over rows), and the distinct refs of a period are the distinct refs of its days.
    """
    aggregate = k.aggregate or ""
    if quantile := _QUANTILE.fullmatch(aggregate):
        q = aggregate[len("quantile_cont(value, ") : aggregate.index(")")]
        values = _list_column(quantile.group(1), "value")
        return f"list_aggregate(flatten(list({values})), 'quantile_cont', {q}) AS {k.name}"
    distinct = _DISTINCT.fullmatch(aggregate)
    assert distinct is not None
    return f"length(list_distinct(flatten(list({_list_column(distinct.group(1), 'ref')})))) AS {k.name}"


def periods_select(days: str, touched: str) -> str:
    """The KPI rows of the touched periods of every grain, employee and team rows at once.

    `days` is a relation of `kpi_days` rows holding every day of the touched periods;
    `touched` a relation of the touched (grain, employee_id, team_id, start) keys, `start`
    being the period's first day (PERIOD_STARTS). One statement for the six tables: DuckDB
    plans a statement of this size in ~7 ms, more than it takes to run it for one table.

    Rows carry `grain` and `team_level` (true for a team row, whose `employee_id` is NULL)
    besides the KPI tables' columns. Each row is models.kpi_select's row of its group: a
    team's groups read all of the team's days of the period, an employee's groups their
    own; only the touched employees' groups are made (picked before aggregating: their
    teammates' groups, made and dropped, cost ~10 ms a refresh at 1M events). The spec's
    thresholds are in the days' counts already.
    """
    first_day = "CASE g.grain " + " ".join(f"WHEN '{g}' THEN {PERIOD_STARTS[g]}" for g in GRAINS) + " END"
    period = (
        "CASE c.grain "
        + " ".join(f"WHEN '{g}' THEN strftime(c.start, '{PERIOD_FORMATS[g]}')" for g in GRAINS)
        + " END"
    )
    grains = ", ".join(f"('{g}')" for g in GRAINS)
    aggregates = ",\n        ".join(
        [
            *(
                f"max({k.name}) AS {k.name}"
                if _by_day(k) == "max"
                else f"CAST(sum({k.name}) AS BIGINT) AS {k.name}"
                for k in DAY_KPIS
            ),
            *(_from_lists(k) for k in ROW_KPIS),
        ]
    )
    return f"""
WITH expanded AS (
    SELECT g.grain, {first_day} AS start, d.*
    FROM {days} d CROSS JOIN (VALUES {grains}) g(grain)
),
days AS (
    SELECT * FROM expanded e
    SEMI JOIN (SELECT DISTINCT grain, team_id, start FROM {touched}) t
        ON e.grain = t.grain AND e.team_id = t.team_id AND e.start = t.start
),
employee_days AS (
    SELECT * FROM days e
    SEMI JOIN {touched} t
        ON e.grain = t.grain AND e.employee_id IS NOT DISTINCT FROM t.employee_id
        AND e.team_id = t.team_id AND e.start = t.start
),
counts AS (
    SELECT grain, false AS team_level, employee_id, team_id, start,
        {aggregates}
    FROM employee_days GROUP BY grain, employee_id, team_id, start
    UNION ALL
    SELECT grain, true AS team_level, NULL AS employee_id, team_id, start,
        {aggregates}
    FROM days GROUP BY grain, team_id, start
)
SELECT c.grain, c.team_level, c.employee_id, c.team_id, {period} AS period,
    {", ".join(k.select() for k in KPIS)}
FROM counts c"""
