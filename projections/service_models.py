"""Read models of the service side: contracts, SLAs, installed base and field work.

Set-based SQL over a version's `events` (the shared decoded log), listed as read models in
projections.readmodels: the tables below are built after the team history and before the
measures; the measures gain SLA and field-visit rows (`service_measures_select`, so the KPI
tables gain the service KPIs of crm_ledger.kpis at every grain); and `customer_profile` is
widened with the service columns once it is built. Fields that are not columns of `events`
are read from the JSON `payload` (timestamps there are epoch milliseconds).

Coverage, breaches, first visits, outcomes and the profile's "now" depend on later events
anywhere in the log: projections.service_maintain keeps them incrementally by running these
same functions over the touched contracts', cases' and customers' events only.

Definitions (docs/read-models.md lists every column):

- A contract **covers** a moment from its `starts_on` until the earliest of its latest
  `ends_on` (after renewals) and its `ContractEnded`. A case's SLA comes from the contract
  of its customer covering the case's opening; with several, the tightest SLA wins. The SLA
  hours are those of the case's severity, `sla_hours_medium` when the case has no severity,
  another one, or one the contract gives no hours for.
- A case is **breached** when its first resolution came later than opening + SLA hours, or
  when it is unresolved and that moment lies before the last event of the log; NULL while
  it is still within its SLA or when no contract covers it. SLA measures belong to the
  first resolver, in the month of the first resolution (like `problems_solved`).
- A field visit is **on time** when the engineer arrived by the end of the promised window.
  A case's **first visit** is its first completed visit; it counts toward the first-time-fix
  rate of its engineer, fixed or not. Visit measures belong to the engineer, in the month of
  the completion.
- **Retention**: every contract term (the `ends_on` set by a start or a renewal) comes up for
  renewal in the month it ends; it is renewed (a later ContractRenewed), churned, replaced or
  merged (the ContractEnded that follows), or still open. Net revenue retention is retained
  annual value (the renewal's value, or the replacing contract's starting value) over the
  value up for renewal, of the decided terms (renewed, churned, replaced).
"""

from __future__ import annotations

#: The service read models, in build order (their units are in projections.readmodels).
SERVICE_TABLES = ("contract_terms", "sla_case", "field_visit", "retention_month")
#: The measures of the service side (`service_measures_select`), read by crm_ledger.kpis:
#: those made from `sla_case` rows, and those made from `field_visit` rows.
SLA_MEASURES = ("sla", "sla_met")
VISIT_MEASURES = ("visit", "visit_on_time", "ftf", "ftf_fixed")
SERVICE_MEASURES = (*SLA_MEASURES, *VISIT_MEASURES)
#: The columns `profile_service_sql` adds to `customer_profile`.
PROFILE_SERVICE_COLUMNS = (
    "active_contracts",
    "contract_value",
    "next_renewal_at",
    "installed_products",
    "installed_product_list",
    "sites",
    "open_field_visits",
    "field_visits",
    "sla_covered",
)
_SEVERITIES = ("critical", "high", "medium", "low")


def _ms(field: str) -> str:
    """A payload timestamp (epoch milliseconds) as a TIMESTAMP."""
    return f"epoch_ms((payload ->> '{field}')::BIGINT)"


def contract_terms_sql(v: str) -> str:
    """One row per contract term: who, what, which SLA, covering when, and how it ended."""
    sla = ",\n        ".join(f"(payload ->> 'sla_hours_{s}')::INTEGER AS sla_hours_{s}" for s in _SEVERITIES)
    return f"""
CREATE OR REPLACE TABLE {v}.contract_terms AS
WITH ev AS (
    SELECT event_type, event_id, notification_id, occurred_at, customer_id,
        payload ->> 'contract_id' AS contract_id,
        payload ->> 'plan' AS plan,
        {_ms("starts_on")} AS starts_on,
        {_ms("ends_on")} AS ends_on,
        (payload ->> 'annual_value')::DOUBLE AS annual_value,
        payload ->> 'currency' AS currency,
        payload ->> 'reason' AS reason,
        payload ->> 'replaced_by' AS replaced_by,
        {sla}
    FROM {v}.events
    WHERE event_type IN ('ContractStarted', 'ContractRenewed', 'ContractEnded')
),
numbered AS (
    -- A contract id may start again after it ended: each start opens a new term sequence.
    SELECT *, sum(CASE WHEN event_type = 'ContractStarted' THEN 1 ELSE 0 END) OVER w AS term_no,
        row_number() OVER w AS step
    FROM ev
    WINDOW w AS (PARTITION BY contract_id ORDER BY occurred_at, notification_id
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
started AS (SELECT * FROM numbered WHERE event_type = 'ContractStarted'),
steps AS (
    SELECT *,
        lead(event_type) OVER w AS next_type,
        lead(reason) OVER w AS next_reason,
        lead(annual_value) OVER w AS next_value,
        lead(replaced_by) OVER w AS next_replaced_by,
        lead(occurred_at) OVER w AS next_at
    FROM numbered
    WINDOW w AS (PARTITION BY contract_id, term_no ORDER BY step)
),
ended AS (
    SELECT contract_id, term_no, min(occurred_at) AS ended_at
    FROM numbered WHERE event_type = 'ContractEnded' GROUP BY ALL
),
last_end AS (
    SELECT contract_id, term_no, arg_max(ends_on, step) AS final_ends_on
    FROM numbered WHERE event_type IN ('ContractStarted', 'ContractRenewed') GROUP BY ALL
)
SELECT s.contract_id, s.term_no, s.step, st.customer_id, st.plan, st.currency,
    st.starts_on, s.ends_on AS due_on, le.final_ends_on,
    CASE WHEN e.ended_at IS NOT NULL THEN least(e.ended_at, le.final_ends_on) ELSE le.final_ends_on END
        AS covered_until,
    s.annual_value AS value, s.occurred_at AS set_at, s.event_type AS set_by,
    CASE WHEN s.next_type = 'ContractRenewed' THEN 'renewed'
         WHEN s.next_type = 'ContractEnded' AND s.next_reason = 'churned' THEN 'churned'
         WHEN s.next_type = 'ContractEnded' THEN s.next_reason END AS outcome,
    s.next_at AS decided_at,
    CASE WHEN s.next_type = 'ContractRenewed' THEN s.next_value END AS renewed_value,
    s.next_replaced_by AS replaced_by,
    e.ended_at,
    st.sla_hours_critical, st.sla_hours_high, st.sla_hours_medium, st.sla_hours_low
FROM steps s
JOIN started st ON st.contract_id = s.contract_id AND st.term_no = s.term_no
JOIN last_end le ON le.contract_id = s.contract_id AND le.term_no = s.term_no
LEFT JOIN ended e ON e.contract_id = s.contract_id AND e.term_no = s.term_no
WHERE s.event_type IN ('ContractStarted', 'ContractRenewed')
ORDER BY s.contract_id, s.term_no, s.step"""


def sla_case_sql(v: str) -> str:
    """One row per case: its SLA (from the contract covering its opening) and whether it was met."""
    hours = "CASE c.severity " + " ".join(
        f"WHEN '{s}' THEN coalesce(t.sla_hours_{s}, t.sla_hours_medium)" for s in _SEVERITIES
    )
    hours += " ELSE t.sla_hours_medium END"
    return f"""
CREATE OR REPLACE TABLE {v}.sla_case AS
WITH opened AS (
    SELECT case_id, customer_id, severity, kind, occurred_at AS opened_at
    FROM {v}.events WHERE event_type = 'CaseOpened'
    QUALIFY row_number() OVER (PARTITION BY case_id ORDER BY occurred_at, notification_id) = 1
),
accepted AS (
    SELECT case_id, min(occurred_at) AS accepted_at
    FROM {v}.events WHERE event_type = 'CaseAccepted' GROUP BY ALL
),
resolved AS (
    SELECT case_id, occurred_at AS resolved_at, employee_id AS resolver_id, event_id AS resolved_event_id
    FROM {v}.events WHERE event_type = 'CaseResolved'
    QUALIFY row_number() OVER (PARTITION BY case_id ORDER BY occurred_at, notification_id) = 1
),
terms AS (
    SELECT DISTINCT contract_id, term_no, customer_id, plan, starts_on, covered_until,
        sla_hours_critical, sla_hours_high, sla_hours_medium, sla_hours_low
    FROM {v}.contract_terms
),
covered AS (
    SELECT c.case_id, t.contract_id, t.plan, {hours} AS sla_hours
    FROM opened c
    JOIN terms t
        ON t.customer_id = c.customer_id AND t.starts_on <= c.opened_at AND c.opened_at < t.covered_until
    QUALIFY row_number() OVER (
        PARTITION BY c.case_id ORDER BY ({hours}) NULLS LAST, t.contract_id, t.term_no) = 1
),
log_end AS (SELECT max(occurred_at) AS at FROM {v}.events)
SELECT o.case_id, o.customer_id, o.severity, o.kind, o.opened_at,
    cv.contract_id, cv.plan, cv.sla_hours,
    o.opened_at + to_hours(cv.sla_hours::BIGINT) AS due_at,
    a.accepted_at, epoch(a.accepted_at - o.opened_at) / 3600.0 AS hours_to_accept,
    r.resolved_at, epoch(r.resolved_at - o.opened_at) / 3600.0 AS hours_to_resolve,
    r.resolver_id, r.resolved_event_id,
    CASE WHEN cv.sla_hours IS NULL THEN NULL
         WHEN r.resolved_at IS NOT NULL THEN r.resolved_at > o.opened_at + to_hours(cv.sla_hours::BIGINT)
         WHEN l.at > o.opened_at + to_hours(cv.sla_hours::BIGINT) THEN true
    END AS breached
FROM opened o
LEFT JOIN covered cv ON cv.case_id = o.case_id
LEFT JOIN accepted a ON a.case_id = o.case_id
LEFT JOIN resolved r ON r.case_id = o.case_id
CROSS JOIN log_end l
ORDER BY o.case_id"""


def field_visit_sql(v: str) -> str:
    """One row per field visit: window, arrival, outcome, and whether it was the case's first."""
    return f"""
CREATE OR REPLACE TABLE {v}.field_visit AS
WITH ev AS (
    SELECT *, payload ->> 'visit_id' AS visit_id
    FROM {v}.events WHERE event_type IN ('FieldVisitScheduled', 'FieldVisitCompleted', 'FieldVisitCancelled')
),
scheduled AS (
    SELECT visit_id, case_id, customer_id, employee_id, payload ->> 'site_id' AS site_id,
        occurred_at AS scheduled_at, {_ms("window_start")} AS window_start, {_ms("window_end")} AS window_end
    FROM ev WHERE event_type = 'FieldVisitScheduled'
),
done AS (
    SELECT visit_id, event_type, occurred_at, event_id, {_ms("arrived_at")} AS arrived_at,
        (payload ->> 'fixed')::BOOLEAN AS fixed,
        coalesce(json_array_length(payload -> 'parts_used'), 0) AS parts_used,
        payload ->> 'reason' AS cancel_reason
    FROM ev WHERE event_type IN ('FieldVisitCompleted', 'FieldVisitCancelled')
),
joined AS (
    SELECT s.*,
        CASE d.event_type WHEN 'FieldVisitCompleted' THEN 'completed'
                          WHEN 'FieldVisitCancelled' THEN 'cancelled' ELSE 'scheduled' END AS state,
        CASE WHEN d.event_type = 'FieldVisitCompleted' THEN d.occurred_at END AS completed_at,
        CASE WHEN d.event_type = 'FieldVisitCancelled' THEN d.occurred_at END AS cancelled_at,
        d.arrived_at, d.arrived_at <= s.window_end AS on_time, d.fixed, d.parts_used, d.cancel_reason,
        CASE WHEN d.event_type = 'FieldVisitCompleted' THEN d.event_id END AS completed_event_id
    FROM scheduled s LEFT JOIN done d ON d.visit_id = s.visit_id
),
firsts AS (
    SELECT visit_id FROM joined WHERE state = 'completed'
    QUALIFY row_number() OVER (PARTITION BY case_id ORDER BY completed_at, visit_id) = 1
)
SELECT j.visit_id, j.case_id, j.customer_id, j.employee_id, coalesce(th.team_id, '(none)') AS team_id,
    j.site_id, j.scheduled_at, j.window_start, j.window_end, j.state, j.arrived_at, j.on_time,
    j.completed_at, j.fixed, j.parts_used, f.visit_id IS NOT NULL AS first_visit,
    j.cancelled_at, j.cancel_reason, j.completed_event_id,
    strftime(j.completed_at, '%Y-%m') AS period
FROM joined j
LEFT JOIN firsts f ON f.visit_id = j.visit_id
ASOF LEFT JOIN {v}.team_history th
    ON j.employee_id = th.employee_id AND coalesce(j.completed_at, j.scheduled_at) >= th.valid_from
ORDER BY j.visit_id"""


def retention_sql(v: str, customers: str | None = None, periods: str = "TRUE") -> str:
    """Contracts up for renewal per segment, region and month, and how they were decided.

    Incremental maintenance passes `customers`, a relation with each customer's current
    `segment` and `region` (the profile's columns, the same arg_max over the same details
    events), and `periods`, a condition on `period` (every grouping set holds the period,
    so the rows of one period come from that period's terms only). Then the terms of those
    periods are picked first (`due`), and only their customers and the contracts that
    replaced them are read: the joins are left joins on unique keys, so filtering the terms
    before them keeps the same rows (joining every term first cost ~10 ms at 1M events).
    """
    due, contracts, terms = "", "", f"{v}.contract_terms t"
    if customers is None:
        current = f"""SELECT customer_id,
        arg_max(segment, (occurred_at, notification_id)) FILTER (WHERE segment IS NOT NULL) AS segment,
        arg_max(region, (occurred_at, notification_id)) FILTER (WHERE region IS NOT NULL) AS region
    FROM {v}.events WHERE event_type IN ('CustomerRegistered', 'CustomerDetailsChanged') GROUP BY ALL"""
    else:
        due = (
            "due AS (\n    SELECT * EXCLUDE (period) FROM (SELECT *, strftime(due_on, '%Y-%m') AS period "
            f"FROM {v}.contract_terms) WHERE {periods}\n),\n"
        )
        current = (
            f"SELECT customer_id, segment, region FROM {customers} "
            "WHERE customer_id IN (SELECT customer_id FROM due)"
        )
        contracts = " WHERE contract_id IN (SELECT replaced_by FROM due)"
        terms = "due t"
    replacements = (
        "SELECT contract_id, arg_min(value, (term_no, step)) AS start_value "
        f"FROM {v}.contract_terms{contracts} GROUP BY ALL"
    )
    return f"""
CREATE OR REPLACE TABLE {v}.retention_month AS
WITH {due}customers AS (
    {current}
),
replacements AS (
    {replacements}
),
terms AS (
    SELECT t.*, coalesce(c.segment, '(unknown)') AS segment, coalesce(c.region, '(unknown)') AS region,
        strftime(t.due_on, '%Y-%m') AS period,
        CASE t.outcome WHEN 'renewed' THEN t.renewed_value
                       WHEN 'replaced' THEN coalesce(r.start_value, 0.0)
                       WHEN 'churned' THEN 0.0 END AS retained_value
    FROM {terms}
    LEFT JOIN customers c ON c.customer_id = t.customer_id
    LEFT JOIN replacements r ON r.contract_id = t.replaced_by
),
counts AS (
    SELECT
        CASE WHEN grouping(segment) = 1 THEN '(all)' ELSE segment END AS segment,
        CASE WHEN grouping(region) = 1 THEN '(all)' ELSE region END AS region,
        period,
        count(*) AS up_for_renewal,
        count(*) FILTER (WHERE outcome = 'renewed') AS renewed,
        count(*) FILTER (WHERE outcome = 'churned') AS churned,
        count(*) FILTER (WHERE outcome = 'replaced') AS replaced,
        count(*) FILTER (WHERE outcome = 'merged') AS merged,
        count(*) FILTER (WHERE outcome IS NULL) AS open,
        -- Exact (decimal) sums: a float sum depends on the order rows arrive in, which differs
        -- between a full build and an incremental one (and between runs).
        sum(value::DECIMAL(38, 6))::DOUBLE AS value_up,
        sum(value::DECIMAL(38, 6)) FILTER (WHERE retained_value IS NOT NULL)::DOUBLE AS value_decided,
        sum(retained_value::DECIMAL(38, 6))::DOUBLE AS value_retained
    FROM terms
    WHERE {periods}
    GROUP BY GROUPING SETS ((segment, region, period), (segment, period), (region, period), (period))
)
SELECT segment, region, period, up_for_renewal, renewed, churned, replaced, merged, open,
    renewed / nullif(renewed + churned + replaced, 0) AS renewal_rate,
    churned / nullif(renewed + churned + replaced, 0) AS churn_rate,
    value_up, value_decided, value_retained,
    100.0 * value_retained / nullif(value_decided, 0) AS nrr_pct
FROM counts
ORDER BY segment, region, period"""


def service_model_sql(v: str) -> list[str]:
    """The service tables, built after `team_history` and before `measures`."""
    return [contract_terms_sql(v), sla_case_sql(v), field_visit_sql(v), retention_sql(v)]


def service_measures_select(v: str) -> str:
    """Measure rows (columns of `measures`) for SLAs and field visits, attributed to teams.

    Counted measures come in pairs: one row per measured act, and a marker row when it
    succeeded ('sla' / 'sla_met', 'visit' / 'visit_on_time', 'ftf' / 'ftf_fixed').
    """
    return f"""
WITH raw AS (
    SELECT resolver_id AS employee_id, resolved_at AS occurred_at, 'sla' AS measure,
        hours_to_resolve::DOUBLE AS value, case_id AS ref, resolved_event_id AS event_id, case_id
    FROM {v}.sla_case WHERE breached IS NOT NULL AND resolved_at IS NOT NULL AND resolver_id IS NOT NULL
    UNION ALL
    SELECT resolver_id, resolved_at, 'sla_met', hours_to_resolve, case_id, resolved_event_id, case_id
    FROM {v}.sla_case WHERE breached = false AND resolver_id IS NOT NULL
    UNION ALL
    SELECT employee_id, completed_at, 'visit', 1, visit_id, completed_event_id, case_id
    FROM {v}.field_visit WHERE state = 'completed'
    UNION ALL
    SELECT employee_id, completed_at, 'visit_on_time', 1, visit_id, completed_event_id, case_id
    FROM {v}.field_visit WHERE state = 'completed' AND on_time
    UNION ALL
    SELECT employee_id, completed_at, 'ftf', 1, case_id, completed_event_id, case_id
    FROM {v}.field_visit WHERE first_visit
    UNION ALL
    SELECT employee_id, completed_at, 'ftf_fixed', 1, case_id, completed_event_id, case_id
    FROM {v}.field_visit WHERE first_visit AND fixed
)
SELECT raw.employee_id, coalesce(th.team_id, '(none)') AS team_id, raw.occurred_at,
       raw.measure, raw.value, NULL::BOOLEAN AS fcr, NULL::BOOLEAN AS reopened,
       NULL::BOOLEAN AS knowledge, raw.ref, raw.event_id, raw.case_id
FROM raw
ASOF LEFT JOIN {v}.team_history th
    ON raw.employee_id = th.employee_id AND raw.occurred_at >= th.valid_from"""


def profile_service_sql(v: str) -> str:
    """Widen `customer_profile` with contracts, installed base, open visits and SLA coverage.

    "Now" is the last event of the log, so the profile is a function of the log alone. Reads
    the profile's own columns only (an incrementally updated profile has the service columns
    already, NULL in the rows just inserted), so it can run after a full or partial update.
    """
    return f"""
CREATE OR REPLACE TABLE {v}.customer_profile AS
WITH log_end AS (SELECT max(occurred_at) AS at FROM {v}.events),
current_terms AS (
    SELECT * FROM {v}.contract_terms
    QUALIFY row_number() OVER (PARTITION BY contract_id ORDER BY term_no DESC, step DESC) = 1
),
contracts AS (
    SELECT t.customer_id,
        count(*) FILTER (WHERE t.ended_at IS NULL) AS active_contracts,
        -- An exact (decimal) sum: a float sum depends on the order the terms arrive in, which
        -- differs between a full build and an incremental one.
        coalesce(sum(coalesce(t.renewed_value, t.value)::DECIMAL(38, 6)) FILTER (WHERE t.ended_at IS NULL),
            0.0)::DOUBLE AS contract_value,
        min(t.final_ends_on) FILTER (WHERE t.ended_at IS NULL AND t.final_ends_on >= l.at) AS next_renewal_at,
        bool_or(t.starts_on <= l.at AND l.at < t.covered_until AND (
            t.sla_hours_critical IS NOT NULL OR t.sla_hours_high IS NOT NULL
            OR t.sla_hours_medium IS NOT NULL OR t.sla_hours_low IS NOT NULL)) AS sla_covered
    FROM current_terms t CROSS JOIN log_end l GROUP BY t.customer_id
),
installs AS (
    SELECT customer_id, payload ->> 'site_id' AS site_id, payload ->> 'serial' AS serial,
        arg_max(event_type, (occurred_at, notification_id)) AS last_step,
        arg_max(payload ->> 'product', (occurred_at, notification_id))
            FILTER (WHERE event_type = 'ProductInstalled') AS product
    FROM {v}.events WHERE event_type IN ('ProductInstalled', 'ProductRemoved') GROUP BY ALL
),
installed AS (
    SELECT customer_id, count(*) AS installed_products,
        list(product ORDER BY product, serial) AS installed_product_list,
        count(DISTINCT site_id) AS sites
    FROM installs WHERE last_step = 'ProductInstalled' GROUP BY customer_id
),
visits AS (
    SELECT customer_id, count(*) FILTER (WHERE state = 'scheduled') AS open_field_visits,
        count(*) FILTER (WHERE state = 'completed') AS field_visits
    FROM {v}.field_visit GROUP BY customer_id
)
SELECT p.*,
    coalesce(c.active_contracts, 0) AS active_contracts,
    coalesce(c.contract_value, 0.0) AS contract_value,
    c.next_renewal_at,
    coalesce(i.installed_products, 0) AS installed_products,
    coalesce(i.installed_product_list, []::VARCHAR[]) AS installed_product_list,
    coalesce(i.sites, 0) AS sites,
    coalesce(vi.open_field_visits, 0) AS open_field_visits,
    coalesce(vi.field_visits, 0) AS field_visits,
    coalesce(c.sla_covered, false) AS sla_covered
FROM (SELECT COLUMNS(lambda c: c NOT IN ({", ".join(f"'{c}'" for c in PROFILE_SERVICE_COLUMNS)}))
      FROM {v}.customer_profile) p
LEFT JOIN contracts c ON c.customer_id = p.customer_id
LEFT JOIN installed i ON i.customer_id = p.customer_id
LEFT JOIN visits vi ON vi.customer_id = p.customer_id
ORDER BY p.customer_id"""
