"""What the pages read: documented read models only, through read-only DuckDB connections.

The promoted version is read through the stable names in `main` (`kpi_team_month`,
`reward_score`, `team_goal_progress`, ...); a named version through the same table names
inside its schema (`v_<hash>.reward_score`). Facts that are the same in every version
(`ledger_events`, `reward_statement`) are always read from the stable names. Schema names
come from the version catalog, never from the request; every value is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from projections.errors import AmbiguousVersionError, ProjectionError, UnknownVersionError
from projections.readonly import reader
from projections.store import (
    VersionInfo,
    is_lock_error,
    quoted_reference,
    refuse_other_header,
    rows_as_dicts,
    versions_of,
)
from projections.store import find_version as store_find_version
from web.errors import BadRequestError, NotFoundError, WebError

#: Team KPIs the team page charts and tabulates.
TEAM_KPI_COLUMNS = (
    "csat_pct",
    "nps",
    "problems_solved",
    "fcr_rate",
    "ttr_median_h",
    "reopen_rate",
    "participation_rate",
    "citations",
    "relationship_attempts",
    "shares",
)


@dataclass(frozen=True)
class View:
    """Which version a page shows: its id, name, and the prefix of its tables."""

    version: str
    name: str
    prefix: str
    promoted: bool

    def table(self, name: str) -> str:
        return f"{self.prefix}.{name}"


class Reader:
    """Opens a fresh read-only connection per request, so a running projector can write between."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if not self.path.exists():
            raise WebError(f"{self.path}: no projection database yet (run `crm-ledger project`)")
        with reader(self.path, wait_s=30.0) as connection:
            yield connection


def check_database(path: Path) -> None:
    """Refuse, in one line, a `path` that is not a DuckDB database the pages can open read-only.

    Checked once before serving: otherwise every page but the health check would fail with
    a traceback in the log while the server looked healthy.
    """
    if not path.exists():
        raise WebError(f"{path}: no projection database yet (run `crm-ledger project` or `crm-ledger demo`)")
    if not path.is_file():
        raise WebError(f"{path}: not a file; --db names the projection database file (projections.duckdb)")
    try:
        # The header first: DuckDB itself took another program's file for its own (an SQLite
        # ledger named by mistake) and went to download an extension to read it. Not through
        # the store's connect, which looks once per process: a file replaced while served is
        # looked at by the first page that opens it.
        refuse_other_header(path)
    except ProjectionError:
        raise WebError(
            f"{path}: not a DuckDB database that can be opened read-only (another program's file: "
            "--db names the projection database, projections.duckdb)"
        ) from None
    try:
        duckdb.connect(str(path), read_only=True).close()
    except duckdb.Error as error:
        if is_lock_error(error):
            # A projector is writing it right now: each request waits for its turn.
            return
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WebError(f"{path}: not a DuckDB database that can be opened read-only ({first})") from None


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    return rows_as_dicts(con.execute(sql, list(params)))


def versions(con: duckdb.DuckDBPyConnection) -> list[VersionInfo]:
    """The version catalog, oldest first, with the promoted one marked (none before a projection)."""
    return versions_of(con)


def resolve(con: duckdb.DuckDBPyConnection, reference: str | None) -> View:
    """The promoted version (no reference), or a built version by id, unique id prefix or name."""
    known = versions(con)
    promoted = next((v for v in known if v.promoted), None)
    if promoted is None:
        raise WebError("no version is promoted yet (run `crm-ledger project`)")
    if not reference:
        return View(promoted.version, promoted.name, "main", True)
    chosen = find_version(con, reference, known)
    if chosen.promoted:
        return View(chosen.version, chosen.name, "main", True)
    # Its id is a checked one (`versions_of`): it names the version's schema in the queries.
    if chosen.built_at is None:
        raise NotFoundError(f"version {quoted_reference(reference)} is not built")
    return View(chosen.version, chosen.name, chosen.version, False)


def find_version(
    con: duckdb.DuckDBPyConnection, reference: str, known: list[VersionInfo] | None = None
) -> VersionInfo:
    """A version by id, unique id prefix or name, as the command line finds it
    (`projections.store.find_version`): 404 when none answers, 400 when several do."""
    try:
        return store_find_version(versions(con) if known is None else known, reference)
    except UnknownVersionError as error:
        raise NotFoundError(str(error)) from None
    except AmbiguousVersionError as error:
        raise BadRequestError(str(error)) from None


def teams(con: duckdb.DuckDBPyConnection, view: View) -> list[dict[str, Any]]:
    """Every team with its latest month's KPIs and its goal counts."""
    return rows(
        con,
        f"""WITH latest AS (
                SELECT * FROM {view.table("kpi_team_month")}
                QUALIFY row_number() OVER (PARTITION BY team_id ORDER BY period DESC) = 1
            ),
            goals AS (
                SELECT team_id, count(*) FILTER (WHERE status = 'open') AS open_goals,
                       count(*) AS goals
                FROM {view.table("team_goal")} GROUP BY team_id
            )
            SELECT l.team_id, l.period, l.csat_pct, l.fcr_rate, l.ttr_median_h, l.participation_rate,
                   l.problems_solved, coalesce(g.open_goals, 0) AS open_goals, coalesce(g.goals, 0) AS goals
            FROM latest l LEFT JOIN goals g ON g.team_id = l.team_id
            WHERE l.team_id <> '(none)'
            ORDER BY l.team_id""",
    )


def team_exists(con: duckdb.DuckDBPyConnection, view: View, team_id: str) -> bool:
    row = con.execute(
        f"SELECT count(*) FROM {view.table('kpi_team_month')} WHERE team_id = ?", [team_id]
    ).fetchone()
    goals = con.execute(
        f"SELECT count(*) FROM {view.table('team_goal')} WHERE team_id = ?", [team_id]
    ).fetchone()
    return bool((row and row[0]) or (goals and goals[0]))


def team_kpis(con: duckdb.DuckDBPyConnection, view: View, team_id: str) -> list[dict[str, Any]]:
    return rows(
        con,
        f"SELECT period, {', '.join(TEAM_KPI_COLUMNS)}, csat_n FROM {view.table('kpi_team_month')} "
        "WHERE team_id = ? ORDER BY period",
        [team_id],
    )


def team_goals(con: duckdb.DuckDBPyConnection, view: View, team_id: str) -> list[dict[str, Any]]:
    return rows(
        con,
        f"SELECT * FROM {view.table('team_goal')} WHERE team_id = ? ORDER BY from_period, goal_id",
        [team_id],
    )


def goal_progress(con: duckdb.DuckDBPyConnection, view: View, team_id: str) -> list[dict[str, Any]]:
    return rows(
        con,
        f"SELECT * FROM {view.table('team_goal_progress')} WHERE team_id = ? ORDER BY goal_id, period",
        [team_id],
    )


def member_scores(con: duckdb.DuckDBPyConnection, view: View, team_id: str) -> list[dict[str, Any]]:
    """Scores of the employees the team's months are attributed to (team at last activity)."""
    return rows(
        con,
        f"SELECT employee_id, period, score FROM {view.table('reward_score')} "
        "WHERE team_id = ? ORDER BY employee_id, period",
        [team_id],
    )


def evidence(con: duckdb.DuckDBPyConnection, view: View, team_id: str) -> dict[str, list[dict[str, Any]]]:
    """The evidence panel: practice and outcome per month, correlations, before/after per goal."""
    return {
        "months": rows(
            con,
            f"SELECT * FROM {view.table('team_evidence_month')} WHERE team_id = ? ORDER BY period",
            [team_id],
        ),
        "correlations": rows(
            con,
            f"SELECT * FROM {view.table('team_evidence_correlation')} WHERE team_id IN (?, '(all)') "
            "ORDER BY practice, outcome, team_id = '(all)'",
            [team_id],
        ),
        "effects": rows(
            con,
            f"SELECT * FROM {view.table('team_goal_effect')} WHERE team_id = ? ORDER BY goal_id, measure",
            [team_id],
        ),
    }


def employee_teams(con: duckdb.DuckDBPyConnection, view: View, employee_id: str) -> list[str]:
    """Every team the employee's measured work was attributed to, in this version."""
    found = con.execute(
        f"SELECT DISTINCT team_id FROM {view.table('kpi_employee_month')} WHERE employee_id = ? "
        f"UNION SELECT DISTINCT team_id FROM {view.table('reward_score')} WHERE employee_id = ? ORDER BY 1",
        [employee_id, employee_id],
    ).fetchall()
    return [str(r[0]) for r in found if r[0] is not None]


def employee_scores(con: duckdb.DuckDBPyConnection, view: View, employee_id: str) -> list[dict[str, Any]]:
    return rows(
        con,
        f"SELECT * FROM {view.table('reward_score')} WHERE employee_id = ? ORDER BY period",
        [employee_id],
    )


def employee_components(con: duckdb.DuckDBPyConnection, view: View, employee_id: str) -> list[dict[str, Any]]:
    return rows(
        con,
        f"SELECT period, component, kind, kpi, kpi_value, sample_n, weight, cap, value, weighted "
        f"FROM {view.table('reward_components')} WHERE employee_id = ? ORDER BY period, component",
        [employee_id],
    )


def employee_statements(con: duckdb.DuckDBPyConnection, employee_id: str) -> list[dict[str, Any]]:
    return rows(
        con,
        "SELECT period, kind, score, old_score, amount, running_total, version, reason, issued_at "
        "FROM reward_statement WHERE employee_id = ? ORDER BY period, notification_id",
        [employee_id],
    )


def events_behind(con: duckdb.DuckDBPyConnection, employee_id: str, period: str) -> list[dict[str, Any]]:
    """The ledger events that name the employee in a month: what their KPIs are counted from.

    Acts by the employee (`employee_id`) and reuse of their articles by others (`author_id`,
    the citations), from the audit mirror.
    """
    return rows(
        con,
        """SELECT notification_id, event_type, event_id, occurred_at, case_id, customer_id, article_id,
                  csat, nps, first_contact,
                  CASE WHEN employee_id = ? THEN 'acted' ELSE 'cited author' END AS role
           FROM ledger_events
           WHERE (employee_id = ? OR (author_id = ? AND event_type = 'ArticleLinked'))
             AND strftime(occurred_at, '%Y-%m') = ?
           ORDER BY occurred_at, notification_id""",
        [employee_id, employee_id, employee_id, period],
    )


def statement_events(con: duckdb.DuckDBPyConnection, period: str) -> list[dict[str, Any]]:
    """The statement and adjustment facts of a closed period, in ledger order."""
    return rows(
        con,
        "SELECT event_type, occurred_at, payload FROM ledger_events "
        "WHERE event_type IN ('RewardStatementIssued', 'RewardAdjustmentIssued') AND period = ? "
        "ORDER BY notification_id",
        [period],
    )


def complaint_kpis(
    con: duckdb.DuckDBPyConnection, view: View, team_ids: Sequence[str] | None
) -> list[dict[str, Any]]:
    """The company's (team's) month rows of `complaint_kpi_month`."""
    where, params = _teams_filter("team_id", team_ids)
    return rows(
        con,
        f"SELECT * FROM {view.table('complaint_kpi_month')} "
        f"WHERE channel = '(all)' AND product = '(all)' {where} ORDER BY team_id, period",
        params,
    )


def complaint_products(
    con: duckdb.DuckDBPyConnection, view: View, team_ids: Sequence[str] | None
) -> list[dict[str, Any]]:
    where, params = _teams_filter("team_id", team_ids)
    return rows(
        con,
        f"SELECT product, sum(complaints_received) AS complaints, avg(relief_rate) AS relief_rate, "
        f"avg(timely_rate) AS timely_rate FROM {view.table('complaint_kpi_month')} "
        f"WHERE product <> '(all)' {where} GROUP BY product ORDER BY complaints DESC, product LIMIT 15",
        params,
    )


def complaint_issues(con: duckdb.DuckDBPyConnection, team_ids: Sequence[str] | None) -> list[dict[str, Any]]:
    """Complaint issues (the case summary's first part, else its topic) per month, most frequent first."""
    where, params = _teams_filter("team_id", team_ids)
    return rows(
        con,
        f"""WITH opened AS (
                SELECT strftime(occurred_at, '%Y-%m') AS period,
                    coalesce(nullif(split_part(payload ->> 'summary', ' / ', 1), ''), topic, '(none)')
                        AS issue
                FROM ledger_events
                WHERE event_type = 'CaseOpened' AND kind = 'complaint' {where}
            ),
            months AS (SELECT max(period) AS last FROM opened),
            counted AS (
                SELECT issue, count(*) AS complaints,
                    count(*) FILTER (WHERE period = (SELECT last FROM months)) AS last_month,
                    count(*) FILTER (WHERE period = strftime(
                        strptime((SELECT last FROM months) || '-01', '%Y-%m-%d') - INTERVAL 1 MONTH, '%Y-%m'))
                        AS month_before
                FROM opened GROUP BY issue
            )
            SELECT issue, complaints, last_month, month_before, last_month - month_before AS change,
                (SELECT last FROM months) AS last_period
            FROM counted ORDER BY complaints DESC, issue LIMIT 15""",
        params,
    )


def complaint_articles(
    con: duckdb.DuckDBPyConnection, team_ids: Sequence[str] | None
) -> list[dict[str, Any]]:
    """Knowledge articles written from complaint cases: complaints turned into learning."""
    where, params = _teams_filter("c.team_id", team_ids)
    return rows(
        con,
        f"""SELECT a.article_id, a.payload ->> 'title' AS title, a.employee_id, a.source_case_id,
                   a.occurred_at AS created_at,
                   coalesce(nullif(split_part(c.payload ->> 'summary', ' / ', 1), ''), c.topic) AS issue,
                   (SELECT count(*) FROM ledger_events l
                    WHERE l.event_type = 'ArticleLinked' AND l.article_id = a.article_id) AS reused
            FROM ledger_events a
            JOIN ledger_events c ON c.event_type = 'CaseOpened' AND c.case_id = a.source_case_id
            WHERE a.event_type = 'ArticleCreated' AND c.kind = 'complaint' {where}
            ORDER BY reused DESC, a.occurred_at DESC, a.article_id LIMIT 25""",
        params,
    )


def _teams_filter(column: str, team_ids: Sequence[str] | None) -> tuple[str, list[Any]]:
    """No filter for someone who sees everything; else `AND column IN (...)` with parameters."""
    if team_ids is None:
        return "", []
    if not team_ids:
        return "AND false", []
    return f"AND {column} IN ({', '.join('?' for _ in team_ids)})", list(team_ids)
