"""The maintainer: a version's derived tables from a snapshot of the decoded log.

A version holds derived tables only. Each update reads one committed snapshot of the
shared log and records, in the same DuckDB transaction as the tables, the snapshot's
log version and stream positions: a crash neither loses nor double counts.

A first build (or `full`) runs the set-based SQL of projections.models over the
snapshot. Later updates are incremental: only the rows after the recorded positions are
new, and they touch a known set of keys - the employees whose team history changed, the
cases whose opening, acceptance, resolution, reopening or knowledge they add to (a case's
first resolution, reopenings, knowledge, citations, complaint row and SLA depend on all of
its events), the customers they name, the statements' employee-months. Every
derived row is a function of such keys, so deleting and recomputing the rows of the
touched keys gives exactly what a full rebuild gives (tests/projections/test_incremental.py checks
this property on random chunks with late and out-of-order events).

The touched keys' rows are found in the source's log index (projections.logindex: the
log's typed columns in DuckDB, one per source, synced and committed just before the
update), not by a scan of the Delta table. The named customers' profiles are combined
from stored partial aggregates and the new events alone (projections.profile_state),
without reading their earlier events. The service tables and the profile's service columns are kept by
contract, case and customer, including the rows that only "now" (the log's last event)
changes (projections.service_maintain); the team goal tables, marked `whole` in
projections.readmodels, are rebuilt after the scores from the index's goal events. A new
join or team move re-attributes an employee's history: then the whole snapshot is read and
the service tables are rebuilt whole, as a full build does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from projections.asof_loop import small_asof_joins
from projections.catalog import existing_tables
from projections.goals import GOAL_EVENTS, GOAL_TABLES
from projections.kpi_days import DAYS, READS, build_sql, days_select, periods_select
from projections.log import EVENT_COLUMNS, relation_name
from projections.logindex import LogIndex, visible_sql
from projections.models import (
    ANSWERS,
    CASE_MEASURES,
    PERIOD_STARTS,
    PERIODS,
    answers_histogram_sql,
    complaint_kpi_select,
    kpi_rethreshold_select,
    kpi_sql,
    measures_sql,
    reward_components_select,
    reward_score_select,
    reward_statement_select,
    scores_sql,
    spec_independent_sql,
    team_history_sql,
)
from projections.profile_state import CASES, MERGED, PARTIALS, merge_sql, profile_select, state_sql
from projections.profile_state import TEMPS as PROFILE_TEMPS
from projections.service_maintain import KEY_TABLES, ServiceMaintenance, differing_keys_select, maintain_goals
from projections.service_models import (
    SERVICE_MEASURES,
    profile_service_sql,
    service_measures_select,
    service_model_sql,
)
from projections.sources import Position
from projections.spec import MetricSpec
from projections.store import LOG_STREAM, ProjectionDB, VersionInfo
from projections.transaction import transaction
from projections.written import rows_written

#: The typed events of the snapshot, materialised once per update (many scans follow).
EV = "crm_ev"
#: Columns of the log no read model reads (only `reward_statement` reads the payload, from
#: the log itself): left out of the materialised events.
_UNREAD = (
    "payload",
    "value",
    "chain",
    "source",
    '"partition"',
    '"offset"',
    "schema_version",
    "recorded_at",
    "to_employee_id",
    "direction",
    "ces",
    "recipient_kind",
    "score",
)
_TEMPS = (
    "crm_fresh",
    "crm_opened",
    "crm_read_cases",
    "crm_new",
    "crm_emp",
    "crm_case",
    "crm_touched",
    "crm_measures",
    "crm_aff",
    "crm_months",
    "crm_complaints",
    "crm_statements",
    "crm_service",
    "crm_ev_rows",
    "crm_old_rows",
    "crm_kday",
    "crm_kpi_rows",
)
#: The columns of EV (those of a version's `events` less _UNREAD).
_EV_COLUMNS = ", ".join(
    f'"{c}"' for c in ("stream", "position", *EVENT_COLUMNS) if f'"{c}"' not in _UNREAD and c not in _UNREAD
)
_SERVICE = ", ".join(f"'{m}'" for m in SERVICE_MEASURES)
#: The new events that change what a case's other events give, and so make an update read
#: all of the case's events: its case measures (models.CASE_MEASURES: the first resolution,
#: a reopening after it, knowledge linked or created from it, citations), its complaint row
#: (opening, acceptance, resolution) and its SLA (the same three). An article created from a
#: case (`source_case_id`) counts too. A new event of another type that names a case (a
#: survey, an escalation, a closing) is measured on its own, and the case is not read again:
#: a case closed today that was resolved last month leaves last month's KPIs alone.
_CASE_CHANGING = "('CaseOpened', 'CaseAccepted', 'CaseResolved', 'CaseReopened', 'ArticleLinked')"
_STATEMENTS = "('RewardStatementIssued', 'RewardAdjustmentIssued')"


@dataclass(frozen=True)
class UpdateResult:
    """What one update did."""

    log_version: int
    new_events: int
    full: bool


class Maintainer:
    """Keeps one version's derived tables (and those of the versions it is built from) current."""

    def __init__(self, db: ProjectionDB, version: VersionInfo) -> None:
        self.db = db
        self.version = version
        #: where the spec-independent tables and the positions live (the root of the chain)
        self.storage = db.storage_version(version)
        self.log = db.log(version.source)
        self.index = LogIndex(lambda: db.connection, version.source, self.log)
        self.visible = visible_sql(version.as_of)
        self._dataset: Any = None
        #: the database's tables by schema, as an update found them when it began
        self._tables: dict[str, set[str]] = {}
        #: the connection whose temp tables an update left to drop (see _drop_temps)
        self._temps_on: Any = None
        #: whether the update read the whole snapshot (a full build or a team move)
        self._read_whole = False
        #: whether the update's new events set, revise or close a team goal
        self._goals_changed = True
        #: the version's "now" (its last event's moment) before and after an incremental update
        self._ends: tuple[datetime | None, datetime | None] = (None, None)
        #: the positions this maintainer's last committed update recorded, and the version's
        #: "now" there (a failed update leaves both as they were); `_reached` is the same of the
        #: update under way, until it commits
        self._end_at: tuple[dict[str, int], datetime | None] | None = None
        self._reached: tuple[dict[str, int], datetime | None] | None = None

    def log_version_recorded(self) -> int | None:
        """The log version the shared tables reflect (None before the first build)."""
        return self.db.tracking(self.storage).max_tracking_id(LOG_STREAM)

    def reflects(self, snapshot: int, recorded: int | None) -> bool:
        """Whether the shared tables, `recorded` at a log version, reflect log version `snapshot`:
        the same version, and the stream positions it holds. A log removed and decoded anew
        numbers its versions from 0 again: the version recorded may be the same number holding
        more events, or events of a stream (a partition) the tables never read."""
        if recorded != snapshot:
            return False
        tracked = self.db.tracking(self.storage).positions()
        positions = {k: p.offset for k, p in tracked.items() if k != LOG_STREAM}
        streams = {*positions, *self.index.positions()}
        return self.log.stream_ends(streams, snapshot) == {s: positions.get(s) for s in streams}

    def is_current(self) -> bool:
        log_version = self.log.version()
        for version in self.db.chain(self.version):
            row = self.db.connection.execute(
                "SELECT state FROM main.crm_versions WHERE version = ?", [version.version]
            ).fetchone()
            if row is None or row[0] != "ready" or self.db.built_log_version(version) != log_version:
                return False
        return self.reflects(log_version, self.log_version_recorded())

    def update(self, *, full: bool = False, scores_only: bool = False) -> UpdateResult:
        """Bring the chain's tables to the log's latest snapshot, in one transaction.

        `scores_only` is kept for callers that know only weights changed; the chain walk
        finds that out by itself.
        """
        del scores_only
        con = self.db.connection
        snapshot = self.log.version()
        self._dataset = self.log.dataset(snapshot)
        con.complete()  # a caller's fetchone() leaves a result open; registering needs it closed
        con.register(relation_name(self.version.source), self._dataset)
        recorded = self.log_version_recorded()
        s = self.storage.schema
        chain = self.db.chain(self.version)
        # The tables the update makes when they are missing, looked up once for the whole
        # update (before its transactions: a lookup of a missing one fails).
        wanted = [self.index.table, self.index.payloads, f"{s}.{PARTIALS}", f"{s}.{CASES}"]
        wanted += [f"{v.schema}.{t}" for v in chain for t in (DAYS, *GOAL_TABLES)]
        self._tables = existing_tables(con, wanted)
        # The index is synced and committed first, in a transaction of its own: DuckDB reads
        # the rows a transaction has appended to a table (its local storage) far more slowly
        # than committed ones, and fetching the touched cases' rows by row id from an index
        # holding 1,000 uncommitted rows cost 3-4 times as much (~90 against ~25 ms at 1M).
        # The index is derived from the log and says which log version it reflects: one
        # ahead of the version's tables (an update that failed after the sync) is what the
        # next update syncs to anyway, and the new events are found by the version's own
        # positions, not the index's.
        with transaction(con):
            self.index.sync(snapshot, self._dataset, self._tables.get("main", set()))
        self._reached = self._end_at  # kept by an update with nothing new
        # Small ASOF joins loop (projections.asof_loop): set outside the transaction, which a
        # failed statement aborts.
        with small_asof_joins(con, f"{s}.team_history"), transaction(con):
            self._drop_temps(con)
            self._read_whole = False
            full = full or recorded is None
            events = 0
            touched = False  # crm_touched holds the keys the new events touched
            new = 0
            if full or not self.reflects(snapshot, recorded):
                if full:
                    self._materialise(s, "TRUE")
                    for statement in [*spec_independent_sql(s, EV, f"{s}.events"), *state_sql(s, EV)]:
                        con.execute(statement)
                    new = int(con.execute(f"SELECT count(*) FROM {EV}").fetchone()[0])  # type: ignore[index]
                    events = new
                else:
                    self._materialise_touched(s)
                    new = self._log_tables(s)
                    events = self.db.find_version(self.storage.version).events + new
                    touched = True
                self._record(snapshot, full)
            else:
                events = self.db.find_version(self.storage.version).events
            parent: VersionInfo | None = None
            for version in chain:
                self._spec_tables(version, parent, full=full, touched=touched, recorded=recorded)
                self.db.mark_built(version, snapshot, events)
                parent = version
            self._temps_on = con
            if full or self._read_whole:
                self._drop_temps(con)  # they hold the whole snapshot: not kept a moment longer
        self._end_at = self._reached
        return UpdateResult(snapshot, new, full)

    def _drop_temps(self, con: Any) -> None:
        """Drop the temp tables of the last update, if it left them on this connection.

        An incremental update's temp tables are small: they are dropped at the start of the
        next update on the same connection, not at the end of their own (~40 statements
        inside the refresh's latency). A follower that lets go of the file between
        refreshes closes the connection, and its temp tables with it: nothing is left to drop.
        Every temp table is made anew by the update that reads it.
        """
        if self._temps_on is not con:
            return
        for temp in (EV, *_TEMPS, *KEY_TABLES, *PROFILE_TEMPS):
            con.execute(f"DROP TABLE IF EXISTS {temp}")
        self._temps_on = None

    def _materialise(self, s: str, where: str) -> None:
        """The snapshot's events matching `where`, typed columns only, as the temp table EV."""
        self.db.connection.execute(
            f"CREATE OR REPLACE TEMP TABLE {EV} AS SELECT * EXCLUDE ({', '.join(_UNREAD)}) "
            f"FROM {s}.events WHERE {where}"
        )

    def _materialise_touched(self, s: str) -> None:
        """Only the events an incremental update reads, as EV, from the source's index.

        That is the new events and every event of the cases they change (_CASE_CHANGING; and
        of the other complaints opened by the same team in the same month, which share a
        complaint row).
        The named customers' earlier events are not read: their profiles combine the new
        events with stored partial aggregates (projections.profile_state). A team change
        re-attributes all of an employee's measures: then (rarely) the whole snapshot is read.
        """
        run = self.db.connection.execute
        index, visible = self.index.table, self.visible
        tracked = {
            k: p.offset for k, p in self.db.tracking(self.storage).positions().items() if k != LOG_STREAM
        }
        fresh = (
            "("
            + " OR ".join(
                [
                    *(f"(stream = {_literal(k)} AND position > {v})" for k, v in tracked.items()),
                    f"stream NOT IN ({', '.join(_literal(k) for k in tracked)})" if tracked else "TRUE",
                ]
            )
            + ")"
        )
        if tracked and set(self.index.positions()) <= set(tracked):
            # A plain bound as well (an OR is not pushed into the scan): DuckDB's zone maps
            # then skip the row groups before the lowest recorded position.
            fresh = f"(position > {min(tracked.values())} AND {fresh})"
        run(f"CREATE OR REPLACE TEMP TABLE crm_fresh AS SELECT * FROM {index} WHERE {visible} AND {fresh}")
        if self._end_at is not None and self._end_at[0] == tracked:
            # The old "now" is a function of the rows up to the recorded positions, which this
            # maintainer's last update ended at: it is kept, not found by a scan of every row.
            old_end = self._end_at[1]
            row = run("SELECT max(occurred_at) FROM crm_fresh").fetchone()
            known = [t for t in (old_end, row[0] if row else None) if t is not None]
            self._ends = (old_end, max(known, default=None))
        else:
            ends = run(
                f"SELECT max(occurred_at) FILTER (WHERE NOT {fresh}), max(occurred_at) "
                f"FROM {index} WHERE {visible}"
            ).fetchone()
            self._ends = (ends[0], ends[1]) if ends is not None else (None, None)
        moves = run(
            "SELECT count(*) FROM crm_fresh WHERE event_type IN ('EmployeeJoined', 'EmployeeMovedTeam')"
        ).fetchone()
        if moves is not None and moves[0]:
            self._materialise(s, "TRUE")
            self._read_whole = True
            return
        run(
            "CREATE OR REPLACE TEMP TABLE crm_opened AS SELECT case_id, team_id, "
            f"strftime(occurred_at, '%Y-%m') AS period FROM {index} "
            f"WHERE {visible} AND event_type = 'CaseOpened' AND team_id IS NOT NULL"
        )
        run(
            "CREATE OR REPLACE TEMP TABLE crm_read_cases AS "
            "WITH direct AS (SELECT case_id FROM crm_fresh WHERE case_id IS NOT NULL "
            f"AND event_type IN {_CASE_CHANGING} "
            "UNION SELECT source_case_id FROM crm_fresh WHERE source_case_id IS NOT NULL) "
            "SELECT case_id FROM direct UNION SELECT o.case_id FROM crm_opened o "
            "JOIN (SELECT DISTINCT team_id, period FROM crm_opened "
            "WHERE case_id IN (SELECT case_id FROM direct)) p "
            "ON o.team_id = p.team_id AND o.period = p.period"
        )
        columns = _EV_COLUMNS
        # Row ids first, from the key columns alone, then the rows by id. DuckDB joins the row
        # ids to a scan of every row of the columns fetched (~1.3 ms a column at 1M events):
        # the cost is per column, whatever the number of rows.
        run(
            # One scan of the key columns (three scans joined by UNION cost more).
            f"CREATE OR REPLACE TEMP TABLE crm_ev_rows AS SELECT rowid AS r FROM {index} "
            f"WHERE {visible} AND (case_id IN (SELECT case_id FROM crm_read_cases) "
            f"OR source_case_id IN (SELECT case_id FROM crm_read_cases) OR {fresh})"
        )
        run(
            f"CREATE OR REPLACE TEMP TABLE {EV} AS SELECT {columns} FROM {index} "
            "WHERE rowid IN (SELECT r FROM crm_ev_rows)"
        )

    def _spec_tables(
        self,
        version: VersionInfo,
        parent: VersionInfo | None,
        *,
        full: bool,
        touched: bool,
        recorded: int | None,
    ) -> None:
        """The KPI tables (when the version owns them) and the scores of one version of the chain."""
        run = self.db.connection.execute
        v, spec = version.schema, version.spec()
        owns_kpis = parent is None or parent.kpi_hash != version.kpi_hash
        # A version last built at another log version than the shared tables missed the
        # keys touched in between: its own tables are recomputed (from measures, not the log).
        behind = self.db.built_log_version(version) != recorded
        if full or behind:
            if owns_kpis and parent is not None:
                run(answers_histogram_sql(self.storage.schema))
                for grain in PERIODS:
                    for team in (False, True):
                        table = f"kpi_{'team' if team else 'employee'}_{grain}"
                        select = kpi_rethreshold_select(parent.schema, spec, grain, team)
                        run(f"CREATE OR REPLACE TABLE {v}.{table} AS {select}")
                run(f"DROP TABLE {ANSWERS}")
                # Made from the measures by the first incremental update that needs it: a
                # replay of a KPI change does not pay for it.
                run(f"DROP TABLE IF EXISTS {v}.{DAYS}")
            elif owns_kpis:
                for statement in kpi_sql(v, spec):
                    run(statement)
                run(build_sql(v, f"{v}.measures", spec))
            for statement in scores_sql(v, spec, version.version):
                run(statement)
            return
        if not touched:
            return
        present = self._tables.get(v, set())
        if owns_kpis:
            self._kpis(v, spec, present)
        months = "period IN (SELECT period FROM crm_months)"
        run(f"DELETE FROM {v}.reward_components WHERE {months}")
        run(f"INSERT INTO {v}.reward_components {reward_components_select(v, spec, months)}")
        run(f"DELETE FROM {v}.reward_score WHERE {months}")
        run(f"INSERT INTO {v}.reward_score {reward_score_select(v, spec, version.version, months)}")
        maintain_goals(
            self.db.connection,
            v,
            self.index.payloads,
            visible_sql(version.as_of),
            goals_changed=self._goals_changed or not set(GOAL_TABLES) <= present,
        )

    def _kpis(self, v: str, spec: MetricSpec, present: set[str]) -> None:
        """KPI rows of the touched (employee, team, period) and (team, period), per grain.

        The per-day aggregates (`kpi_days`, projections.kpi_days) of the touched
        (employee, team, day) keys are made again from those keys' measure rows; then each
        table's touched periods are computed from their days' rows alone.
        """
        run = self.db.connection.execute
        days = f"{v}.{DAYS}"
        # Every touched day, and every touched period, lies in these spans of days (literal
        # bounds: DuckDB's zone maps skip what lies outside them, and only the rows inside
        # them are joined).
        first, last, low, high = run(
            "SELECT CAST(min(occurred_at) AS DATE), CAST(max(occurred_at) AS DATE) + 1, "
            "least(date_trunc('month', min(occurred_at)), date_trunc('week', min(occurred_at))), "
            "greatest(date_trunc('month', max(occurred_at)) + INTERVAL 1 MONTH, "
            "date_trunc('week', max(occurred_at)) + INTERVAL 7 DAY) FROM crm_touched"
        ).fetchone() or (None, None, None, None)
        if DAYS not in present:
            # Built before the days were kept (or by another engine, or a replay): made once
            # from every measure row, this update's included.
            run(build_sql(v, f"{v}.measures", spec))
        elif first is not None:
            run(
                "CREATE OR REPLACE TEMP TABLE crm_kday AS SELECT DISTINCT employee_id, team_id, "
                "CAST(occurred_at AS DATE) AS occurred_at FROM crm_touched"
            )
            same_day = (
                "d.employee_id IS NOT DISTINCT FROM k.employee_id AND d.team_id = k.team_id AND "
                "CAST(d.occurred_at AS DATE) = k.occurred_at"
            )
            run(f"DELETE FROM {days} d USING crm_kday k WHERE {same_day}")
            # Only the columns the aggregates read: fetching scattered rows costs per column.
            measures = (
                f"(SELECT {', '.join(f'd.{c}' for c in READS)} FROM {v}.measures d "
                f"SEMI JOIN crm_kday k ON {same_day} "
                f"WHERE d.occurred_at >= TIMESTAMP '{first:%Y-%m-%d}' "
                f"AND d.occurred_at < TIMESTAMP '{last:%Y-%m-%d}')"
            )
            run(f"INSERT INTO {days} BY NAME {days_select(measures, spec)}")
        if low is None:
            return
        span = f"d.occurred_at >= DATE '{low:%Y-%m-%d}' AND d.occurred_at < DATE '{high:%Y-%m-%d}'"
        # The touched periods of every grain by their first day (what the rows are grouped
        # by) and text; their rows of the six tables are computed in one statement.
        run(
            "CREATE OR REPLACE TEMP TABLE crm_aff AS "
            + " UNION ALL ".join(
                f"SELECT DISTINCT '{grain}' AS grain, employee_id, team_id, {PERIOD_STARTS[grain]} AS start, "
                f"{period} AS period FROM crm_touched"
                for grain, period in PERIODS.items()
            )
        )
        select = periods_select(f"(SELECT * FROM {days} d WHERE {span})", "crm_aff")
        run(f"CREATE OR REPLACE TEMP TABLE crm_kpi_rows AS {select}")
        for grain in PERIODS:
            table = f"{v}.kpi_employee_{grain}"
            run(
                f"DELETE FROM {table} USING crm_aff a WHERE a.grain = '{grain}' AND "
                f"{table}.employee_id IS NOT DISTINCT FROM a.employee_id AND {table}.team_id = a.team_id "
                f"AND {table}.period = a.period"
            )
            run(
                f"INSERT INTO {table} BY NAME SELECT * EXCLUDE (grain, team_level) FROM crm_kpi_rows "
                f"WHERE grain = '{grain}' AND NOT team_level ORDER BY employee_id, team_id, period"
            )
            table = f"{v}.kpi_team_{grain}"
            run(
                f"DELETE FROM {table} WHERE (team_id, period) IN "
                f"(SELECT DISTINCT team_id, period FROM crm_aff WHERE grain = '{grain}')"
            )
            run(
                f"INSERT INTO {table} BY NAME SELECT * EXCLUDE (grain, team_level, employee_id) "
                f"FROM crm_kpi_rows WHERE grain = '{grain}' AND team_level ORDER BY team_id, period"
            )

    def _record(self, snapshot: int, full: bool) -> None:
        """The snapshot's stream positions and log version, beside the tables."""
        con = self.db.connection
        tracking = self.db.tracking(self.storage)
        if full:
            con.execute(f"DELETE FROM {self.storage.schema}.tracking")
        current = {k: p for k, p in tracking.positions().items() if k != LOG_STREAM}
        positions = [
            Position(stream, last)
            for stream, last in self.index.positions().items()
            if stream not in current or last > current[stream].offset
        ]
        # The log version is replaced, not only raised: a log rebuilt from the source
        # (`replay --from-source`) starts its versions anew.
        con.execute(f"DELETE FROM {self.storage.schema}.tracking WHERE application_name = ?", [LOG_STREAM])
        tracking.record_positions([*positions, Position(LOG_STREAM, snapshot)])
        # The positions the next update will find recorded, with the "now" this one reached
        # (known only to an incremental update: a full one leaves the next to find it).
        recorded = {k: p.offset for k, p in current.items()} | {p.stream: p.offset for p in positions}
        self._reached = None if full else (recorded, self._ends[1])

    def _log_tables(self, s: str) -> int:
        """Delete and recompute the spec-independent rows of the keys the new events touch.

        Leaves the touched keys in `crm_touched` and `crm_months` for the KPI tables and
        scores of every version in the chain; returns the number of new events.
        """
        run = self.db.connection.execute
        # The new events are the index rows past the recorded positions, `crm_fresh`, with
        # the columns of EV (which holds them, among the earlier events of the cases read).
        run(f"CREATE OR REPLACE TEMP TABLE crm_new AS SELECT {_EV_COLUMNS} FROM crm_fresh")
        counted = run(
            f"SELECT count(*), count(*) FILTER (WHERE event_type IN {GOAL_EVENTS}) FROM crm_new"
        ).fetchone()
        new, goals = (int(counted[0]), int(counted[1])) if counted else (0, 0)
        # The goal tables' own rows are made from goal events alone (projections.goals).
        self._goals_changed = goals > 0
        moved = rows_written(
            self.db.connection,
            "CREATE OR REPLACE TEMP TABLE crm_emp AS SELECT DISTINCT employee_id FROM crm_new "
            "WHERE event_type IN ('EmployeeJoined', 'EmployeeMovedTeam') AND employee_id IS NOT NULL",
        ) > 0
        run(
            "CREATE OR REPLACE TEMP TABLE crm_case AS SELECT case_id FROM crm_new WHERE case_id IS NOT NULL "
            f"AND event_type IN {_CASE_CHANGING} "
            "UNION SELECT source_case_id FROM crm_new WHERE source_case_id IS NOT NULL"
        )
        # Team history, then the measures it attributes. Without a join or move (nearly every
        # update), no employee's history changes: the conditions on them are left out (each
        # was a join over every measure row, and the history's statements wrote nothing).
        emp = "employee_id IN (SELECT employee_id FROM crm_emp)" if moved else "FALSE"
        if moved:
            run(f"DELETE FROM {s}.team_history WHERE {emp}")
            run(f"INSERT INTO {s}.team_history {team_history_sql(s, EV, emp)}")
        cases = ", ".join(f"'{m}'" for m in CASE_MEASURES)
        old_scope = (
            f"measure NOT IN ({_SERVICE}) AND "
            f"({emp} OR (measure IN ({cases}) AND case_id IN (SELECT case_id FROM crm_case)))"
        )
        # The rows found once, by their key columns; then read and deleted by row id (cheaper
        # than evaluating the condition over `measures` twice).
        find = f"SELECT rowid AS r FROM {s}.measures WHERE {old_scope}"
        run(f"CREATE OR REPLACE TEMP TABLE crm_old_rows AS {find}")
        old_rows = "rowid IN (SELECT r FROM crm_old_rows)"
        run(
            f"CREATE OR REPLACE TEMP TABLE crm_touched AS SELECT employee_id, team_id, occurred_at "
            f"FROM {s}.measures WHERE {old_rows}"
        )
        run(f"DELETE FROM {s}.measures WHERE {old_rows}")
        new_emp = f"raw.{emp}" if moved else emp
        new_scope = (
            f"{new_emp} OR (raw.measure IN ({cases}) AND raw.case_id IN (SELECT case_id FROM crm_case))"
            f" OR (raw.measure NOT IN ({cases}) AND raw.event_id IN (SELECT event_id FROM crm_new))"
        )
        run(f"CREATE OR REPLACE TEMP TABLE crm_measures AS {measures_sql(s, EV, new_scope)}")
        run(f"INSERT INTO {s}.measures SELECT * FROM crm_measures")
        run("INSERT INTO crm_touched SELECT employee_id, team_id, occurred_at FROM crm_measures")
        service = ServiceMaintenance(
            self.db.connection,
            s,
            self.index.table,
            self.index.payloads,
            self.visible,
            *self._ends,
            # Every event of the cases read is in EV already (not after a team move: then
            # EV is the whole snapshot and the service tables are rebuilt whole).
            at_hand=None if moved else (EV, "crm_read_cases"),
        )
        if moved:
            self._service_tables(s)
        else:
            service.tables()
        # Scores of the touched months (a team's or the organisation's rate feeds everyone's).
        run(
            f"CREATE OR REPLACE TEMP TABLE crm_months AS SELECT DISTINCT {PERIODS['month']} AS period "
            "FROM crm_touched"
        )
        # Customers named by the new events.
        customers = "customer_id IN (SELECT customer_id FROM crm_new WHERE customer_id IS NOT NULL)"
        run(f"DELETE FROM {s}.customer_profile WHERE {customers}")
        # By name: the service columns stay NULL until the widening recomputes them all.
        merged: str | None = None
        if {PARTIALS, CASES} <= self._tables.get(s, set()):
            for statement in merge_sql(s, "crm_new"):
                run(statement)
            merged = MERGED
        else:
            # Built before the profile kept partial aggregates (or by another engine): they
            # are built once from every event the version reads, the new ones included.
            for statement in state_sql(s, f"(SELECT * FROM {self.index.table} WHERE {self.visible})"):
                run(statement)
        run(f"INSERT INTO {s}.customer_profile BY NAME {profile_select(s, customers, merged)}")
        if moved:
            run(profile_service_sql(s))
        else:
            service.retention()
            service.profile("SELECT customer_id FROM crm_new WHERE customer_id IS NOT NULL")
        # Complaint months of every opening of a touched case (the old first opening among them).
        complaints = rows_written(
            self.db.connection,
            "CREATE OR REPLACE TEMP TABLE crm_complaints AS SELECT DISTINCT team_id, "
            f"strftime(occurred_at, '%Y-%m') AS period FROM {EV} WHERE event_type = 'CaseOpened' "
            "AND team_id IS NOT NULL AND case_id IN (SELECT case_id FROM crm_case)",
        )
        pairs = "(team_id, period) IN (SELECT team_id, period FROM crm_complaints)"
        if complaints:
            run(f"DELETE FROM {s}.complaint_kpi_month WHERE {pairs}")
            run(f"INSERT INTO {s}.complaint_kpi_month {complaint_kpi_select(EV, pairs)}")
        # Statements and adjustments of the employee-months they were issued for.
        statements = rows_written(
            self.db.connection,
            "CREATE OR REPLACE TEMP TABLE crm_statements AS SELECT DISTINCT employee_id, period "
            f"FROM crm_new WHERE event_type IN {_STATEMENTS}",
        )
        stmts = "(employee_id, period) IN (SELECT employee_id, period FROM crm_statements)"
        if statements:
            # Statements are rare; their payload is read from the log only when there are some.
            run(f"DELETE FROM {s}.reward_statement WHERE {stmts}")
            run(f"INSERT INTO {s}.reward_statement {reward_statement_select(f'{s}.events', stmts)}")
        return new

    def _service_tables(self, s: str) -> None:
        """Rebuild the service tables whole, and their measure rows; pass on the changed rows' keys.

        Only the service measure rows that differ (old against new, as multisets) add their
        (employee, team, period) to `crm_touched`, so the KPI tables recompute those keys only.
        """
        run = self.db.connection.execute
        for statement in service_model_sql(s):
            run(statement)
        run(f"CREATE OR REPLACE TEMP TABLE crm_service AS {service_measures_select(s)}")
        old = f"SELECT * FROM {s}.measures WHERE measure IN ({_SERVICE})"
        run(f"INSERT INTO crm_touched {differing_keys_select(old, 'SELECT * FROM crm_service')}")
        run(f"DELETE FROM {s}.measures WHERE measure IN ({_SERVICE})")
        run(f"INSERT INTO {s}.measures SELECT * FROM crm_service")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
