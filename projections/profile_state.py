"""The customer profile kept from partial aggregates, so that a refresh reads only new events.

`customer_profile` (projections.models.customer_profile_select) aggregates each customer's
whole history. Every column of it is a count, a minimum or maximum, a latest value by
(occurred_at, notification_id), a flag that is set once, an average or a trend (both from
integer sums), or a count of cases by their latest step: all of them combine exactly from
partial aggregates of any split of the events, in any order. Two tables of the storage
schema hold them: `profile_partials` (one row per customer) and `profile_cases` (one row per
case and customer, as the full build's case states). An incremental update aggregates the
new events only, combines them with the stored rows of the customers and cases they name,
and computes the named customers' profile rows from the combined rows, instead of reading
every earlier event of those customers (~15,000 rows for 1,000 new events at 1M, scattered
over the whole log).

The averages are the integer sum divided by the count in DOUBLE, which is how DuckDB's
`avg` of an INTEGER column computes it; the trends are the same integer expression as
models._slope over the same sums.
"""

from __future__ import annotations

from projections.models import PROFILE_CHANNELS

PARTIALS = "profile_partials"
CASES = "profile_cases"
#: The full profile's order of events (its arg_max key).
_KEY = "(occurred_at, notification_id)"
_CONTACTS = (
    "'InteractionRecorded', 'CaseOpened', 'RelationshipAttemptMade', 'SurveyAnswered', 'ComplimentReceived'"
)
_DETAILS = "'CustomerRegistered', 'CustomerDetailsChanged'"
_SURVEY = "event_type = 'SurveyAnswered'"
#: Counted columns: (name, condition on an event).
_COUNTS = (
    ("interactions_total", "event_type = 'InteractionRecorded'"),
    *(
        (f"interactions_{c}", f"event_type = 'InteractionRecorded' AND channel = '{c}'")
        for c in PROFILE_CHANNELS
    ),
    ("relationship_attempts", "event_type = 'RelationshipAttemptMade'"),
    ("compliments", "event_type = 'ComplimentReceived'"),
    ("surveys", _SURVEY),
)
#: Latest values: (name, condition).
_LATEST = (
    ("segment", f"event_type IN ({_DETAILS}) AND segment IS NOT NULL"),
    ("region", f"event_type IN ({_DETAILS}) AND region IS NOT NULL"),
    ("csat_latest", f"{_SURVEY} AND csat IS NOT NULL"),
    ("nps_latest", f"{_SURVEY} AND nps IS NOT NULL"),
)
_SCORES = ("csat", "nps")


def _x() -> str:
    return "(epoch_ms(occurred_at) // 1000)::HUGEINT"


def partials_select(ev: str) -> str:
    """One partial row per customer of the events of `ev` (columns of the log).

    The latest details and the survey sums are aggregated over their own events only (a
    FILTER would evaluate their keys and products for every event: 2x the time at 1M).
    A customer without such events has NULL there, which combining and the profile read
    as none.
    """
    latest = {"csat_latest": "csat", "nps_latest": "nps"}

    def latest_of(names: tuple[str, ...]) -> str:
        return ", ".join(
            f"max({_KEY}) FILTER (WHERE {where}) AS {name}_key, "
            f"arg_max({latest.get(name, name)}, {_KEY}) FILTER (WHERE {where}) AS {name}"
            for name, where in _LATEST
            if name in names
        )

    activity = [
        *(f"count(*) FILTER (WHERE {where}) AS {name}" for name, where in _COUNTS),
        f"min(occurred_at) FILTER (WHERE event_type IN ({_CONTACTS})) AS first_contact_at",
        f"max(occurred_at) FILTER (WHERE event_type IN ({_CONTACTS})) AS last_contact_at",
        "min(occurred_at) FILTER (WHERE event_type = 'CustomerRegistered') AS registered_at",
        "bool_or(event_type = 'CustomerForgotten') AS forgotten",
    ]
    surveys = [latest_of(("csat_latest", "nps_latest"))]
    for s in _SCORES:
        y = f"{s}::HUGEINT"
        surveys += [
            f"count({s}) AS {s}_n",
            f"sum({y}) AS {s}_sum",
            f"sum({_x()} * {y}) FILTER (WHERE {s} IS NOT NULL) AS {s}_sxy",
            f"sum({_x()}) FILTER (WHERE {s} IS NOT NULL) AS {s}_sx",
            f"sum({_x()} * {_x()}) FILTER (WHERE {s} IS NOT NULL) AS {s}_sxx",
        ]
    return f"""
WITH ev AS (SELECT * FROM {ev} WHERE customer_id IS NOT NULL),
activity AS (SELECT customer_id, {", ".join(activity)} FROM ev GROUP BY customer_id),
details AS (
    SELECT customer_id, {latest_of(("segment", "region"))}
    FROM ev WHERE event_type IN ({_DETAILS}) GROUP BY customer_id
),
surveys AS (SELECT customer_id, {", ".join(surveys)} FROM ev WHERE {_SURVEY} GROUP BY customer_id)
SELECT a.*, d.* EXCLUDE (customer_id), s.* EXCLUDE (customer_id)
FROM activity a
LEFT JOIN details d ON d.customer_id = a.customer_id
LEFT JOIN surveys s ON s.customer_id = a.customer_id"""


def combined_select(partials: str) -> str:
    """The partial rows of `partials` combined into one per customer (as if aggregated at once)."""
    parts = [
        *(f"CAST(sum({name}) AS BIGINT) AS {name}" for name, _ in _COUNTS),
        *(
            f"max({name}_key) AS {name}_key, "
            f"arg_max({name}, {name}_key) FILTER (WHERE {name}_key IS NOT NULL) AS {name}"
            for name, _ in _LATEST
        ),
        "min(first_contact_at) AS first_contact_at",
        "max(last_contact_at) AS last_contact_at",
        "min(registered_at) AS registered_at",
        "bool_or(forgotten) AS forgotten",
    ]
    for s in _SCORES:
        parts += [
            f"CAST(sum({s}_n) AS BIGINT) AS {s}_n",
            *(f"sum({s}_{m}) AS {s}_{m}" for m in ("sum", "sxy", "sx", "sxx")),
        ]
    return f"SELECT customer_id, {', '.join(parts)} FROM {partials} GROUP BY customer_id"


def case_partials_select(ev: str) -> str:
    """One partial case state per case and customer of the case events of `ev`."""
    return (
        f"SELECT case_id, customer_id, max({_KEY}) AS last_key, arg_max(event_type, {_KEY}) AS last_step, "
        "any_value(kind) FILTER (WHERE event_type = 'CaseOpened') AS kind "
        f"FROM {ev} WHERE customer_id IS NOT NULL AND event_type LIKE 'Case%' AND case_id IS NOT NULL "
        "GROUP BY case_id, customer_id"
    )


def combined_cases_select(partials: str) -> str:
    """Partial case states combined into one per case and customer."""
    return (
        "SELECT case_id, customer_id, max(last_key) AS last_key, arg_max(last_step, last_key) AS last_step, "
        f"any_value(kind) AS kind FROM {partials} GROUP BY case_id, customer_id"
    )


def state_sql(s: str, ev: str) -> list[str]:
    """Both tables of schema `s`, built from all of `ev`'s events."""
    return [
        f"CREATE OR REPLACE TABLE {s}.{PARTIALS} AS {partials_select(ev)} ORDER BY customer_id",
        f"CREATE OR REPLACE TABLE {s}.{CASES} AS {case_partials_select(ev)} ORDER BY case_id, customer_id",
    ]


def merge_sql(s: str, new: str) -> list[str]:
    """Combine the events of `new` (only events not counted yet) into the stored partial rows."""
    named = f"customer_id IN (SELECT customer_id FROM {new} WHERE customer_id IS NOT NULL)"
    stored = f"SELECT * FROM {s}.{PARTIALS} WHERE {named}"
    cases = "(case_id, customer_id) IN (SELECT case_id, customer_id FROM crm_pf_new_cases)"
    return [
        "CREATE OR REPLACE TEMP TABLE crm_pf_partials AS "
        + combined_select(f"({stored} UNION ALL BY NAME SELECT * FROM ({partials_select(new)}))"),
        f"DELETE FROM {s}.{PARTIALS} WHERE {named}",
        f"INSERT INTO {s}.{PARTIALS} BY NAME SELECT * FROM crm_pf_partials",
        f"CREATE OR REPLACE TEMP TABLE crm_pf_new_cases AS {case_partials_select(new)}",
        "CREATE OR REPLACE TEMP TABLE crm_pf_cases AS "
        + combined_cases_select(
            f"(SELECT * FROM {s}.{CASES} WHERE {cases} UNION ALL BY NAME SELECT * FROM crm_pf_new_cases)"
        ),
        f"DELETE FROM {s}.{CASES} WHERE {cases}",
        f"INSERT INTO {s}.{CASES} BY NAME SELECT * FROM crm_pf_cases",
    ]


#: The temporary tables of merge_sql; the first holds the merged partial rows of the customers.
TEMPS = ("crm_pf_partials", "crm_pf_new_cases", "crm_pf_cases")
MERGED = TEMPS[0]


def _slope(s: str) -> str:
    """models._slope's expression over the stored sums of score `s`."""
    n, sxy, sx, sy, sxx = (f"{s}_n::HUGEINT", f"{s}_sxy", f"{s}_sx", f"{s}_sum", f"{s}_sxx")
    return (
        f"CASE WHEN {s}_n > 1 AND ({n} * {sxx} - {sx} * {sx}) <> 0 THEN "
        f"(({n} * {sxy} - {sx} * {sy})::DOUBLE / ({n} * {sxx} - {sx} * {sx})::DOUBLE) * 2592000.0 END"
    )


def profile_select(s: str, scope: str, partials: str | None = None) -> str:
    """customer_profile rows (without the service columns) of the customers `scope` selects.

    `partials` is a relation holding exactly those customers' partial rows, when the caller
    has them at hand (merge_sql's combined rows): then the stored table, just changed in the
    same transaction, is not scanned again for them.
    """
    channels = ", ".join(f"p.interactions_{c}" for c in PROFILE_CHANNELS)
    return f"""
WITH cases AS (
    SELECT customer_id, count(*) AS cases_total,
        count(*) FILTER (WHERE last_step NOT IN ('CaseResolved', 'CaseClosed')) AS open_cases,
        count(*) FILTER (WHERE kind = 'complaint') AS complaints
    FROM {s}.{CASES} WHERE {scope} GROUP BY customer_id
)
SELECT p.customer_id, p.segment, p.region, p.registered_at, coalesce(p.forgotten, false) AS forgotten,
    p.interactions_total, {channels}, p.first_contact_at, p.last_contact_at,
    coalesce(c.cases_total, 0) AS cases_total, coalesce(c.open_cases, 0) AS open_cases,
    coalesce(c.complaints, 0) AS complaints,
    p.csat_latest, p.csat_sum::DOUBLE / nullif(p.csat_n, 0) AS csat_avg, {_slope("csat")} AS csat_trend,
    p.nps_latest, p.nps_sum::DOUBLE / nullif(p.nps_n, 0) AS nps_avg, {_slope("nps")} AS nps_trend,
    p.surveys, p.relationship_attempts, p.compliments
FROM {partials or f"(SELECT * FROM {s}.{PARTIALS} WHERE {scope})"} p
LEFT JOIN cases c ON c.customer_id = p.customer_id
ORDER BY p.customer_id"""
