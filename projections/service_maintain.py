"""Incremental maintenance of the service tables, the profile's service columns and the goals.

The full-build SQL of projections.service_models and projections.goals reads `{v}.events`
and earlier tables of schema `v`. Here the same functions run against a scratch schema
whose `events` holds only the index rows of the touched keys (projections.logindex) and
whose other inputs are views of the version's tables; their results replace the touched
keys' rows. Events with a payload (contracts, visits, installed products, goals) are looked
up in the index's table of payload events, a tenth of its rows. Touched keys, for the new
events of an update:

- `contract_terms`, by contract: the contracts named by new contract events (a term
  depends on its contract's events only).
- `sla_case`, by case: the cases of new openings, acceptances and resolutions, and every
  case of a customer whose contract terms changed (a contract started later covers earlier
  cases), recomputed from their events (those of the cases the update read are at hand;
  a case whose customer's terms alone changed is given by its own row's case steps); and
  the unresolved cases whose SLA ran out between the old and the new "now" (the log's last
  event), the only rows "now" changes, and only their `breached`, set in place.
- `field_visit`, by the case of the visit's scheduling: the cases of the visits named by
  new visit events (a case's first visit depends on all of its visits).
- the service rows of `measures`: the SLA rows of the cases whose SLA was recomputed and
  the visit rows of the cases whose visits were (every service measure row belongs to a
  case and comes from one `sla_case` or `field_visit` row), made from those new rows; the
  keys of the rows that differ, old against new, pass on to the KPI tables.
- `retention_month`, by month: the months the changed contracts' terms (before and after,
  and the terms they replaced) come up for renewal in, and those of the terms of customers
  whose details changed; segment and region from the just updated profiles.
- the profile's service columns: customers named by new events, customers of changed terms
  or visits, and customers with a term that starts, ends or is due between the old and the
  new "now"; updated in place (the profile's other columns are kept by
  projections.profile_state).
- the goal tables (per version): rebuilt whole by their full-build statements in the
  version's schema, reading the goal events of the index (a temp table) and the version's
  team KPIs and scores.

A new join or team move re-attributes everything; then projections.maintain rebuilds the
service tables whole, as a full build does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import duckdb

from projections.goals import GOAL_EVENTS, GOAL_TABLES, goal_model_sql
from projections.logindex import timestamp_sql
from projections.service_models import (
    PROFILE_SERVICE_COLUMNS,
    SLA_MEASURES,
    VISIT_MEASURES,
    contract_terms_sql,
    field_visit_sql,
    profile_service_sql,
    retention_sql,
    service_measures_select,
    sla_case_sql,
)
from projections.written import rows_written

#: The scratch schema the full-build SQL runs in (created and dropped inside the update's transaction).
SCRATCH = "crm_inc"
_SLA = ", ".join(f"'{m}'" for m in SLA_MEASURES)
_VISIT = ", ".join(f"'{m}'" for m in VISIT_MEASURES)
_CASE_STEPS = "('CaseOpened', 'CaseAccepted', 'CaseResolved')"
_DETAILS = "('CustomerRegistered', 'CustomerDetailsChanged')"
#: The columns of `events` each model's SQL reads.
_CONTRACT_READS = ("event_type", "event_id", "notification_id", "occurred_at", "customer_id", "payload")
_SLA_READS = (
    "event_type",
    "event_id",
    "notification_id",
    "occurred_at",
    "customer_id",
    "employee_id",
    "case_id",
    "severity",
    "kind",
)
_VISIT_READS = (*_CONTRACT_READS, "employee_id", "case_id")
_INSTALL_READS = ("event_type", "notification_id", "occurred_at", "customer_id", "payload")
_GOAL_READS = ("event_type", "event_id", "notification_id", "occurred_at", "payload")
#: The retention months an update touches, and a term's month (as retention_sql has it).
_PERIODS = "crm_sv_periods"
_TERM_PERIOD = "strftime(due_on, '%Y-%m')"
#: The index rows one scratch `events` is fetched by.
_ROWS = "crm_sv_rows"
#: The temporary key tables of one update.
KEY_TABLES = (
    _PERIODS,
    _ROWS,
    "crm_sv_contracts",
    "crm_sv_cov",
    "crm_sv_sla",
    "crm_sv_visits_new",
    "crm_sv_fv",
    "crm_sv_visits",
    "crm_sv_fv_customers",
    "crm_sv_sla_rows",
    "crm_sv_fv_rows",
    "crm_sv_service",
    "crm_sv_old_rows",
    "crm_sv_customers",
    "crm_sv_far",
    "crm_goal_events",
)
#: The goal events of one update.
_GOAL_EV = "crm_goal_events"


def differing_keys_select(old: str, new: str) -> str:
    """The (employee_id, team_id, occurred_at) of the measure rows that differ between the
    queries `old` and `new` (rows of `measures`), as multisets.

    Each row is counted +1 as old and -1 as new, and the rows whose counts do not cancel
    differ: one grouping, ~3 times cheaper than two EXCEPT ALL.
    """
    return (
        "SELECT employee_id, team_id, occurred_at FROM (SELECT * EXCLUDE (side), sum(side) AS n FROM "
        f"(SELECT *, 1 AS side FROM ({old}) UNION ALL SELECT *, -1 AS side FROM ({new})) GROUP BY ALL) "
        "WHERE n <> 0"
    )


class Scratch:
    """The scratch schema: inputs as tables or views, emptied between steps.

    It remembers what is made in it (its own tables and views, and the tables the model
    statements run through `build` create), so that emptying it drops exactly those: asking
    the catalog instead cost ~1-1.5 ms a time, eight times an update.
    """

    def __init__(self, connection: duckdb.DuckDBPyConnection) -> None:
        self.connection = connection
        self.run: Callable[..., Any] = connection.execute
        self._made: dict[str, str] = {}

    def __enter__(self) -> Scratch:
        self.run(f"CREATE SCHEMA IF NOT EXISTS {SCRATCH}")
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.clear()
            self.run(f"DROP SCHEMA {SCRATCH}")

    def clear(self) -> None:
        """Drop every object made in the scratch schema (one by one: DuckDB cannot commit a
        cascaded drop of tables created in the same transaction)."""
        for name, kind in reversed(self._made.items()):
            self.run(f"DROP {kind} {SCRATCH}.{name}")
        self._made.clear()

    def build(self, statement: str) -> None:
        """Run a model's statement, which creates its table in the scratch schema."""
        self.run(statement)
        for name in _CREATED.findall(statement):
            self._made[name] = "TABLE"

    def events(self, select: str) -> None:
        self.table("events", select)

    def view(self, name: str, select: str) -> None:
        self.run(f"CREATE VIEW {SCRATCH}.{name} AS {select}")
        self._made[name] = "VIEW"

    def table(self, name: str, select: str) -> None:
        self.run(f"CREATE TABLE {SCRATCH}.{name} AS {select}")
        self._made[name] = "TABLE"


#: The tables a model statement creates in the scratch schema.
_CREATED = re.compile(rf"CREATE (?:OR REPLACE )?TABLE {SCRATCH}\.(\w+)")


class ServiceMaintenance:
    """One incremental update of the service tables of storage schema `s`.

    `index` is the source's index table and `payloads` its table of payload events
    (projections.logindex), `visible` the condition of a version's rows in them,
    `crm_fresh` (a temp table of index rows) the update's new events. `at_hand` names a
    table of those index rows that holds every event of the cases listed in a second
    table (the maintainer's materialised events and the cases it read): the SLA of those
    cases is computed from it instead of fetching their rows from the index again.
    """

    def __init__(  # noqa: PLR0917 - the update's inputs, named at the one caller
        self,
        connection: duckdb.DuckDBPyConnection,
        s: str,
        index: str,
        payloads: str,
        visible: str,
        old_end: datetime | None,
        new_end: datetime | None,
        at_hand: tuple[str, str] | None = None,
    ) -> None:
        self.connection = connection
        self.at_hand = at_hand
        self.run: Callable[..., Any] = connection.execute
        self.s = s
        self.index = index
        self.payloads = payloads
        self.visible = visible
        self.old_end = old_end
        self.new_end = new_end

    def _rows(
        self, columns: tuple[str, ...], where: str, *, with_end: bool = False, payloads: bool = False
    ) -> str:
        """`columns` of the version's index rows matching `where`, as `events` (with the
        log's end when asked; from the payload events only when `payloads`). Fetching
        scattered rows costs per column fetched: the rows are found by their key columns
        first, then only the columns the SQL reads are fetched."""
        table = self.payloads if payloads else self.index
        # The row ids as a table of their own: DuckDB then skips the index's row groups that
        # hold none of them (an inline subquery scans every row group of the wide columns).
        self.run(
            f"CREATE OR REPLACE TEMP TABLE {_ROWS} AS SELECT rowid AS r FROM {table} "
            f"WHERE {self.visible} AND ({where})"
        )
        select = f"SELECT {', '.join(columns)} FROM {table} WHERE rowid IN (SELECT r FROM {_ROWS})"
        return self._with_end(select) if with_end else select

    def _with_end(self, select: str) -> str:
        """`select` and one row carrying the log's last moment: the SQL's "now" is
        max(occurred_at) of `events`; its event type matches no filter, so nothing else reads it."""
        end = timestamp_sql(self.new_end)
        return f"{select} UNION ALL BY NAME SELECT 'crm.log_end' AS event_type, {end} AS occurred_at"

    def _sla_events(self, sla: str) -> str:
        """The case steps of the cases `sla` selects, with the log's end, as `events`.

        The cases whose events are at hand are read from there. The others are cases of
        customers whose terms changed, with no new case step (a new step is at hand): their
        events are as they were when their `sla_case` row was made, and sla_case_sql reads
        of them only what that row holds - the first opening's customer, severity, kind and
        moment, the first acceptance's moment, the first resolution's moment, resolver and
        event. So each is given as one opening, one acceptance and one resolution made from
        its row (one of each: no ties to break), which gives the same row under new terms
        without fetching its events from the index.
        """
        steps = f"event_type IN {_CASE_STEPS}"
        if self.at_hand is None:
            return self._rows(_SLA_READS, f"{sla} AND {steps}", with_end=True)
        events, cases = self.at_hand
        # The far cases' rows, read once (the three steps below each read them); found by
        # their key column first, then fetched by row id (filtering a scan of every column
        # read every row of them: twice the time).
        far_cases = rows_written(
            self.connection,
            "CREATE OR REPLACE TEMP TABLE crm_sv_far AS SELECT opened_at, accepted_at, resolved_at, "
            f"resolved_event_id, resolver_id, customer_id, case_id, severity, kind FROM {self.s}.sla_case "
            f"WHERE rowid IN (SELECT rowid FROM {self.s}.sla_case "
            "WHERE case_id IN (SELECT case_id FROM crm_sv_sla) "
            f"AND case_id NOT IN (SELECT case_id FROM {cases} WHERE case_id IS NOT NULL))",
        )
        near = (
            f"SELECT {', '.join(_SLA_READS)} FROM {events} WHERE {steps} AND {sla} "
            f"AND case_id IN (SELECT case_id FROM {cases})"
        )
        if far_cases:
            far = "FROM crm_sv_far WHERE TRUE"
            near += (
                " UNION ALL BY NAME SELECT 'CaseOpened' AS event_type, opened_at AS occurred_at, "
                f"customer_id, case_id, severity, kind {far}"
                " UNION ALL BY NAME SELECT 'CaseAccepted' AS event_type, accepted_at AS occurred_at, "
                f"customer_id, case_id {far} AND accepted_at IS NOT NULL"
                " UNION ALL BY NAME SELECT 'CaseResolved' AS event_type, resolved_at AS occurred_at, "
                "resolved_event_id AS event_id, resolver_id AS employee_id, customer_id, case_id "
                f"{far} AND resolved_at IS NOT NULL"
            )
        return self._with_end(near)

    def _count(self, table: str) -> int:
        return int(self.run(f"SELECT count(*) FROM {table}").fetchone()[0])

    def tables(self) -> None:
        """contract_terms, sla_case, field_visit, their measure rows and retention_month.

        Adds the keys of changed service measure rows to `crm_touched`.
        """
        s, run = self.s, self.run
        with Scratch(self.connection) as scratch:
            # Contract terms, by contract.
            any_contracts = rows_written(
                self.connection,
                "CREATE OR REPLACE TEMP TABLE crm_sv_contracts AS SELECT DISTINCT contract_id "
                "FROM crm_fresh WHERE contract_id IS NOT NULL",
            )
            run("CREATE OR REPLACE TEMP TABLE crm_sv_cov (customer_id VARCHAR)")
            run(f"CREATE OR REPLACE TEMP TABLE {_PERIODS} (period VARCHAR)")
            contracts = "contract_id IN (SELECT contract_id FROM crm_sv_contracts)"
            if any_contracts:
                scratch.events(self._rows(_CONTRACT_READS, contracts, payloads=True))
                scratch.build(contract_terms_sql(SCRATCH))
                run(
                    f"INSERT INTO crm_sv_cov SELECT customer_id FROM {s}.contract_terms WHERE {contracts} "
                    f"UNION SELECT customer_id FROM {SCRATCH}.contract_terms"
                )
                # The retention months of the terms before and after, and of the terms these
                # contracts replaced (their retained value is the replacement's start value).
                run(
                    f"INSERT INTO {_PERIODS} SELECT {_TERM_PERIOD} FROM {s}.contract_terms "
                    f"WHERE {contracts} OR replaced_by IN (SELECT contract_id FROM crm_sv_contracts) "
                    f"UNION SELECT {_TERM_PERIOD} FROM {SCRATCH}.contract_terms"
                )
                run(f"DELETE FROM {s}.contract_terms WHERE {contracts}")
                run(f"INSERT INTO {s}.contract_terms SELECT * FROM {SCRATCH}.contract_terms")
                scratch.clear()
            # SLA per case: new case steps and the cases of customers whose terms changed are
            # recomputed. Of the others, only the unresolved cases whose due moment "now" (the
            # log's last event) has passed since the last update change, and only in
            # `breached`: NULL (within the SLA) becomes true, as sla_case_sql gives when the
            # log's end lies past `due_at`; such a case has no measure rows (it is unresolved).
            any_sla = rows_written(
                self.connection,
                "CREATE OR REPLACE TEMP TABLE crm_sv_sla AS SELECT case_id FROM crm_fresh "
                f"WHERE case_id IS NOT NULL AND event_type IN {_CASE_STEPS} "
                f"UNION SELECT case_id FROM {s}.sla_case "
                "WHERE customer_id IN (SELECT customer_id FROM crm_sv_cov) AND case_id IS NOT NULL",
            ) > 0
            run(
                f"UPDATE {s}.sla_case SET breached = true WHERE breached IS NULL AND resolved_at IS NULL "
                f"AND due_at < {timestamp_sql(self.new_end)} "
                "AND case_id NOT IN (SELECT case_id FROM crm_sv_sla)"
            )
            sla = "case_id IN (SELECT case_id FROM crm_sv_sla)"
            # The new rows of the recomputed cases are kept for their measure rows.
            if any_sla:
                scratch.events(self._sla_events(sla))
                scratch.view("contract_terms", f"SELECT * FROM {s}.contract_terms")
                scratch.build(sla_case_sql(SCRATCH))
                run(f"DELETE FROM {s}.sla_case WHERE {sla}")
                run(f"INSERT INTO {s}.sla_case SELECT * FROM {SCRATCH}.sla_case")
                run(f"CREATE OR REPLACE TEMP TABLE crm_sv_sla_rows AS SELECT * FROM {SCRATCH}.sla_case")
                scratch.clear()
            else:
                run(f"CREATE OR REPLACE TEMP TABLE crm_sv_sla_rows AS SELECT * FROM {s}.sla_case LIMIT 0")
            # Field visits, by the case they were scheduled for.
            run(
                "CREATE OR REPLACE TEMP TABLE crm_sv_visits_new AS SELECT DISTINCT visit_id FROM crm_fresh "
                "WHERE visit_id IS NOT NULL"
            )
            any_fv = rows_written(
                self.connection,
                "CREATE OR REPLACE TEMP TABLE crm_sv_fv AS SELECT DISTINCT case_id FROM "
                f"{self.payloads} WHERE {self.visible} AND event_type = 'FieldVisitScheduled' "
                "AND visit_id IN (SELECT visit_id FROM crm_sv_visits_new)",
            ) > 0
            fv = "case_id IN (SELECT case_id FROM crm_sv_fv)"
            run("CREATE OR REPLACE TEMP TABLE crm_sv_fv_customers (customer_id VARCHAR)")
            if any_fv:
                run(
                    "CREATE OR REPLACE TEMP TABLE crm_sv_visits AS SELECT DISTINCT visit_id FROM "
                    f"{self.payloads} WHERE {self.visible} AND event_type = 'FieldVisitScheduled' AND {fv}"
                )
                visits = "visit_id IN (SELECT visit_id FROM crm_sv_visits)"
                scratch.events(self._rows(_VISIT_READS, visits, payloads=True))
                scratch.view("team_history", f"SELECT * FROM {s}.team_history")
                scratch.build(field_visit_sql(SCRATCH))
                run(
                    f"INSERT INTO crm_sv_fv_customers SELECT customer_id FROM {s}.field_visit WHERE {fv} "
                    f"UNION SELECT customer_id FROM {SCRATCH}.field_visit"
                )
                run(f"DELETE FROM {s}.field_visit WHERE {fv}")
                run(f"INSERT INTO {s}.field_visit SELECT * FROM {SCRATCH}.field_visit")
                run(f"CREATE OR REPLACE TEMP TABLE crm_sv_fv_rows AS SELECT * FROM {SCRATCH}.field_visit")
                scratch.clear()
            else:
                run(f"CREATE OR REPLACE TEMP TABLE crm_sv_fv_rows AS SELECT * FROM {s}.field_visit LIMIT 0")
            # The service measure rows of those cases: SLA rows from the cases' new `sla_case`
            # rows, visit rows from their new `field_visit` rows (the other kind of row of a
            # case is as it was).
            if any_sla or any_fv:
                scratch.table("sla_case", "SELECT * FROM crm_sv_sla_rows")
                scratch.table("field_visit", "SELECT * FROM crm_sv_fv_rows")
                scratch.view("team_history", f"SELECT * FROM {s}.team_history")
                run(f"CREATE OR REPLACE TEMP TABLE crm_sv_service AS {service_measures_select(SCRATCH)}")
                scratch.clear()
                run(
                    "CREATE OR REPLACE TEMP TABLE crm_sv_old_rows AS SELECT rowid AS r FROM "
                    f"{s}.measures WHERE (measure IN ({_SLA}) AND {sla}) OR (measure IN ({_VISIT}) AND {fv})"
                )
                # Only the keys of the rows that differ pass on. Most of these rows are made
                # again the same (the cases of a customer whose terms changed, opened months
                # ago): passing on every key made the KPI tables recompute, and the scores
                # rewrite, every month those cases lie in.
                old = f"SELECT * FROM {s}.measures WHERE rowid IN (SELECT r FROM crm_sv_old_rows)"
                run(f"INSERT INTO crm_touched {differing_keys_select(old, 'SELECT * FROM crm_sv_service')}")
                run(f"DELETE FROM {s}.measures WHERE rowid IN (SELECT r FROM crm_sv_old_rows)")
                run(f"INSERT INTO {s}.measures SELECT * FROM crm_sv_service")

    def retention(self) -> None:
        """retention_month of the months whose terms changed, or whose customers' details did.

        Runs after the profiles of the customers named by new events are recomputed: their
        `segment` and `region` are the same arg_max over the same details events that a full
        build's retention reads. Every row belongs to one month (the period of every grouping
        set), made from that month's terms only, so the touched months' rows are replaced.
        """
        s, run = self.s, self.run
        run(
            f"INSERT INTO {_PERIODS} SELECT {_TERM_PERIOD} FROM {s}.contract_terms WHERE customer_id IN "
            f"(SELECT customer_id FROM crm_fresh WHERE event_type IN {_DETAILS})"
        )
        if not self._count(_PERIODS):
            return
        # A term without an end has no month (NULL): compared as '' so that its rows are kept too.
        periods = f"coalesce(period, '') IN (SELECT coalesce(period, '') FROM {_PERIODS})"
        with Scratch(self.connection) as scratch:
            scratch.view("contract_terms", f"SELECT * FROM {s}.contract_terms")
            scratch.build(retention_sql(SCRATCH, f"{s}.customer_profile", periods))
            run(f"DELETE FROM {s}.retention_month WHERE {periods}")
            run(f"INSERT INTO {s}.retention_month SELECT * FROM {SCRATCH}.retention_month")
            scratch.clear()

    def profile(self, named: str) -> None:
        """The service columns of the touched customers' profiles.

        `named` selects the customers named by new events (their profile rows were just
        recomputed, with the service columns NULL).
        """
        s, run = self.s, self.run
        customers_found = rows_written(
            self.connection,
            f"CREATE OR REPLACE TEMP TABLE crm_sv_customers AS {named} "
            "UNION SELECT customer_id FROM crm_sv_cov UNION SELECT customer_id FROM crm_sv_fv_customers",
        )
        if self.old_end != self.new_end:
            # "Now" moved: the terms whose start, end or due moment it passed change coverage
            # and the next renewal.
            if self.old_end is None:
                moved = "TRUE"
            else:
                low, high = timestamp_sql(self.old_end), timestamp_sql(self.new_end)
                moved = " OR ".join(
                    f"{c} BETWEEN {low} AND {high}" for c in ("starts_on", "final_ends_on", "covered_until")
                )
            customers_found += rows_written(
                self.connection,
                f"INSERT INTO crm_sv_customers SELECT customer_id FROM {s}.contract_terms WHERE {moved}",
            )
        if not customers_found:
            return
        customers = "customer_id IN (SELECT customer_id FROM crm_sv_customers)"
        with Scratch(self.connection) as scratch:
            # The keys alone: the service SQL passes the profile's other columns through, and
            # the rows are updated in place with the service columns only (copying the whole
            # rows out and back read every column of the profile, then deleted and inserted).
            scratch.table(
                "customer_profile",
                "SELECT DISTINCT customer_id FROM crm_sv_customers WHERE customer_id IS NOT NULL",
            )
            scratch.events(
                self._rows(
                    _INSTALL_READS,
                    f"{customers} AND event_type IN ('ProductInstalled', 'ProductRemoved')",
                    with_end=True,
                    payloads=True,
                )
            )
            scratch.view("contract_terms", f"SELECT * FROM {s}.contract_terms WHERE {customers}")
            scratch.view("field_visit", f"SELECT * FROM {s}.field_visit WHERE {customers}")
            scratch.build(profile_service_sql(SCRATCH))
            columns = ", ".join(f"{c} = r.{c}" for c in PROFILE_SERVICE_COLUMNS)
            run(
                f"UPDATE {s}.customer_profile AS p SET {columns} FROM {SCRATCH}.customer_profile r "
                "WHERE p.customer_id = r.customer_id"
            )
            scratch.clear()


def maintain_goals(
    connection: duckdb.DuckDBPyConnection, v: str, payloads: str, visible: str, *, goals_changed: bool = True
) -> None:
    """Rebuild a version's goal tables from the goal events of the index's payload events
    (`payloads`: projections.logindex), not from a scan of the log.

    The full-build statements run in the version's schema itself, reading the goal events
    from a temp table: the tables are small, and building them in a scratch schema and
    copying them over cost ~25 more statements. Unless `goals_changed` (new goal events, or
    a goal table missing), `team_goal` is kept: it is made from the goal events alone. With
    no goal at all, the progress and effect of goals are empty and kept so; the evidence
    tables, made from the team KPIs, are rebuilt whatever the goals.
    """
    run = connection.execute
    keep: set[str] = set()
    if not goals_changed:
        keep.add("team_goal")
        if run(f"SELECT count(*) FROM {v}.team_goal").fetchone() == (0,):
            keep |= {"team_goal_progress", "team_goal_effect"}
    if "team_goal_progress" not in keep:
        goals = f"{visible} AND event_type IN {GOAL_EVENTS}"
        run(
            f"CREATE OR REPLACE TEMP TABLE {_GOAL_EV} AS SELECT {', '.join(_GOAL_READS)} "
            f"FROM {payloads} WHERE {goals}"
        )
    for table, statement in zip(GOAL_TABLES, goal_model_sql(v, _GOAL_EV), strict=True):
        if table not in keep:
            run(statement)
