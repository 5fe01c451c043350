"""Reward periods: statements are facts; late events and rule changes become adjustments."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from crm_ledger.settings import Settings
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from projections.errors import ProjectionError
from projections.service import project_promoted
from projections.spec import DEFAULT_SPEC
from projections.store import ProjectionDB
from replay.build import replay
from replay.diff import diff_versions
from rewards.errors import PeriodError
from rewards.periods import adjust_period, close_period, period_status
from rewards.statement import build_statement
from tests.factory import rec
from tests.helpers import kill_hard, run_cli, start_cli, wait_for

PERIOD = "2025-02"


def _late_compliment(employee: str) -> dict[str, Any]:
    """A compliment for `employee` in the closed period, recorded after it was closed."""
    return rec(
        "ComplimentReceived",
        f"{PERIOD}-15T10:00:00Z",
        employee_id=employee,
        channel="email",
        customer_id="cust-000001",
    )


@pytest.fixture
def ledger(settings: Settings, tmp_path: Path) -> LedgerApplication:
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=300, employees=12, months=3, seed=31), handle)
    app = LedgerApplication(settings.eventsourcing_env())
    ingest_records(app, read_file(history, RecordParser(app.registry)), RejectSink(None, echo=None))
    project_promoted(settings, "ledger", None, follow=False)
    return app


def promoted_scores(settings: Settings, period: str = PERIOD) -> dict[str, float]:
    with duckdb.connect(str(settings.projections_db), read_only=True) as con:
        return dict(
            con.execute(
                "SELECT employee_id, round(score, 6) FROM reward_score WHERE period = ?", [period]
            ).fetchall()
        )


def test_close_issues_statements_equal_to_the_promoted_scores(
    ledger: LedgerApplication, settings: Settings
) -> None:
    expected = promoted_scores(settings)
    result = close_period(settings, PERIOD)
    assert result.statements == len(expected) > 0
    told = ledger.reward_period(PERIOD)
    assert told is not None and told.told == pytest.approx(expected, abs=1e-9)
    statement = build_statement(ledger, next(iter(expected)), PERIOD)
    assert statement.score == pytest.approx(expected[statement.employee_id])
    assert sum(c["points"] for c in statement.components) == pytest.approx(statement.score, abs=1e-6)
    for bad in (PERIOD, "2099-01", "2025-2", "March"):
        with pytest.raises(PeriodError):
            close_period(settings, bad)


def test_late_event_keeps_the_statement_and_adjust_issues_the_difference(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    closed = close_period(settings, PERIOD)
    before = promoted_scores(settings)
    employee = sorted(before)[0]
    late = [_late_compliment(employee)]
    path = tmp_path / "late.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in late) + "\n")
    assert (
        ingest_records(
            ledger, read_file(path, RecordParser(ledger.registry)), RejectSink(None, echo=None)
        ).accepted
        == 1
    )
    # Read only: the projection has not taken the late event in yet, and says so.
    held = period_status(settings, PERIOD)
    # The close's own events and the late one.
    assert (held.behind, held.late_events, held.drifts) == (ledger.max_position() - closed.position, 0, [])
    assert held.behind_line is not None and f"{held.behind} event(s) behind" in held.behind_line
    assert adjust_period(settings, PERIOD, dry_run=True) == []
    project_promoted(settings, "ledger", None, follow=False)
    status = period_status(settings, PERIOD)
    assert status.behind == 0 and status.behind_line is None
    assert status.late_events == 1
    live = promoted_scores(settings)
    assert live[employee] != before[employee]
    assert [(d.employee_id, round(d.delta, 6)) for d in status.drifts] == [
        (employee, round(live[employee] - before[employee], 6))
    ]
    assert build_statement(ledger, employee, PERIOD).score == pytest.approx(before[employee])
    dry = adjust_period(settings, PERIOD, dry_run=True)
    assert len(dry) == 1 and period_status(settings, PERIOD).adjustments == 0
    issued = adjust_period(settings, PERIOD)
    assert [(a.employee_id, a.old_score, a.new_score) for a in issued] == [
        (employee, before[employee], live[employee])
    ]
    assert "late event" in issued[0].reason
    assert adjust_period(settings, PERIOD) == []  # idempotent
    assert period_status(settings, PERIOD).adjustments == 1
    assert build_statement(ledger, employee, PERIOD).current_score == pytest.approx(live[employee])


def _files(folder: Path) -> dict[str, str]:
    """Every file under `folder` (the projection database, its WAL, the decoded log) by content."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.startswith("ledger.sqlite")
    }


def test_period_status_and_a_dry_run_read_the_projection_and_never_write_it(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    close_period(settings, PERIOD)
    project_promoted(settings, "ledger", None, follow=False)
    employee = sorted(promoted_scores(settings))[0]
    late = _late_compliment(employee)
    (tmp_path / "late.jsonl").write_text(json.dumps(late) + "\n")
    (tmp_path / "elsewhere").mkdir()  # an output's folder must exist: a mistyped one is refused
    rejects = str(tmp_path / "elsewhere" / "rejects.jsonl")
    run_cli("ingest", str(tmp_path / "late.jsonl"), "--rejects", rejects, env=env, check=True)
    with duckdb.connect(str(settings.projections_db), read_only=True) as con:
        (promoted,) = con.execute("SELECT version FROM crm_promoted").fetchone() or ("",)
    before = _files(settings.projections_db.parent)
    behind = (
        f"note: the promoted version {promoted} is 1 event(s) behind the ledger, so its live scores "
        "leave those out; `crm-ledger project` catches it up"
    )
    for args in (
        ["period", "status", PERIOD],
        ["period", "status", PERIOD, "--format", "json"],
        ["period", "adjust", PERIOD, "--dry-run"],
    ):
        result = run_cli(*args, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip().splitlines() == [behind], (args, result.stderr)
        assert _files(settings.projections_db.parent) == before, args
    shown = json.loads(run_cli("period", "status", PERIOD, "--format", "json", env=env, check=True).stdout)
    assert (shown["behind"], shown["late_events"], shown["drifts"]) == (1, 0, [])
    assert "would issue 0 adjustment(s)" in run_cli("period", "adjust", PERIOD, "--dry-run", env=env).stdout
    # The writer catches up first, as before.
    issued = run_cli("period", "adjust", PERIOD, env=env, check=True)
    assert "issued 1 adjustment(s)" in issued.stdout and issued.stderr == ""
    after = run_cli("period", "status", PERIOD, env=env, check=True)
    assert "late events since the close: 1" in after.stdout and "1 adjustments" in after.stdout
    assert after.stderr.strip().splitlines() == [behind]  # the adjustment itself, not projected yet


def test_rule_change_after_close_adjusts_what_diff_reports(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    close_period(settings, PERIOD)
    spec = tmp_path / "caps.toml"
    spec.write_text(DEFAULT_SPEC.read_text().replace("cap = 10\n", "cap = 4\n"))
    new = replay(settings, spec, "ledger", name="caps")
    with ProjectionDB(settings.projections_db) as db:
        old = db.find_version(db.promoted_version() or "")
        report = diff_versions(db.connection, old, db.find_version(new.version))
        db.promote(db.find_version(new.version))
    changed = {
        (r.employee_id): round(r.change or 0, 6)
        for r in report.rows
        if r.period == PERIOD and abs(r.change or 0) > 1e-9
    }
    issued = adjust_period(settings, PERIOD)
    assert {a.employee_id: a.delta for a in issued} == pytest.approx(changed, abs=1e-6)
    assert all(a.new_version == new.version and a.old_version == old.version for a in issued)
    assert adjust_period(settings, PERIOD) == []


def _one_line(result: object, text: str) -> None:
    stderr = getattr(result, "stderr", "")
    assert getattr(result, "returncode", None) == 1, stderr
    assert stderr.strip().splitlines() == [text], stderr


def test_a_version_a_closed_periods_statements_name_is_not_dropped(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    spec = tmp_path / "caps.toml"
    spec.write_text(DEFAULT_SPEC.read_text().replace("cap = 10\n", "cap = 4\n"))
    caps = replay(settings, spec, "ledger", name="caps")
    closed = close_period(settings, PERIOD).version
    run_cli("promote", caps.version, env=env, check=True)
    refusal = (
        f"error: version {closed} is named by the statements of closed reward period(s) {PERIOD}: "
        "it is kept for as long as they point at it"
    )
    # The close is in the ledger only (nothing projected since): the ledger beyond the log says so.
    _one_line(run_cli("drop", closed, env=env), refusal)
    # Projected, the decoded log says so too.
    run_cli("project", env=env, check=True)
    _one_line(run_cli("drop", closed, env=env), refusal)
    # Without the ledger (a mistyped store), nothing is dropped: a period closed since the
    # last projection could not be seen.
    elsewhere = str(tmp_path / "elsewhere.sqlite")
    _one_line(run_cli("drop", closed, env={**env, "CRM_LEDGER_STORE": elsewhere}), f"error: {elsewhere}: no such ledger store (CRM_LEDGER_STORE or --store names the one to read)")
    assert not (tmp_path / "elsewhere.sqlite").exists()
    with ProjectionDB(settings.projections_db) as db:
        assert closed in {v.version for v in db.versions()}
        with pytest.raises(ProjectionError, match="named by the statements of closed reward period"):
            db.drop(db.find_version(closed))
    # A version no statement names is dropped as before.
    spare = tmp_path / "spare.toml"
    spare.write_text(DEFAULT_SPEC.read_text().replace("cap = 10\n", "cap = 6\n"))
    other = replay(settings, spare, "ledger", name="spare")
    dropped = run_cli("drop", "spare", env=env)
    assert dropped.returncode == 0 and dropped.stdout.strip() == f"dropped {other.version} (spare)"


def test_statements_survive_a_full_replay(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    close_period(settings, PERIOD)
    project_promoted(settings, "ledger", None, follow=False)
    other = Settings(store=settings.store, projections_db=tmp_path / "fresh.duckdb")
    replay(other, DEFAULT_SPEC, "ledger", full=True)
    with (
        ProjectionDB(settings.projections_db) as db,
        duckdb.connect(str(other.projections_db), read_only=True) as fresh,
    ):
        version = db.promoted_version()
        rows = db.connection.execute(
            f"SELECT employee_id, period, kind, score, running_total FROM {version}.reward_statement ORDER BY ALL"
        ).fetchall()
        again = fresh.execute(
            f"SELECT employee_id, period, kind, score, running_total FROM {version}.reward_statement ORDER BY ALL"
        ).fetchall()
    assert rows and rows == again


def test_bad_input_is_refused_and_nothing_written(ledger: LedgerApplication, settings: Settings) -> None:
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    before = ledger.max_position()
    for args, text, code in (
        (["period", "adjust", PERIOD], "not closed", 1),
        # A month that is none is the argument's usage error (2), as explain's --period is.
        (["period", "close", "2025-2"], "expected YYYY-MM", 2),
        # Other scripts' digits (int() takes them) are not a period.
        (["period", "close", "\uff12\uff10\uff12\uff15-\uff10\uff11"], "expected YYYY-MM", 2),
        (["period", "status", "\u0662\u0660\u0661\u0666-\u0660\u0661"], "expected YYYY-MM", 2),
        (["period", "close", "2999-01"], "has not ended", 1),
        (["period", "close", "0000-01"], "is outside 1970-01 to 9998-12", 2),
        (["period", "close", "0001-01"], "is outside 1970-01 to 9998-12", 2),
        (["period", "close", "9999-12"], "is outside 1970-01 to 9998-12", 2),
        (["period", "close", "2015-01"], "has no scores", 1),  # a close is for good: not of an empty month
        (["statement", "--employee", "emp-0001", "--period", PERIOD], "not closed", 1),
    ):
        result = run_cli(*args, env=env)
        assert result.returncode == code and text in result.stderr and "Traceback" not in result.stderr, (
            args,
            result.stderr,
        )
    assert run_cli("period", "close", PERIOD, env=env).returncode == 0
    unknown = run_cli("statement", "--employee", "ghost", "--period", PERIOD, env=env)
    assert unknown.returncode == 1 and "no statement for employee 'ghost'" in unknown.stderr
    html = run_cli(
        "statement",
        "--employee",
        sorted(promoted_scores(settings))[0],
        "--period",
        PERIOD,
        "--format",
        "html",
        env=env,
    )
    assert (
        html.returncode == 0 and "<svg" in html.stdout and "http" not in html.stdout.replace("http-equiv", "")
    )
    # '-' is stdout, as generate takes it (it was written to a file named '-').
    employee = sorted(promoted_scores(settings))[0]
    dashed = run_cli("statement", "--employee", employee, "--period", PERIOD, "--out", "-", env=env)
    assert dashed.returncode == 0 and dashed.stdout.startswith(f"# Reward statement: {employee}")
    assert not Path("-").exists()
    assert ledger.max_position() > before


@pytest.mark.slow
def test_killed_close_leaves_exactly_one_statement_each(
    ledger: LedgerApplication, settings: Settings
) -> None:
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    before = ledger.max_position()
    process = start_cli("period", "close", PERIOD, env=env)
    wait_for(
        lambda: process.poll() is not None or _rows(settings) > before,
        timeout_s=60,
        what="the close to start",
    )
    kill_hard(process) if process.poll() is None else None
    run_cli("period", "close", PERIOD, env=env)  # either closes now or says it is already closed
    app = LedgerApplication(settings.eventsourcing_env())
    facts = app.period_facts(PERIOD)
    employees = [f.data["employee_id"] for f in facts if f.event_type == "RewardStatementIssued"]
    assert employees and len(employees) == len(set(employees)) == len(promoted_scores(settings))


def _rows(settings: Settings) -> int:
    from tests.helpers import stored_rows

    return stored_rows(Path(settings.store))


def test_text_outputs_show_control_characters_in_data_as_escapes(settings: Settings, tmp_path: Path) -> None:
    """Ids and names come from whoever fed the ledger: an escape sequence in one retitled or
    cleared the terminal of whoever ran customer show, explain, diff, period status or adjust
    (tables and goal lines already showed it as \\x1b)."""
    evil = "emp-0001\x1b]0;pwned\x07"
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=60, employees=4, months=2, seed=31), handle)
    text = history.read_text().replace('"emp-0001"', json.dumps(evil))
    history.write_text(text.replace('"Customer 1"', json.dumps("Cust\x1b[2J")))
    app = LedgerApplication(settings.eventsourcing_env())
    ingest_records(app, read_file(history, RecordParser(app.registry)), RejectSink(None, echo=None))
    project_promoted(settings, "ledger", None, follow=False)
    close_period(settings, PERIOD)
    spec = tmp_path / "caps.toml"
    spec.write_text(DEFAULT_SPEC.read_text().replace("cap = 10\n", "cap = 1\n"))
    new = replay(settings, spec, "ledger", name="caps")
    with ProjectionDB(settings.projections_db) as db:
        db.promote(db.find_version(new.version))
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    for args in (
        ["customer", "show", "cust-000001"],
        ["explain", "--employee", evil, "--period", PERIOD],
        ["diff", "default", "caps", "--limit", "1"],
        ["period", "status", PERIOD],
        ["period", "adjust", PERIOD, "--dry-run"],
        # The statement's documents on stdout too (a file written with --out holds the id as it is).
        ["statement", "--employee", evil, "--period", PERIOD],
        ["statement", "--employee", evil, "--period", PERIOD, "--format", "html"],
    ):
        result = run_cli(*args, env=env)
        assert result.returncode == 0, (args, result.stderr)
        assert "\x1b" not in result.stdout and "\\x1b" in result.stdout, (args, result.stdout)
    kept = tmp_path / "statement.md"
    run_cli("statement", "--employee", evil, "--period", PERIOD, "--out", str(kept), env=env, check=True)
    assert evil in kept.read_text()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["period", "close", "2024-13"], "'MONTH'"),
        (["period", "status", "2024-1"], "'MONTH'"),
        (["period", "adjust", " ", "--dry-run"], "'MONTH'"),
        (["statement", "--employee", "emp-0001", "--period", "2024-13"], "'--period'"),
        (["explain", "--employee", "emp-0001", "--period", "0000-01"], "'--period'"),
        (
            [
                *["goal", "set", "g1", "--team", "t1", "--kpi", "csat_pct", "--target", "80"],
                *["--from", "2024-13", "--to", "2025-02", "--agreed-by", "e1"],
            ],
            "'--from'",
        ),
        (["goal", "revise", "g1", "--to", "9999-12", "--agreed-by", "e1", "--reason", "r"], "'--to'"),
    ],
)
def test_a_month_that_is_none_is_a_usage_error_naming_its_option(
    settings: Settings, args: list[str], option: str
) -> None:
    """Each command took a malformed month its own way: explain as a usage error (2), the
    period commands and statement as a user error (1), goals as a record's field (1)."""
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    result = run_cli(*args, env=env)
    assert result.returncode == 2, (args, result.stderr)
    assert f"Invalid value for {option}" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_score_moved_back_and_forth_is_adjusted_each_time(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same move made again (a score back and forth under one version) is a fact of its own:
    with the move alone in its id it was taken for the first one, recorded already, and the
    drift stayed unadjusted."""
    import dataclasses

    from rewards import periods

    close_period(settings, PERIOD)
    employee = sorted(promoted_scores(settings))[0]
    path = tmp_path / "late.jsonl"
    path.write_text(json.dumps(_late_compliment(employee)) + "\n")
    ingest_records(ledger, read_file(path, RecordParser(ledger.registry)), RejectSink(None, echo=None))
    [up] = adjust_period(settings, PERIOD)
    down = dataclasses.replace(up, old_score=up.new_score, new_score=up.old_score)
    monkeypatch.setattr(periods, "planned_adjustments", lambda _status: [down])
    assert adjust_period(settings, PERIOD) == [down]
    monkeypatch.undo()
    assert adjust_period(settings, PERIOD) == [up]  # the same move as the first, made again
    status = period_status(settings, PERIOD)
    assert status.adjustments == 3 and status.drifts == []


def test_two_adjust_runs_at_once_issue_each_adjustment_once_and_both_succeed(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `period adjust` runs at once plan the same adjustments (the same event ids) and
    issue them at their own moments: the second failed with "field 'occurred_at': event_id
    already recorded with different content", exit 1, where running it again says 0 issued."""
    from rewards import periods

    close_period(settings, PERIOD)
    employee = sorted(promoted_scores(settings))[0]
    late = _late_compliment(employee)
    path = tmp_path / "late.jsonl"
    path.write_text(json.dumps(late) + "\n")
    ingest_records(ledger, read_file(path, RecordParser(ledger.registry)), RejectSink(None, echo=None))
    first = adjust_period(settings, PERIOD)
    assert [a.employee_id for a in first] == [employee]
    # The other run planned before the first one recorded: the same adjustments, later; it
    # then plans again from what the ledger holds.
    plans = iter([first])
    real = periods.planned_adjustments
    monkeypatch.setattr(periods, "planned_adjustments", lambda status: next(plans, None) or real(status))
    assert adjust_period(settings, PERIOD) == []
    assert period_status(settings, PERIOD).adjustments == 1
