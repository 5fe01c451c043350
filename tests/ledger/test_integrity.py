"""Ledger integrity: causal order, one id = one fact, order-tolerant runs, personal data in rejects."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from crm_ledger.settings import Settings
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.ingest import IngestSummary, RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from tests.factory import basics, chat, rec
from tests.helpers import ledger_content, run_cli


def _history(path: Path, **overrides: Any) -> list[str]:
    config = {"customers": 40, "employees": 6, "months": 1, "seed": 17, **overrides}
    with path.open("w") as handle:
        write_history(GeneratorConfig(**config), handle)
    return path.read_text().splitlines()


def _ingest(app: LedgerApplication, *paths: Path, batch_size: int = 2000, rejects: Path | None = None) -> Any:
    parser = RecordParser(app.registry)
    sink = RejectSink(rejects, echo=None)
    try:
        records = (record for path in paths for record in read_file(path, parser))
        return ingest_records(app, records, sink, batch_size=batch_size)
    finally:
        sink.close()


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _fresh(tmp_path: Path, name: str) -> LedgerApplication:
    return LedgerApplication(Settings(store=str(tmp_path / f"{name}.sqlite")).eventsourcing_env())


def _without_ciphertext(content: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return content  # ledger_content already decrypts personal fields and drops recorded_at


# -- 1. causal order -------------------------------------------------------------------------
def test_batch_size_does_not_change_the_stored_events_or_their_order(tmp_path: Path) -> None:
    lines = _history(tmp_path / "h.jsonl")
    shuffled = lines[:]
    random.Random(3).shuffle(shuffled)
    source = tmp_path / "shuffled.jsonl"
    source.write_text("\n".join(shuffled) + "\n")
    contents = []
    for size in (1, 7, 2000):
        app = _fresh(tmp_path, f"b{size}")
        _ingest(app, source, batch_size=size)
        contents.append(ledger_content(app))
        app.close()
    assert contents[0] == contents[1] == contents[2]
    assert len(contents[0]) > 100


def test_every_event_follows_the_registration_of_its_customer(tmp_path: Path) -> None:
    _history(tmp_path / "h.jsonl")
    app = _fresh(tmp_path, "ordered")
    _ingest(app, tmp_path / "h.jsonl", batch_size=50)
    registered: set[str] = set()
    for event_type, record in ledger_content(app):
        if event_type == "CustomerRegistered":
            registered.add(record["customer_id"])
        elif record.get("customer_id"):
            assert record["customer_id"] in registered, (event_type, record["event_id"])
    app.close()


# -- 2. order-tolerant runs ------------------------------------------------------------------
def _kpis(tmp_path: Path, name: str, files: list[Path]) -> tuple[str, dict[str, str]]:
    env = {
        "CRM_LEDGER_STORE": str(tmp_path / f"{name}.sqlite"),
        "CRM_LEDGER_DB": str(tmp_path / f"{name}.duckdb"),
    }
    ingested = run_cli("ingest", *map(str, files), "--rejects", str(tmp_path / f"{name}.rejects"), env=env)
    assert ingested.returncode in (0, 1), ingested.stderr
    run_cli("project", env=env, check=True)
    tables = {}
    for table in ("kpi_employee_month", "kpi_team_month", "reward_score", "customer_profile"):
        result = run_cli("query", f"SELECT * FROM {table} ORDER BY ALL", "--format", "csv", env=env, check=True)
        tables[table] = result.stdout
    accepted = run_cli(
        "query", "SELECT event_id FROM ledger_events ORDER BY event_id", "--format", "csv", env=env, check=True
    )
    return accepted.stdout, tables


@pytest.mark.slow
def test_shuffled_and_split_histories_give_the_same_ledger_and_kpis(tmp_path: Path) -> None:
    lines = _history(tmp_path / "ordered.jsonl", customers=60, months=2)
    shuffled = lines[:]
    random.Random(11).shuffle(shuffled)
    (tmp_path / "shuffled.jsonl").write_text("\n".join(shuffled) + "\n")
    # A "ticket export" (cases, surveys) and a "CRM export" (everything else).
    tickets = [line for line in lines if '"Case' in line or '"Survey' in line]
    crm = [line for line in lines if line not in set(tickets)]
    (tmp_path / "tickets.jsonl").write_text("\n".join(tickets) + "\n")
    (tmp_path / "crm.jsonl").write_text("\n".join(crm) + "\n")

    expected = _kpis(tmp_path, "ordered", [tmp_path / "ordered.jsonl"])
    assert _kpis(tmp_path, "shuffled", [tmp_path / "shuffled.jsonl"]) == expected
    assert _kpis(tmp_path, "tickets-first", [tmp_path / "tickets.jsonl", tmp_path / "crm.jsonl"]) == expected
    assert _kpis(tmp_path, "crm-first", [tmp_path / "crm.jsonl", tmp_path / "tickets.jsonl"]) == expected


def test_rejects_of_an_earlier_run_can_be_ingested_once_their_references_exist(tmp_path: Path) -> None:
    app = _fresh(tmp_path, "later")
    interaction = rec("InteractionRecorded", customer_id="c1", employee_id="e1", channel="chat", direction="inbound")
    first = _ingest(app, _write(tmp_path / "a.jsonl", [interaction]))
    assert (first.accepted, first.rejected) == (0, 1)
    _ingest(app, _write(tmp_path / "b.jsonl", basics()))
    again = _ingest(app, tmp_path / "a.jsonl")
    assert (again.accepted, again.rejected) == (1, 0)
    app.close()


# -- 3. one id, one fact ---------------------------------------------------------------------
def test_one_event_id_is_one_fact_across_the_ledger(app: LedgerApplication, tmp_path: Path) -> None:
    setup = basics()
    _ingest(app, _write(tmp_path / "setup.jsonl", setup))
    interaction = rec("InteractionRecorded", customer_id="c1", employee_id="e1", channel="chat", direction="inbound")
    _ingest(app, _write(tmp_path / "one.jsonl", [interaction]))
    before = app.max_position()

    identical = dict(interaction)
    changed = {**interaction, "channel": "phone", "duration_s": 60}
    other_entity = {**rec("EmployeeJoined", employee_id="e9", team_id="t1", role="agent"), "event_id": setup[3]["event_id"]}
    rejects = tmp_path / "rejects.jsonl"
    summary = _ingest(app, _write(tmp_path / "two.jsonl", [identical, changed, other_entity]), rejects=rejects)

    assert (summary.accepted, summary.duplicates, summary.conflicts, summary.rejected) == (0, 1, 2, 0)
    assert app.max_position() == before
    entries = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [e["kind"] for e in entries] == ["conflict", "conflict"]
    assert "channel (ledger 'chat', given 'phone')" in entries[0]["reason"]
    assert "duration_s" in entries[0]["reason"]
    assert "already names a CustomerRegistered" in entries[1]["reason"]


def test_the_same_id_twice_in_one_file(app: LedgerApplication, tmp_path: Path) -> None:
    interaction = rec("InteractionRecorded", customer_id="c1", employee_id="e1", channel="chat", direction="inbound")
    twin = {**interaction, "topic": "billing"}
    summary = _ingest(app, _write(tmp_path / "f.jsonl", [*basics(), interaction, dict(interaction), twin]))
    assert (summary.accepted, summary.duplicates, summary.conflicts) == (6, 1, 1)


def test_a_case_step_naming_another_customer_is_refused_not_rewritten(
    app: LedgerApplication, tmp_path: Path
) -> None:
    opened = rec("CaseOpened", case_id="k1", customer_id="c1", employee_id="e1", kind="complaint", channel="web", summary="x")
    accepted = rec("CaseAccepted", case_id="k1", employee_id="e1")
    resolved = rec(
        "CaseResolved", case_id="k1", customer_id="c2", employee_id="e1", resolution_code="fixed", first_contact=True
    )
    summary = _ingest(app, _write(tmp_path / "f.jsonl", [*basics(), opened, accepted, resolved]), rejects=tmp_path / "r")
    assert (summary.accepted, summary.rejected) == (7, 1)
    entry = json.loads((tmp_path / "r").read_text())
    assert entry["field"] == "customer_id" and "belongs to customer 'c1', not 'c2'" in entry["reason"]


def test_existing_stores_get_their_event_ids_indexed(tmp_path: Path) -> None:
    app = _fresh(tmp_path, "old")
    records = [*basics(), rec("InteractionRecorded", customer_id="c1", channel="web", direction="inbound")]
    _ingest(app, _write(tmp_path / "f.jsonl", records))
    app.close()
    with sqlite3.connect(tmp_path / "old.sqlite") as con:
        con.execute("DELETE FROM crm_event_ids")
    reopened = _fresh(tmp_path, "old")
    summary = _ingest(reopened, tmp_path / "f.jsonl")
    assert (summary.accepted, summary.duplicates) == (0, 6)
    reopened.close()


# -- 6. personal data ------------------------------------------------------------------------
def test_rejects_never_show_personal_fields_and_rejects_make_no_keys(tmp_path: Path) -> None:
    app = _fresh(tmp_path, "pii")
    bad = rec("CustomerRegistered", customer_id="c7", segment="smb", region="north", name="Ada Secret", email="ada@secret.example", channel="pigeon")
    bad["segment"] = 5  # a number where text belongs: rejected
    unparseable = '{"type": "CustomerRegistered", "name": "Bo Hidden", "email": "bo@hidden.example", '
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(bad) + "\n" + unparseable + "\n")
    rejects = tmp_path / "rejects.jsonl"
    summary = _ingest(app, path, rejects=rejects)
    assert summary.rejected == 2
    text = rejects.read_text()
    for secret in ("Ada Secret", "ada@secret", "Bo Hidden", "bo@hidden"):
        assert secret not in text
    assert "[redacted]" in text
    with sqlite3.connect(tmp_path / "pii.sqlite") as con:
        assert con.execute("SELECT count(*) FROM crm_customer_keys").fetchone()[0] == 0
    app.close()


def test_unpaired_surrogate_escapes_are_rejected_and_kept_as_escapes_in_the_rejects(tmp_path: Path) -> None:
    app = _fresh(tmp_path, "surrogates")
    path = tmp_path / "f.jsonl"
    lone = rec("CustomerRegistered", customer_id="c1", segment="smb", region="north")
    lines = [json.dumps(lone).replace('"c1"', '"c\\ud800"'), json.dumps(lone).replace('"smb"', '"smb\\udfff"')]
    path.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "rejects.jsonl"
    summary = _ingest(app, path, rejects=rejects)
    assert (summary.accepted, summary.rejected) == (0, 2)
    entries = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert [(e["record"], e["field"]) for e in entries] == [("f.jsonl:1", "customer_id"), ("f.jsonl:2", "segment")]
    assert "c\ud800" in entries[0]["raw"]
    app.close()


def test_a_forgotten_customer_stays_forgotten_whatever_is_ingested_again(tmp_path: Path) -> None:
    app = _fresh(tmp_path, "forget")
    registered = rec("CustomerRegistered", "2026-01-02T00:00:00Z", customer_id="c9", segment="smb", region="n", name="Cy", email="cy@example.com")
    _ingest(app, _write(tmp_path / "a.jsonl", [registered]))
    _ingest(app, _write(tmp_path / "b.jsonl", [rec("CustomerForgotten", "2026-01-03T00:00:00Z", customer_id="c9", reason="erasure")]))
    again = [
        registered,
        rec("CustomerRegistered", "2026-01-04T00:00:00Z", customer_id="c9", segment="smb", region="n", name="Cy", email="cy@example.com"),
        rec("CustomerDetailsChanged", "2026-01-05T00:00:00Z", customer_id="c9", name="Cy Again"),
    ]
    summary = _ingest(app, _write(tmp_path / "c.jsonl", again))
    assert (summary.accepted, summary.duplicates, summary.rejected) == (0, 1, 2)
    names = [r.get("name") for t, r in ledger_content(app) if t.startswith("Customer")]
    assert names[0] == "[forgotten]"
    with sqlite3.connect(tmp_path / "forget.sqlite") as con:
        assert con.execute("SELECT count(*) FROM crm_customer_keys").fetchone()[0] == 0
    app.close()


def test_summary_line_counts_conflicts_separately() -> None:
    summary = IngestSummary(accepted=3, duplicates=2, rejected=1, conflicts=4)
    assert summary.line() == "accepted 3, duplicates skipped 2, rejected 1, conflicts 4"
    assert summary.refused == 5


# -- 4. concurrent writers -------------------------------------------------------------------
def _time_prefix(lines: list[str], share: float) -> list[str]:
    times = sorted(json.loads(line)["occurred_at"] for line in lines)
    cut = times[int(len(times) * share)]
    return [line for line in lines if json.loads(line)["occurred_at"] < cut]


@pytest.mark.slow
def test_concurrent_ingests_end_with_the_ledger_of_a_sequential_run(
    settings: Settings, store_kind: str, tmp_path: Path
) -> None:
    from tests.helpers import start_cli

    lines = _history(tmp_path / "full.jsonl", customers=80, months=1, seed=23)
    shuffled = lines[:]
    random.Random(5).shuffle(shuffled)
    (tmp_path / "shuffled.jsonl").write_text("\n".join(shuffled) + "\n")
    (tmp_path / "early.jsonl").write_text("\n".join(_time_prefix(lines, 0.5)) + "\n")
    files = ["full.jsonl", "shuffled.jsonl", "early.jsonl", "full.jsonl"]
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    processes = [
        start_cli("ingest", str(tmp_path / name), "--batch-size", "25", "--rejects", str(tmp_path / f"r{i}"), env=env)
        for i, name in enumerate(files)
    ]
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, (out, err)
        assert "Traceback" not in err

    concurrent = LedgerApplication(settings.eventsourcing_env())
    sequential = _fresh(tmp_path, "sequential")
    for name in files:
        _ingest(sequential, tmp_path / name)
    together, one_by_one = ledger_content(concurrent), ledger_content(sequential)
    assert sorted(map(json.dumps, together)) == sorted(map(json.dumps, one_by_one))
    # (PostgreSQL's notification ids may have gaps where a losing transaction drew one.)
    assert len(together) == len(lines)
    concurrent.close()
    sequential.close()


def test_a_second_load_waits_for_the_one_under_way_and_says_so(
    settings: Settings, store_kind: str, tmp_path: Path
) -> None:
    """Loads take turns (ledger.load_lock): one that finds another under way says so and
    writes nothing until it ends, then lands its file whole."""
    import signal

    from ledger.load_lock import one_load_at_a_time
    from tests.helpers import start_cli

    lines = _history(tmp_path / "h.jsonl")
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    app = LedgerApplication(settings.eventsourcing_env())
    told: list[bool] = []
    rejects = tmp_path / "rejects.jsonl"  # shared, as the default one is
    rejects.write_text("a line of the load under way\n")
    load = ("ingest", str(tmp_path / "h.jsonl"), "--rejects", str(rejects))
    with one_load_at_a_time(settings.store, app.recorder, lambda: told.append(True)):
        # Stopped while it waits: the rejects file of the load under way is left alone.
        stopped = start_cli(*load, env=env)
        assert stopped.stderr is not None
        assert "another ingest or import is loading into this ledger" in stopped.stderr.readline()
        with rejects.open("a") as running:  # the load under way goes on rejecting meanwhile
            running.write("another\n")
        stopped.send_signal(signal.SIGINT)
        assert stopped.communicate(timeout=60)[1] == "interrupted\n" and stopped.returncode == 130
        assert rejects.read_text() == "a line of the load under way\nanother\n"
        second = start_cli(*load, env=env)
        assert second.stderr is not None
        assert "another ingest or import is loading into this ledger" in second.stderr.readline()
        assert not told and not app.recorder.max_notification_id()
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, (out, err)
    assert app.recorder.max_notification_id() == len(lines)
    app.close()


# -- 8. a first follow is queryable ----------------------------------------------------------
@pytest.mark.slow
def test_a_first_follow_is_queryable_before_it_stops(tmp_path: Path) -> None:
    import signal

    from tests.helpers import start_cli, wait_for

    _history(tmp_path / "h.jsonl")
    env = {"CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    run_cli("ingest", str(tmp_path / "h.jsonl"), env=env, check=True)
    follower = start_cli("project", "--follow", "--refresh-interval", "0.5", env=env)
    try:

        def counted() -> bool:
            result = run_cli("query", "SELECT count(*) AS n FROM ledger_events", "--format", "csv", env=env)
            return result.returncode == 0 and result.stdout.splitlines()[1] != "0"

        wait_for(counted, 120, "the stable views of the first version")
    finally:
        follower.send_signal(signal.SIGINT)
        follower.communicate(timeout=60)
    assert follower.returncode == 0


@pytest.mark.slow
def test_concurrent_period_closes_and_ingests_leave_one_close(tmp_path: Path) -> None:
    from tests.helpers import start_cli

    lines = _history(tmp_path / "h.jsonl", customers=60, months=1, seed=8)
    env = {"CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    run_cli("ingest", str(tmp_path / "h.jsonl"), env=env, check=True)
    run_cli("project", env=env, check=True)
    month = json.loads(lines[-1])["occurred_at"][:7]
    closes = [start_cli("period", "close", month, env=env) for _ in range(3)]
    ingest = start_cli("ingest", str(tmp_path / "h.jsonl"), env=env)
    results = [(*p.communicate(timeout=300), p.returncode) for p in [*closes, ingest]]
    assert all("Traceback" not in err for _, err, _ in results), results
    assert sorted(code for _, _, code in results[:3]) == [0, 1, 1], results
    assert results[3][2] == 0
    app = LedgerApplication(Settings(store=env["CRM_LEDGER_STORE"]).eventsourcing_env())
    kinds = [t for t, _ in ledger_content(app)]
    assert kinds.count("RewardPeriodClosed") == 1
    assert len(kinds) == len(lines) + 1 + kinds.count("RewardStatementIssued")
    app.close()


def test_a_rejection_caused_by_a_concurrent_run_saving_the_same_facts_is_decided_again(
    app: LedgerApplication, tmp_path: Path
) -> None:
    from eventsourcing.persistence import IntegrityError

    from ledger.application import Outcome, check_rejections_not_raced
    from ledger.errors import ValidationError

    setup = basics()
    _ingest(app, _write(tmp_path / "setup.jsonl", setup))
    stored = RecordParser(app.registry).parse(setup[0])
    unseen = RecordParser(app.registry).parse(rec("EmployeeJoined", employee_id="e9", team_id="t1", role="agent"))
    rejected = Outcome("rejected", ValidationError("serial", "looks contradicted by its own effects"))
    # A fact the index now holds was judged against state that already had it: contention.
    with pytest.raises(IntegrityError):
        check_rejections_not_raced(app.recorder, [unseen, stored], [Outcome("accepted"), rejected])
    # A rejection of a fact nobody stored stands.
    check_rejections_not_raced(app.recorder, [unseen, stored], [rejected, Outcome("duplicate")])


# -- survey answers synced late ---------------------------------------------------------------
def _late_survey_history() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Cases worked by e1 and later by e2 (another team), and surveys dated while e1 had them."""
    setup = basics("2025-12-01T00:00:00Z")
    cases = [
        rec("CaseOpened", "2026-01-04T00:00:00Z", case_id="k10", customer_id="c1", kind="complaint", severity="low", channel="phone"),
        rec("CaseAccepted", "2026-01-04T00:10:00Z", case_id="k10", employee_id="e1"),
        rec("CaseResolved", "2026-01-05T00:00:00Z", case_id="k10", employee_id="e1", resolution_code="fixed", first_contact=True),
        rec("CaseReopened", "2026-01-07T00:00:00Z", case_id="k10", reason="again"),
        rec("CaseAccepted", "2026-01-07T01:00:00Z", case_id="k10", employee_id="e3"),
        rec("CaseResolved", "2026-01-08T00:00:00Z", case_id="k10", employee_id="e3", resolution_code="fixed", first_contact=False),
        rec("CaseOpened", "2026-01-04T00:00:00Z", case_id="k11", customer_id="c1", kind="complaint", severity="low", channel="phone"),
        rec("CaseAccepted", "2026-01-04T00:10:00Z", case_id="k11", employee_id="e1"),
        rec("CaseEscalated", "2026-01-25T00:00:00Z", case_id="k11", employee_id="e1", level=2, to_employee_id="e3", reason="expert"),
        rec("CaseResolved", "2026-02-03T00:00:00Z", case_id="k11", employee_id="e3", resolution_code="fixed", first_contact=False),
    ]
    surveys = [
        rec("SurveyAnswered", "2026-01-06T00:00:00Z", customer_id="c1", case_id="k10", csat=5),
        rec("SurveyAnswered", "2026-01-20T00:00:00Z", customer_id="c1", case_id="k11", csat=1),
        rec("SurveyAnswered", "2026-01-30T00:00:00Z", customer_id="c1", case_id="k11", csat=3),
    ]
    return setup + cases, surveys


def _surveyed(app: LedgerApplication) -> list[tuple[str, str | None]]:
    return [(r["event_id"], r.get("employee_id")) for t, r in ledger_content(app) if t == "SurveyAnswered"]


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "aggregates"])
def test_a_survey_synced_in_a_later_run_rates_whoever_had_the_case_at_its_time(tmp_path: Path, bulk: bool) -> None:
    work, surveys = _late_survey_history()
    both = _write(tmp_path / "all.jsonl", work + surveys)
    one_run = _fresh(tmp_path, "one")
    _ingest_with(one_run, [both], bulk=bulk)
    split = _fresh(tmp_path, "split")
    _ingest_with(split, [_write(tmp_path / "work.jsonl", work)], bulk=bulk)
    _ingest_with(split, [_write(tmp_path / "surveys.jsonl", surveys)], bulk=bulk)
    # e1 had resolved k10 (its later resolver e3 came after the answer); e1 owned k11 on the
    # 20th, and e3 (escalated to on the 25th) owned it on the 30th.
    expected = [(surveys[0]["event_id"], "e1"), (surveys[1]["event_id"], "e1"), (surveys[2]["event_id"], "e3")]
    assert sorted(_surveyed(one_run)) == sorted(expected)
    assert sorted(_surveyed(split)) == sorted(expected)
    one_run.close()
    split.close()


def _ingest_with(app: LedgerApplication, paths: list[Path], *, bulk: bool) -> None:
    parser = RecordParser(app.registry)
    sink = RejectSink(None, echo=None)
    try:
        records = (record for path in paths for record in read_file(path, parser))
        summary = ingest_records(app, records, sink, batch_size=2000, bulk=bulk)
    finally:
        sink.close()
    assert summary.rejected == 0, summary


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "aggregates"])
def test_a_survey_dated_before_its_case_opened_is_refused_in_any_run(tmp_path: Path, bulk: bool) -> None:
    work, _ = _late_survey_history()
    early = rec("SurveyAnswered", "2026-01-03T23:00:00Z", customer_id="c1", case_id="k10", csat=4)
    one_run = _fresh(tmp_path, "one")
    split = _fresh(tmp_path, "split")
    try:
        rejects = tmp_path / "one.jsonl"
        summary = _ingest(one_run, _write(tmp_path / "all.jsonl", [*work, early]), rejects=rejects)
        assert summary.rejected == 1 and "unknown case 'k10'" in rejects.read_text()
        _ingest_with(split, [_write(tmp_path / "work.jsonl", work)], bulk=bulk)
        rejects = tmp_path / "split.jsonl"
        summary = _ingest(split, _write(tmp_path / "late.jsonl", [early]), rejects=rejects)
        assert summary.rejected == 1 and "is before case 'k10' was opened" in rejects.read_text()
        assert _surveyed(one_run) == _surveyed(split) == []
    finally:
        one_run.close()
        split.close()


def _ratings_at_the_instant_of_what_they_rate() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Facts and the ratings dated at their very instant: (facts, ratings)."""
    setup = basics("2025-12-01T00:00:00Z")
    escalated_at, recorded_at, joined_at = "2026-01-06T09:00:00Z", "2026-01-07T09:00:00Z", "2026-01-08T09:00:00Z"
    call = chat(recorded_at)
    facts = [
        rec("CaseOpened", "2026-01-04T00:00:00Z", case_id="k1", customer_id="c1", kind="complaint", severity="low", channel="phone"),
        rec("CaseAccepted", "2026-01-04T00:10:00Z", case_id="k1", employee_id="e1"),
        rec("CaseEscalated", escalated_at, case_id="k1", employee_id="e1", level=2, to_employee_id="e3", reason="expert"),
        call,
        rec("EmployeeJoined", joined_at, employee_id="e4", team_id="t2", role="agent"),
    ]
    ratings = [
        rec("SurveyAnswered", escalated_at, customer_id="c1", case_id="k1", csat=2),
        rec("SurveyAnswered", recorded_at, customer_id="c1", interaction_id=call["event_id"], csat=5),
        rec("ComplimentReceived", joined_at, customer_id="c1", employee_id="e4", channel="email"),
    ]
    return setup + facts, ratings


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "aggregates"])
def test_a_rating_at_the_instant_of_what_it_rates_is_judged_after_it_whatever_the_line_order(
    tmp_path: Path, bulk: bool
) -> None:
    facts, ratings = _ratings_at_the_instant_of_what_they_rate()
    contents = []
    for name, lines in [("facts-first", facts + ratings), ("ratings-first", ratings + facts)]:
        app = _fresh(tmp_path, name)
        _ingest_with(app, [_write(tmp_path / f"{name}.jsonl", lines)], bulk=bulk)  # no rejects
        contents.append(ledger_content(app))
        # The escalation made e3 the case's owner at the answer's instant; e1 took the call.
        assert sorted(_surveyed(app)) == sorted(
            [(ratings[0]["event_id"], "e3"), (ratings[1]["event_id"], "e1")]
        )
        app.close()
    assert contents[0] == contents[1]
    # A later run meets the same state: the facts' run first, the ratings' after it.
    split = _fresh(tmp_path, "split")
    _ingest_with(split, [_write(tmp_path / "facts.jsonl", facts)], bulk=bulk)
    _ingest_with(split, [_write(tmp_path / "ratings.jsonl", ratings)], bulk=bulk)
    assert sorted(_surveyed(split)) == sorted(_surveyed_of(contents[0]))
    split.close()


def _surveyed_of(content: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str | None]]:
    return [(r["event_id"], r.get("employee_id")) for t, r in content if t == "SurveyAnswered"]
