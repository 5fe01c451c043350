"""Team goals: validated like every fact, gauged monthly in every version, compared by diff."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from crm_ledger.kpis import BY_NAME, COMPARED_COLUMNS
from crm_ledger.settings import Settings
from ledger.application import LedgerApplication
from ledger.errors import ValidationError
from ledger.goals import goal_metrics
from ledger.records import RecordParser
from projections.service import project_promoted
from projections.spec import DEFAULT_SPEC
from projections.store import ProjectionDB
from replay.build import replay
from replay.diff import diff_versions
from tests.factory import basics, rec
from tests.helpers import run_cli, stored_rows


def goal(goal_id: str = "g1", at: str = "2026-01-05T09:00:00Z", **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "goal_id": goal_id,
        "team_id": "t1",
        "kpi": "csat_pct",
        "target": 75.0,
        "comparison": "at_least",
        "from_period": "2026-01",
        "to_period": "2026-03",
        "agreed_by": ["e1", "e2"],
    }
    values.update(fields)
    return rec("TeamGoalSet", at, **values)


def record(app: LedgerApplication, raws: list[dict[str, Any]]) -> list[str]:
    parser = RecordParser(app.registry, now_ms=1_900_000_000_000)
    return [o.status for o in app.record([parser.parse(r, strict=True) for r in raws])]


def rejection(app: LedgerApplication, raw: dict[str, Any]) -> ValidationError:
    parser = RecordParser(app.registry, now_ms=1_900_000_000_000)
    outcome = app.record([parser.parse(raw, strict=True)])[0]
    assert outcome.status == "rejected", outcome
    assert outcome.error is not None
    return outcome.error


@pytest.fixture
def team_app(app: LedgerApplication) -> LedgerApplication:
    moved = rec("EmployeeMovedTeam", "2026-01-20T00:00:00Z", employee_id="e2", team_id="t2")
    assert set(record(app, [*basics(), moved])) == {"accepted"}
    return app


def test_a_goal_is_set_revised_and_closed_once(team_app: LedgerApplication) -> None:
    assert record(team_app, [goal()]) == ["accepted"]
    revised = rec(
        "TeamGoalRevised", "2026-02-01T09:00:00Z", goal_id="g1", target=70.0, agreed_by=["e1"], reason="peak"
    )
    closed = rec("TeamGoalClosed", "2026-03-01T09:00:00Z", goal_id="g1", outcome="achieved")
    assert record(team_app, [revised, closed]) == ["accepted", "accepted"]
    # The ledger filled in the goal's team on the revision and the close.
    assert record(team_app, [{**closed, "team_id": "t1"}]) == ["duplicate"]
    late = rec(
        "TeamGoalRevised", "2026-03-02T09:00:00Z", goal_id="g1", target=60.0, agreed_by=["e1"], reason="x"
    )
    assert "closed" in str(rejection(team_app, late))
    again = rec("TeamGoalClosed", "2026-03-03T09:00:00Z", goal_id="g1", outcome="missed")
    assert "closed" in str(rejection(team_app, again))


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"kpi": "happiness"}, "kpi", "unknown KPI"),
        ({"kpi": "component:nope"}, "kpi", "unknown KPI"),
        ({"comparison": "about"}, "comparison", "must be one of"),
        ({"from_period": "2026-04"}, "to_period", "before from_period"),
        ({"from_period": "2026-13"}, "from_period", "YYYY-MM"),
        ({"from_period": "\uff12\uff10\uff12\uff16-\uff10\uff13"}, "from_period", "YYYY-MM"),
        ({"to_period": "2028-12"}, "to_period", "at most 24 months"),
        ({"from_period": "2025-01", "to_period": "2025-12"}, "to_period", "ended before"),
        ({"agreed_by": []}, "agreed_by", "at least one member"),
        ({"agreed_by": ["e1", "e1"]}, "agreed_by", "twice"),
        ({"agreed_by": ["e1", "e3"]}, "agreed_by", "in team 't2', not 't1'"),
        ({"agreed_by": ["e9"]}, "agreed_by", "unknown employee"),
        ({"team_id": "t9", "agreed_by": ["e1"]}, "agreed_by", "not 't9'"),
        # A target the KPI can never take (its range comes from the KPI's descriptor).
        ({"target": 101.0}, "target", "101 is outside the range of csat_pct (from 0 to 100)"),
        ({"target": -0.5}, "target", "-0.5 is outside the range of csat_pct (from 0 to 100)"),
        ({"kpi": "problems_solved", "target": -1.0}, "target", "range of problems_solved (0 or more)"),
        ({"kpi": "ttr_median_h", "target": -2.0}, "target", "range of ttr_median_h (0 or more)"),
        ({"kpi": "fcr_rate", "target": 1.5}, "target", "1.5 is outside the range of fcr_rate (from 0 to 1)"),
        ({"kpi": "nps", "target": -101.0}, "target", "range of nps (from -100 to 100)"),
        ({"kpi": "score", "target": 100.5}, "target", "range of score (from 0 to 100)"),
    ],
)
def test_a_goal_that_breaks_a_rule_is_rejected(
    team_app: LedgerApplication, fields: dict[str, Any], field: str, words: str
) -> None:
    error = rejection(team_app, goal(**fields))
    assert error.field == field and words in str(error), error


def test_a_goal_may_gauge_every_kpi_diff_compares_and_nothing_internal() -> None:
    # One KPI list: a KPI added there is a goal metric and gets a label, with no second list.
    known = goal_metrics([])
    assert set(COMPARED_COLUMNS) <= known and "sla_met_rate" in known
    assert "csat_satisfied" not in known and "fcr_n" not in known
    assert all(BY_NAME[name].title for name in COMPARED_COLUMNS)


def test_a_goal_on_a_service_rate_is_accepted(team_app: LedgerApplication) -> None:
    assert record(team_app, [goal(kpi="sla_met_rate", target=0.9)]) == ["accepted"]


def test_a_target_at_either_end_of_its_range_is_accepted_and_a_revision_is_checked_too(
    team_app: LedgerApplication,
) -> None:
    edges = [
        goal("g-full", target=100.0),
        goal("g-none", kpi="escalations", target=0.0, comparison="at_most"),
        goal("g-nps", kpi="nps", target=-100.0),
        goal("g-fcr", kpi="fcr_rate", target=1.0),
    ]
    assert record(team_app, edges) == ["accepted"] * 4

    def revision(goal_id: str, target: float) -> dict[str, Any]:
        at = "2026-02-01T09:00:00Z"
        return rec("TeamGoalRevised", at, goal_id=goal_id, target=target, agreed_by=["e1"], reason="r")

    # The write model refuses it against the goal's own KPI, as the setting is.
    error = rejection(team_app, revision("g-fcr", 80.0))
    assert error.field == "target" and "80 is outside the range of fcr_rate (from 0 to 1)" in str(error)
    error = rejection(team_app, revision("g-none", -1.0))
    assert error.field == "target" and "range of escalations (0 or more)" in str(error)
    assert record(team_app, [revision("g-fcr", 0.0), revision("g-full", 50.0)]) == ["accepted", "accepted"]


def test_agreement_is_checked_against_the_team_at_that_moment(team_app: LedgerApplication) -> None:
    # e2 moved to t2 on 2026-01-20: agreeing to a t1 goal after that is refused.
    error = rejection(team_app, goal(at="2026-01-21T09:00:00Z"))
    assert "'e2' was in team 't2'" in str(error)
    assert record(team_app, [goal(at="2026-01-21T09:00:00Z", agreed_by=["e1"])]) == ["accepted"]
    revision = rec(
        "TeamGoalRevised", "2026-02-01T09:00:00Z", goal_id="g1", target=1.0, agreed_by=["e3"], reason="r"
    )
    assert "'e3' was in team 't2'" in str(rejection(team_app, revision))
    unknown = rec("TeamGoalClosed", "2026-02-01T09:00:00Z", goal_id="nope", outcome="achieved")
    assert "unknown goal" in str(rejection(team_app, unknown))
    other_team = rec("TeamGoalClosed", "2026-02-01T09:00:00Z", goal_id="g1", team_id="t2", outcome="achieved")
    assert "belongs to team 't1'" in str(rejection(team_app, other_team))


def _solved(
    case: str, day: str, employee: str, csat: int, first_contact: bool = True
) -> list[dict[str, Any]]:
    return [
        rec(
            "CaseOpened", f"{day}T08:00:00Z", case_id=case, customer_id="c1", kind="request", channel="phone"
        ),
        rec("CaseAccepted", f"{day}T08:05:00Z", case_id=case, employee_id=employee),
        rec(
            "CaseResolved",
            f"{day}T09:00:00Z",
            case_id=case,
            employee_id=employee,
            resolution_code="fixed",
            first_contact=first_contact,
        ),
        rec("SurveyAnswered", f"{day}T10:00:00Z", customer_id="c1", case_id=case, csat=csat),
    ]


def history() -> list[dict[str, Any]]:
    """Team t1 over three months: CSAT 50% in January, 100% in February and March."""
    events = basics()
    for month, scores in (("01", (5, 2)), ("02", (5, 4)), ("03", (4, 5))):
        for n, score in enumerate(scores):
            events += _solved(f"k{month}{n}", f"2026-{month}-{10 + n:02d}", "e1", score)
    events += [
        goal("g-csat", "2026-01-05T09:00:00Z", agreed_by=["e1", "e2"]),
        rec(
            "TeamGoalRevised",
            "2026-03-01T09:00:00Z",
            goal_id="g-csat",
            target=100.0,
            agreed_by=["e1"],
            reason="stretch",
        ),
        goal(
            "g-score",
            "2026-01-05T09:00:00Z",
            kpi="component:problems_solved",
            target=0.15,
            agreed_by=["e1"],
            to_period="2026-04",
        ),
        goal(
            "g-ttr",
            "2026-01-05T09:00:00Z",
            kpi="ttr_median_h",
            target=0.5,
            comparison="at_most",
            agreed_by=["e1"],
        ),
        rec("TeamGoalClosed", "2026-02-15T09:00:00Z", goal_id="g-ttr", outcome="missed"),
    ]
    return events


@pytest.fixture
def projected(settings: Settings) -> Settings:
    app = LedgerApplication(settings.eventsourcing_env(), goal_components=["problems_solved"])
    assert set(record(app, history())) == {"accepted"}
    project_promoted(settings, "ledger", None, follow=False)
    return settings


def _progress(con: duckdb.DuckDBPyConnection, schema: str = "main") -> dict[tuple[str, str], tuple[Any, ...]]:
    found = con.execute(
        f"SELECT goal_id, period, target, actual, met, trend FROM {schema}.team_goal_progress"
    ).fetchall()
    return {(r[0], r[1]): r[2:] for r in found}


def test_goals_are_gauged_every_month_from_the_read_models(projected: Settings) -> None:
    with duckdb.connect(str(projected.projections_db), read_only=True) as con:
        progress = _progress(con)
        kpi = dict(con.execute("SELECT period, csat_pct FROM kpi_team_month WHERE team_id = 't1'").fetchall())
        ttr = dict(
            con.execute("SELECT period, ttr_median_h FROM kpi_team_month WHERE team_id = 't1'").fetchall()
        )
        component = dict(
            con.execute(
                "SELECT period, avg(value) FROM reward_components "
                "WHERE team_id = 't1' AND component = 'problems_solved' GROUP BY period"
            ).fetchall()
        )
        goals = {
            r[0]: r[1:]
            for r in con.execute(
                "SELECT goal_id, status, outcome, target, revisions FROM team_goal"
            ).fetchall()
        }
    # The revision applies from its own month on; earlier months keep the agreed target.
    assert progress[("g-csat", "2026-01")] == (75.0, kpi["2026-01"], False, None)
    assert progress[("g-csat", "2026-02")] == (75.0, kpi["2026-02"], True, kpi["2026-02"] - kpi["2026-01"])
    assert progress[("g-csat", "2026-03")][:3] == (100.0, kpi["2026-03"], True)
    assert kpi["2026-01"] == 50.0 and kpi["2026-02"] == 100.0
    # A closed goal is gauged up to the month it was closed.
    assert sorted(p for g, p in progress if g == "g-ttr") == ["2026-01", "2026-02"]
    assert progress[("g-ttr", "2026-01")][1:3] == (ttr["2026-01"], ttr["2026-01"] <= 0.5)
    # A component goal is the team's mean component value; months without data are not measured.
    assert progress[("g-score", "2026-02")][1] == pytest.approx(component["2026-02"])
    assert progress[("g-score", "2026-04")][1:3] == (None, None)
    assert goals["g-csat"] == ("open", None, 100.0, 1)
    assert goals["g-ttr"] == ("closed", "missed", 0.5, 0)


def test_a_metric_replay_regauges_goals_and_diff_names_the_changed_outcomes(
    projected: Settings, tmp_path: Path
) -> None:
    # Half the cap: the problems_solved component doubles, so g-score's months flip to met.
    text = DEFAULT_SPEC.read_text()
    marker = 'kpi = "problems_solved"'
    start = text.index(marker)
    cap_at = text.index("cap = ", start)
    end = text.index("\n", cap_at)
    spec = tmp_path / "cap.toml"
    spec.write_text(text[:cap_at] + "cap = 4" + text[end:])
    result = replay(projected, spec, "ledger", name="cap")
    assert result.mode == "scores-only"
    with ProjectionDB(projected.projections_db) as db:
        base = db.find_version(db.promoted_version() or "")
        derived = db.find_version("cap")
        before, after = _progress(db.connection, base.schema), _progress(db.connection, derived.schema)
        report = diff_versions(db.connection, base, derived)
    changed = {(g["goal_id"], g["period"]) for g in report.goal_changes}
    assert changed == {k for k in before if before[k][2] != after[k][2]}
    assert changed and all(goal_id == "g-score" for goal_id, _ in changed)
    assert "goal_outcomes_changed" in report.summary()


def test_goal_commands_set_revise_close_and_list(settings: Settings) -> None:
    app = LedgerApplication(settings.eventsourcing_env())
    assert set(record(app, basics())) == {"accepted"}
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    args = ["goal", "set", "g1", "--team", "t1", "--kpi", "fcr_rate", "--target", "0.7"]
    args += ["--from", "2026-01", "--to", "2026-06", "--agreed-by", "e1,e2", "--at", "2026-01-05"]
    assert "set" in run_cli(*args, env=env, check=True).stdout
    assert "already set" in run_cli(*args, env=env, check=True).stdout
    bad = run_cli("goal", "set", "g2", *args[3:-2], "--at", "2025-12-01", "--kpi", "nope", env=env)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "unknown KPI" in bad.stderr
    # A year before 1000 was written unpadded ('999-01-01...') and refused as no timestamp at all.
    early = run_cli("goal", "set", "g2", *args[3:-2], "--at", "0999-01-01", env=env)
    assert early.returncode == 1, early.stderr
    assert "out of range (1900-01-01 to 2199-12-31): '0999-01-01T00:00:00.000Z'" in early.stderr, early.stderr
    # A target out of the KPI's range: one line naming the KPI, the value and the range.
    for kpi, target, words in (
        ("csat_pct", "101", "101 is outside the range of csat_pct (from 0 to 100)"),
        ("problems_solved", "-3", "-3 is outside the range of problems_solved (0 or more)"),
        ("csat_pct", "nan", "must be a finite number, got nan"),
    ):
        given = ["--team", "t1", "--kpi", kpi, "--target", target, *args[9:]]
        out_of_range = run_cli("goal", "set", "g3", *given, env=env)
        assert out_of_range.returncode == 1 and out_of_range.stderr.count("\n") == 1, out_of_range.stderr
        assert words in out_of_range.stderr and "Traceback" not in out_of_range.stderr, out_of_range.stderr
    stretch = ["--target", "1.2", "--agreed-by", "e1", "--reason", "stretch", "--at", "2026-02-01"]
    too_high = run_cli("goal", "revise", "g1", *stretch, env=env)
    assert too_high.returncode == 1 and too_high.stderr.count("\n") == 1, too_high.stderr
    assert "1.2 is outside the range of fcr_rate (from 0 to 1)" in too_high.stderr
    run_cli(
        "goal",
        "revise",
        "g1",
        "--to",
        "2026-04",
        "--agreed-by",
        "e1",
        "--reason",
        "shorter",
        "--at",
        "2026-02-01",
        env=env,
        check=True,
    )
    revised = run_cli("goal", "revise", "g1", "--to", "2026-04", "--agreed-by", "e1", "--reason", "shorter",
                      "--at", "2026-02-01", env=env, check=True)
    assert "already revised" in revised.stdout  # the same revision at the same moment: once
    run_cli("goal", "close", "g1", "--outcome", "achieved", "--at", "2026-04-30", env=env, check=True)
    # Without --at, a second run of the same setting or closing is the same agreement: nothing more.
    now = datetime.now(tz=UTC)
    later = ["--from", f"{now:%Y-%m}", "--to", f"{now.year + 1}-{now:%m}", "--agreed-by", "e1,e2"]
    fresh = ["goal", "set", "g-now", "--team", "t1", "--kpi", "fcr_rate", "--target", "0.7", *later]
    assert run_cli(*fresh, env=env, check=True).stdout.startswith("goal g-now: set")
    assert "already set" in run_cli(*fresh, env=env, check=True).stdout
    for expected in ("closed", "already closed"):
        closed = run_cli("goal", "close", "g-now", "--outcome", "withdrawn", env=env, check=True).stdout
        assert closed.startswith(f"goal g-now: {expected}"), closed
    run_cli("project", env=env, check=True)
    listed = run_cli("goal", "list", "--format", "json", env=env, check=True).stdout
    assert (
        '"status": "closed"' in listed and '"to_period": "2026-04"' in listed and '"revisions": 1' in listed
        and '"goal_id": "g-now"' in listed
    )


@pytest.mark.parametrize("blank", ["", "  ", "\t"])
def test_a_blank_note_or_reason_is_a_usage_error_and_records_nothing(settings: Settings, blank: str) -> None:
    """`--note ""` (an unset shell variable) was recorded as the goal's note; `--reason " "`
    was the event's field error (exit 1), not the option's."""
    app = LedgerApplication(settings.eventsourcing_env())
    assert set(record(app, basics())) == {"accepted"}
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    before = stored_rows(Path(settings.store))
    agreed = ["--agreed-by", "e1", "--at", "2026-01-05"]
    commands = {
        "--note": [
            ["goal", "set", "g1", "--team", "t1", "--kpi", "fcr_rate", "--target", "0.7", "--from", "2026-01",
             "--to", "2026-06", *agreed, "--note", blank],
            ["goal", "close", "g1", "--outcome", "achieved", "--note", blank],
        ],
        "--reason": [["goal", "revise", "g1", "--target", "0.6", *agreed, "--reason", blank]],
    }
    for option, runs in commands.items():
        for args in runs:
            refused = run_cli(*args, env=env)
            assert refused.returncode == 2, (args, refused.stderr)
            assert f"'{option}': is empty" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert stored_rows(Path(settings.store)) == before


def test_goal_events_are_keyed_by_team_on_kafka() -> None:
    from ledger.relay import message_key

    # No customer, employee, article or period: the team keeps a goal's facts in one partition.
    assert message_key({"goal_id": "g1", "team_id": "t1", "agreed_by": ["e1"]}) == b"t1"
    assert message_key({"employee_id": "e1", "team_id": "t1"}) == b"e1"


def test_a_target_just_outside_its_range_is_shown_unrounded() -> None:
    from ledger.errors import ValidationError
    from ledger.goals import check_target

    for kpi, target, shown in (("csat_pct", 100.0000001, "100.0000001"), ("fcr_rate", 1 + 2**-52, repr(1 + 2**-52))):
        with pytest.raises(ValidationError, match=rf"^field 'target': {re.escape(shown)} is outside"):
            check_target(kpi, target)


def test_goal_list_before_any_version_is_promoted_says_so(tmp_path: Path) -> None:
    db = tmp_path / "p.duckdb"
    ProjectionDB(db).close()  # a database no version was built in yet
    listed = run_cli("goal", "list", env={"CRM_LEDGER_DB": str(db)})
    assert listed.returncode == 1, listed.stdout + listed.stderr
    assert listed.stderr.strip() == "error: no version is promoted yet (run `crm-ledger project`)"


def test_two_runs_of_the_same_goal_command_at_once_both_succeed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --at, a goal's setting or closing is recorded at the first run's moment; two runs
    at once both looked before either recorded, and the second failed with "field
    'occurred_at': event_id already recorded with different content", exit 1."""
    import time

    from rewards.goals import GoalChange, close_goal, set_goal

    app = LedgerApplication(settings.eventsourcing_env())
    assert set(record(app, basics())) == {"accepted"}
    now = datetime.now(tz=UTC)
    terms: dict[str, Any] = {
        "team_id": "t1",
        "kpi": "fcr_rate",
        "target": 0.7,
        "comparison": "at_least",
        "from_period": f"{now:%Y-%m}",
        "to_period": f"{now.year + 1}-{now:%m}",
        "agreed_by": ["e1"],
        "note": None,
    }
    assert set_goal(settings, GoalChange("g1", None), **terms) == "accepted"
    assert close_goal(settings, GoalChange("g1", None), outcome="withdrawn", note=None) == "accepted"
    time.sleep(0.01)
    # The other run of each looked before the first one recorded, and records a moment later.
    real = LedgerApplication.recorded_fact
    looks: list[str] = []

    def looked_too_early(self: LedgerApplication, event_id: str) -> Any:
        looks.append(event_id)
        return None if looks.count(event_id) == 1 else real(self, event_id)

    monkeypatch.setattr(LedgerApplication, "recorded_fact", looked_too_early)
    assert set_goal(settings, GoalChange("g1", None), **terms) == "duplicate"
    assert close_goal(settings, GoalChange("g1", None), outcome="withdrawn", note=None) == "duplicate"
