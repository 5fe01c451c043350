"""Team goals and the web pages: what the goal read models add to a refresh, and page latency.

- refresh: the goal and evidence read models (`goal_model_sql`) against the scores they are
  rebuilt with (`reward_sql`, the weights-only recompute), on the same version, same run.
- pages: a team page served by `crm-ledger serve` (HTTP, a fresh read-only connection, SQL,
  templates, SVG) against the same read-model queries run on one open connection.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import urllib.request
import uuid

import duckdb
from common import BENCH_DIR, ROOT, _free_port, arguments, prepared_ledger, report, timed

from crm_ledger.settings import Settings
from ledger.records import RecordParser
from projections.goals import goal_model_sql
from projections.models import reward_sql
from projections.service import project_promoted
from projections.store import ProjectionDB
from web import data

GOAL_KPIS = ("csat_pct", "fcr_rate", "ttr_median_h", "participation_rate", "component:citations")
ROUNDS = 5
REQUESTS = 30


def _set_goals(app: object, db_path: object) -> int:
    """Goals for every team, set in the history's second month by its members then."""
    with duckdb.connect(str(db_path), read_only=True) as con:
        members = con.execute(
            "SELECT team_id, list(DISTINCT employee_id ORDER BY employee_id) FROM kpi_employee_month "
            "WHERE period = (SELECT min(period) FROM kpi_employee_month) AND team_id <> '(none)' "
            "GROUP BY team_id"
        ).fetchall()
        first = con.execute("SELECT min(period), max(period) FROM kpi_team_month").fetchone()
    assert first is not None
    start, end = first
    year, month = int(start[:4]), int(start[5:7]) + 1
    second = f"{year + (month - 1) // 12:04d}-{(month - 1) % 12 + 1:02d}"
    parser = RecordParser(app.registry)  # type: ignore[attr-defined]
    facts = []
    for team_id, employees in members:
        for kpi in GOAL_KPIS:
            facts.append(
                parser.parse(
                    {
                        "type": "TeamGoalSet",
                        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench:{team_id}:{kpi}")),
                        "occurred_at": f"{second}-01T09:00:00Z",
                        "goal_id": f"{team_id}-{kpi}",
                        "team_id": team_id,
                        "kpi": kpi,
                        "target": 0.5,
                        "comparison": "at_most" if kpi == "ttr_median_h" else "at_least",
                        "from_period": second,
                        "to_period": end,
                        "agreed_by": employees[:1],
                    }
                )
            )
    outcomes = app.record(facts)  # type: ignore[attr-defined]
    return sum(1 for o in outcomes if o.status in ("accepted", "duplicate"))


def main() -> None:
    args = arguments(__doc__ or "", 200_000)
    app = prepared_ledger(args.events, args.seed)
    app.goal_metrics = app.goal_metrics | {"component:citations"}
    store = BENCH_DIR / f"ledger-{args.events}-{args.seed}.sqlite"
    db_path = BENCH_DIR / "web.duckdb"
    for leftover in BENCH_DIR.glob("web.duckdb*"):
        leftover.unlink()
    settings = Settings(store=str(store), projections_db=db_path)
    project_promoted(settings, "ledger", None, follow=False)
    goals = _set_goals(app, db_path)
    project_promoted(settings, "ledger", None, follow=False)

    goal_s, score_s = [], []
    with ProjectionDB(db_path) as db:
        version = db.find_version(db.promoted_version() or "")
        con = db.connection
        for _ in range(ROUNDS):
            for statement_list, sink in (
                (reward_sql(version.schema, version.spec(), version.version), score_s),
                (goal_model_sql(version.schema), goal_s),
            ):
                con.execute("BEGIN TRANSACTION")
                _, seconds = timed(lambda sl=statement_list: [con.execute(s) for s in sl])
                con.execute("COMMIT")
                sink.append(seconds)

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "crm_cli", "--db", str(db_path), "serve", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/team/team-01"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        urllib.request.urlopen(url, timeout=30).read()  # warm-up
        page_s = []
        for _ in range(REQUESTS):
            body, seconds = timed(lambda: urllib.request.urlopen(url, timeout=30).read())
            page_s.append(seconds)
    finally:
        server.terminate()
        server.wait(timeout=30)

    def queries(con: duckdb.DuckDBPyConnection) -> None:
        view = data.resolve(con, None)
        data.team_kpis(con, view, "team-01")
        data.team_goals(con, view, "team-01")
        data.goal_progress(con, view, "team-01")
        data.member_scores(con, view, "team-01")
        data.evidence(con, view, "team-01")
        data.versions(con)

    def fresh() -> None:
        with reader.connect() as con:
            queries(con)

    query_s, fresh_s = [], []
    reader = data.Reader(db_path)
    with reader.connect() as open_con:
        for _ in range(REQUESTS):
            query_s.append(timed(lambda: queries(open_con))[1])
    for _ in range(REQUESTS):
        fresh_s.append(timed(fresh)[1])

    goal_median, score_median = statistics.median(goal_s), statistics.median(score_s)
    page_median, query_median = statistics.median(page_s), statistics.median(query_s)
    report(
        "web",
        {
            "events": app.max_position(),
            "goals": goals,
            "goal_read_models_s": round(goal_median, 4),
            "baseline_scores_only_recompute_s": round(score_median, 4),
            "goal_over_scores_ratio": round(goal_median / score_median, 3),
            "team_page_ms": round(page_median * 1000, 1),
            "team_page_bytes": len(body),
            "baseline_same_queries_one_connection_ms": round(query_median * 1000, 1),
            "page_over_queries_ratio": round(page_median / query_median, 2),
            "same_queries_fresh_read_only_connection_ms": round(statistics.median(fresh_s) * 1000, 1),
        },
    )


if __name__ == "__main__":
    main()
