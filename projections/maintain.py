"""The maintainer: a version's derived tables from a snapshot of the decoded log.

A version holds derived tables only. Each update reads one committed snapshot of the
shared log and records, in the same DuckDB transaction as the tables, the snapshot's
log version and stream positions: a crash neither loses nor double counts.

A first build (or `full`) runs the set-based SQL of projections.models over the
snapshot. Later updates are incremental: only the rows after the recorded positions are
new, and they touch a known set of keys - the employees whose team history changed, the
cases they name (a case's first resolution, reopenings, knowledge and citations depend on
all of its events), the customers they name, the statements' employee-months. Every
derived row is a function of such keys, so deleting and recomputing the rows of the
touched keys gives exactly what a full rebuild gives (tests/test_incremental.py checks
this property on random chunks with late and out-of-order events).
"""

from __future__ import annotations

from dataclasses import dataclass

from projections.log import register_log, relation_name
from projections.models import (
    CASE_MEASURES,
    PERIODS,
    all_model_sql,
    complaint_kpi_select,
    customer_profile_select,
    kpi_select,
    measures_sql,
    reward_components_select,
    reward_score_select,
    reward_statement_select,
    scores_only_sql,
    team_history_sql,
)
from projections.sources import Position
from projections.spec import MetricSpec
from projections.store import LOG_STREAM, ProjectionDB, VersionInfo

#: The typed events of the snapshot, materialised once per update (many scans follow).
EV = "crm_ev"
_STATEMENTS = "('RewardStatementIssued', 'RewardAdjustmentIssued')"


@dataclass(frozen=True)
class UpdateResult:
    """What one update did."""

    log_version: int
    new_events: int
    full: bool


class Maintainer:
    """Keeps one version's derived tables equal to a function of the log."""

    def __init__(self, db: ProjectionDB, version: VersionInfo) -> None:
        self.db = db
        self.version = version
        #: where the spec-independent and KPI tables live (the base of a weights-only version)
        self.storage = db.storage_version(version)
        self.log = db.log(version.source)

    def log_version_recorded(self) -> int | None:
        """The log version the version's tables reflect (None before the first build)."""
        return self.db.tracking(self.storage).max_tracking_id(LOG_STREAM)

    def is_current(self) -> bool:
        states = self.db.connection.execute(
            "SELECT state FROM main.crm_versions WHERE version IN (?, ?)",
            [self.version.version, self.storage.version],
        ).fetchall()
        if not states or any(s[0] != "ready" for s in states):
            return False
        return self.log_version_recorded() == self.log.version()

    def update(self, *, full: bool = False, scores_only: bool = False) -> UpdateResult:
        """Bring the tables to the log's latest snapshot, in one transaction."""
        con = self.db.connection
        snapshot = self.log.version()
        register_log(con, self.version.source, self.log, snapshot)
        recorded = self.log_version_recorded()
        s = self.storage.schema
        con.execute("BEGIN TRANSACTION")
        try:
            if scores_only and recorded == snapshot:
                result = UpdateResult(snapshot, 0, False)
            else:
                con.execute(
                    f"CREATE OR REPLACE TEMP TABLE {EV} AS "
                    f"SELECT * EXCLUDE (payload, value, chain) FROM {s}.events"
                )
                full = full or recorded is None
                if full:
                    for statement in all_model_sql(
                        s, self.storage.spec(), self.storage.version, EV, f"{s}.events"
                    ):
                        con.execute(statement)
                    new = int(con.execute(f"SELECT count(*) FROM {EV}").fetchone()[0])  # type: ignore[index]
                else:
                    new = self._incremental(s)
                self._record(snapshot, full)
                result = UpdateResult(snapshot, new, full)
            if self.version.version != self.storage.version:
                for statement in scores_only_sql(
                    self.version.schema, self.version.spec(), self.version.version
                ):
                    con.execute(statement)
            self.db.mark_built(self.storage, snapshot)
            if self.version.version != self.storage.version:
                self.db.mark_built(self.version, snapshot)
            con.execute(f"DROP TABLE IF EXISTS {EV}")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        return result

    def _record(self, snapshot: int, full: bool) -> None:
        """The snapshot's stream positions and log version, beside the tables."""
        con = self.db.connection
        tracking = self.db.tracking(self.storage)
        if full:
            con.execute(f"DELETE FROM {self.storage.schema}.tracking")
        current = tracking.positions()
        rows = con.execute(
            f"SELECT stream, max(position) FROM {relation_name(self.version.source)} GROUP BY stream"
        ).fetchall()
        positions = [
            Position(str(stream), int(last))
            for stream, last in rows
            if stream not in current or int(last) > current[stream].offset
        ]
        if LOG_STREAM not in current or snapshot > current[LOG_STREAM].offset:
            positions.append(Position(LOG_STREAM, snapshot))
        tracking.record_positions(positions)

    def _incremental(self, s: str) -> int:
        """Delete and recompute the rows of the keys the new events touch; returns their count."""
        con = self.db.connection
        spec: MetricSpec = self.storage.spec()
        run = con.execute
        run(
            "CREATE OR REPLACE TEMP TABLE crm_tracked AS SELECT application_name AS stream, "
            f"notification_id AS position FROM {s}.tracking"
        )
        run(
            f"CREATE OR REPLACE TEMP TABLE crm_new AS SELECT e.* FROM {EV} e "
            "LEFT JOIN crm_tracked t ON t.stream = e.stream "
            "WHERE t.position IS NULL OR e.position > t.position"
        )
        new = int(run("SELECT count(*) FROM crm_new").fetchone()[0])  # type: ignore[index]
        if new == 0:
            return 0
        run(
            "CREATE OR REPLACE TEMP TABLE crm_emp AS SELECT DISTINCT employee_id FROM crm_new "
            "WHERE event_type IN ('EmployeeJoined', 'EmployeeMovedTeam') AND employee_id IS NOT NULL"
        )
        run(
            "CREATE OR REPLACE TEMP TABLE crm_case AS SELECT case_id FROM crm_new WHERE case_id IS NOT NULL "
            "UNION SELECT source_case_id FROM crm_new WHERE source_case_id IS NOT NULL"
        )
        # Team history, then the measures it attributes.
        emp = "employee_id IN (SELECT employee_id FROM crm_emp)"
        run(f"DELETE FROM {s}.team_history WHERE {emp}")
        run(f"INSERT INTO {s}.team_history {team_history_sql(s, EV, emp)}")
        cases = ", ".join(f"'{m}'" for m in CASE_MEASURES)
        old_scope = f"{emp} OR (measure IN ({cases}) AND case_id IN (SELECT case_id FROM crm_case))"
        run(
            f"CREATE OR REPLACE TEMP TABLE crm_touched AS SELECT employee_id, team_id, occurred_at "
            f"FROM {s}.measures WHERE {old_scope}"
        )
        run(f"DELETE FROM {s}.measures WHERE {old_scope}")
        new_scope = (
            "raw.employee_id IN (SELECT employee_id FROM crm_emp)"
            f" OR (raw.measure IN ({cases}) AND raw.case_id IN (SELECT case_id FROM crm_case))"
            f" OR (raw.measure NOT IN ({cases}) AND raw.event_id IN (SELECT event_id FROM crm_new))"
        )
        run(f"CREATE OR REPLACE TEMP TABLE crm_measures AS {measures_sql(s, EV, new_scope)}")
        run(f"INSERT INTO {s}.measures SELECT * FROM crm_measures")
        run("INSERT INTO crm_touched SELECT employee_id, team_id, occurred_at FROM crm_measures")
        # KPI rows of the touched (employee, team, period) and (team, period), per grain.
        for grain, period in PERIODS.items():
            run(
                f"CREATE OR REPLACE TEMP TABLE crm_aff AS SELECT DISTINCT employee_id, team_id, "
                f"{period} AS period FROM crm_touched"
            )
            table = f"{s}.kpi_employee_{grain}"
            run(
                f"DELETE FROM {table} USING crm_aff a WHERE {table}.employee_id IS NOT DISTINCT FROM "
                f"a.employee_id AND {table}.team_id = a.team_id AND {table}.period = a.period"
            )
            keys = f"(employee_id, team_id, {period}) IN (SELECT employee_id, team_id, period FROM crm_aff)"
            run(f"INSERT INTO {table} {kpi_select(s, spec, grain, False, keys)}")
            table = f"{s}.kpi_team_{grain}"
            run(
                f"DELETE FROM {table} WHERE (team_id, period) IN "
                "(SELECT DISTINCT team_id, period FROM crm_aff)"
            )
            keys = f"(team_id, {period}) IN (SELECT DISTINCT team_id, period FROM crm_aff)"
            run(f"INSERT INTO {table} {kpi_select(s, spec, grain, True, keys)}")
        # Scores of the touched months (a team's or the organisation's rate feeds everyone's).
        run(
            f"CREATE OR REPLACE TEMP TABLE crm_months AS SELECT DISTINCT {PERIODS['month']} AS period "
            "FROM crm_touched"
        )
        months = "period IN (SELECT period FROM crm_months)"
        run(f"DELETE FROM {s}.reward_components WHERE {months}")
        run(f"INSERT INTO {s}.reward_components {reward_components_select(s, spec, months)}")
        run(f"DELETE FROM {s}.reward_score WHERE {months}")
        run(f"INSERT INTO {s}.reward_score {reward_score_select(s, spec, self.storage.version, months)}")
        # Customers named by the new events.
        customers = "customer_id IN (SELECT customer_id FROM crm_new WHERE customer_id IS NOT NULL)"
        run(f"DELETE FROM {s}.customer_profile WHERE {customers}")
        run(f"INSERT INTO {s}.customer_profile {customer_profile_select(EV, customers)}")
        # Complaint months of every opening of a touched case (the old first opening among them).
        run(
            "CREATE OR REPLACE TEMP TABLE crm_complaints AS SELECT DISTINCT team_id, "
            f"strftime(occurred_at, '%Y-%m') AS period FROM {EV} WHERE event_type = 'CaseOpened' "
            "AND team_id IS NOT NULL AND case_id IN (SELECT case_id FROM crm_case)"
        )
        pairs = "(team_id, period) IN (SELECT team_id, period FROM crm_complaints)"
        run(f"DELETE FROM {s}.complaint_kpi_month WHERE {pairs}")
        run(f"INSERT INTO {s}.complaint_kpi_month {complaint_kpi_select(EV, pairs)}")
        # Statements and adjustments of the employee-months they were issued for.
        run(
            "CREATE OR REPLACE TEMP TABLE crm_statements AS SELECT DISTINCT employee_id, period "
            f"FROM crm_new WHERE event_type IN {_STATEMENTS}"
        )
        stmts = "(employee_id, period) IN (SELECT employee_id, period FROM crm_statements)"
        run(f"DELETE FROM {s}.reward_statement WHERE {stmts}")
        run(f"INSERT INTO {s}.reward_statement {reward_statement_select(f'{s}.events', stmts)}")
        for temp in (
            "crm_tracked",
            "crm_new",
            "crm_emp",
            "crm_case",
            "crm_touched",
            "crm_measures",
            "crm_aff",
            "crm_months",
            "crm_complaints",
            "crm_statements",
        ):
            run(f"DROP TABLE IF EXISTS {temp}")
        return new
