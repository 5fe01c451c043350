"""Batches written while the next is decided (`ledger.write_behind`), by the writing thread
and by the writing process (`ledger.write_process`): every test runs with each.

The differential tests hold the overlapped writes to the eventsourcing path's ledger; these
tests cover what only happens around a batch in flight: another writer getting in the way
of its commit (the batch, and the one decided on top of it, are decided again on fresh
state), a store failure (raised, nothing half-written, and the run can simply be repeated),
a failure after the commit (raised, never decided again), and a customer forgotten by the
batch in flight. The writing process is forked here (in use it is a new interpreter) so that the
faults planted in the store's classes reach it; a thread sees them on the instances.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError

from crm_ledger.settings import Settings
from ledger import ingest, write_process
from ledger.application import LedgerApplication, decided_again_on_contention
from ledger.ingest import IngestSummary, RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from ledger.vault import FORGOTTEN, PersonalDataVault
from tests.factory import basics, rec
from tests.helpers import ledger_content


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _ingest(app: LedgerApplication, path: Path, rejects: Path, batch_size: int = 2) -> IngestSummary:
    sink = RejectSink(rejects, echo=None)
    try:
        return ingest_records(app, read_file(path, RecordParser(app.registry)), sink, batch_size=batch_size)
    finally:
        sink.close()


@pytest.fixture(params=["thread", "process"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where batches are written: the writing thread, or a writing process for every batch."""
    if request.param == "process":
        monkeypatch.setattr(ingest, "WRITE_PROCESS_RECORDS", 0)
        monkeypatch.setattr(write_process, "START_METHOD", "fork")
    return str(request.param)


def _before_first_write(
    app: LedgerApplication, writer: str, action: Callable[[], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run `action` when the next run's writer is about to write its first batch."""
    recorder = app.recorder
    insert = recorder.insert_events
    done: list[bool] = []

    def intercepted(*args: Any, **kwargs: Any) -> Any:
        if not done:
            done.append(True)
            action()
        if writer == "process":  # the class's own method, bound to the writing process's recorder
            return insert.__func__(*args, **kwargs)  # type: ignore[attr-defined]
        return insert(*args, **kwargs)

    if writer == "process":
        monkeypatch.setattr(type(recorder), "insert_events", intercepted)
    else:
        monkeypatch.setattr(recorder, "insert_events", intercepted)


def _history() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    opened = rec(
        "CaseOpened", "2026-01-05T10:00:00Z", case_id="k1", customer_id="c1", kind="complaint", channel="web"
    )
    later = [
        rec("CaseAccepted", "2026-01-05T11:00:00Z", case_id="k1", employee_id="e1"),
        rec("CaseResolved", "2026-01-05T12:00:00Z", case_id="k1", employee_id="e1", resolution_code="fixed"),
        rec("CaseClosed", "2026-01-06T12:00:00Z", case_id="k1", employee_id="e1"),
        rec("CaseReopened", "2026-01-07T12:00:00Z", case_id="k1", reason="closed cases stay closed"),
    ]
    return [opened, *later], opened


def test_a_batch_another_writer_got_in_the_way_of_is_decided_again_with_the_one_on_top(
    settings: Settings, app: LedgerApplication, tmp_path: Path, writer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ingest(app, _write(tmp_path / "setup.jsonl", basics()), tmp_path / "setup.rejects")
    records, opened = _history()

    def another_run() -> None:
        # Opened where the batch is written (a store connection never crosses a fork).
        other = LedgerApplication(settings.eventsourcing_env())
        other.record([RecordParser(other.registry).parse(opened)])
        other.close()

    # While the first batch (the case's opening) is in flight, another run saves the opening
    # first: its commit fails, and the case steps decided on top of it are void too.
    with monkeypatch.context() as patch:
        _before_first_write(app, writer, another_run, patch)
        summary = _ingest(app, _write(tmp_path / "run.jsonl", records), tmp_path / "run.rejects")

    sequential = LedgerApplication(Settings(store=str(tmp_path / "sequential.sqlite")).eventsourcing_env())
    _ingest(sequential, _write(tmp_path / "setup2.jsonl", basics()), tmp_path / "s.rejects", batch_size=50)
    sequential.record([RecordParser(sequential.registry).parse(opened)])
    expected = _ingest(sequential, tmp_path / "run.jsonl", tmp_path / "sequential.rejects")

    assert (summary.accepted, summary.duplicates, summary.rejected) == (3, 1, 1)
    assert summary == expected
    assert ledger_content(app)[-4:] == ledger_content(sequential)[-4:]
    assert len(ledger_content(app)) == len(ledger_content(sequential))
    assert (tmp_path / "run.rejects").read_text() == (tmp_path / "sequential.rejects").read_text()
    sequential.close()


def test_a_store_failure_in_flight_stops_the_run_and_a_rerun_completes_it(
    app: LedgerApplication, tmp_path: Path, writer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ingest(app, _write(tmp_path / "setup.jsonl", basics()), tmp_path / "setup.rejects")
    records, _ = _history()
    run = _write(tmp_path / "run.jsonl", records)
    before = len(ledger_content(app))

    def full() -> None:
        raise OperationalError("database or disk is full")

    with monkeypatch.context() as patch:
        _before_first_write(app, writer, full, patch)
        with pytest.raises(OperationalError, match="disk is full"):
            _ingest(app, run, tmp_path / "run.rejects")
    assert len(ledger_content(app)) == before  # nothing of the batch in flight, nor after it

    summary = _ingest(app, run, tmp_path / "rerun.rejects")
    assert (summary.accepted, summary.duplicates, summary.rejected) == (4, 0, 1)
    assert len(ledger_content(app)) == before + 4


def test_a_customer_forgotten_by_the_batch_in_flight_stays_forgotten_in_the_next(
    app: LedgerApplication, tmp_path: Path, writer: str
) -> None:
    records = [
        *basics(),
        rec("CustomerDetailsChanged", "2026-02-01T00:00:00Z", customer_id="c1", name="Bo", email="b@x.org"),
        rec("CustomerForgotten", "2026-02-02T00:00:00Z", customer_id="c1", reason="erasure"),
        # The next batch: decided while the forget above is being written.
        rec("CustomerDetailsChanged", "2026-02-03T00:00:00Z", customer_id="c1", name="Too Late"),
        rec("CustomerDetailsChanged", "2026-02-03T00:00:00Z", customer_id="c2", name="Cy"),
    ]
    run = _write(tmp_path / "run.jsonl", records)
    summary = _ingest(app, run, tmp_path / "run.rejects", batch_size=7)
    one_by_one = LedgerApplication(Settings(store=str(tmp_path / "aggregates.sqlite")).eventsourcing_env())
    sink = RejectSink(tmp_path / "aggregates.rejects", echo=None)
    parsed = read_file(run, RecordParser(one_by_one.registry))
    expected = ingest_records(one_by_one, parsed, sink, batch_size=7, bulk=False)
    sink.close()

    assert summary == expected
    assert ledger_content(app) == ledger_content(one_by_one)
    customers = [r for _, r in ledger_content(app) if "customer_id" in r and "name" in r]
    assert {r.get("name") for r in customers if r["customer_id"] == "c1"} <= {None, FORGOTTEN}
    assert "Cy" in {r.get("name") for r in customers if r["customer_id"] == "c2"}
    one_by_one.close()


def test_a_failure_after_a_batch_is_committed_is_raised_not_decided_again(
    app: LedgerApplication, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    records = [
        *basics(),
        rec("CustomerForgotten", "2026-02-02T00:00:00Z", customer_id="c1", reason="erasure"),
    ]
    run = _write(tmp_path / "run.jsonl", records)

    def locked(*_: Any) -> None:
        # Looks like contention, but the batch is already saved: deciding it again would
        # count its facts as duplicates of themselves.
        raise OperationalError("database is locked")

    with monkeypatch.context() as patch:
        patch.setattr(PersonalDataVault if writer == "process" else app.vault, "wipe_log", locked)
        with pytest.raises(OperationalError, match="locked"):
            _ingest(app, run, tmp_path / "run.rejects", batch_size=50)
    assert len(ledger_content(app)) == len(records)  # saved once
    summary = _ingest(app, run, tmp_path / "rerun.rejects", batch_size=50)
    assert (summary.accepted, summary.duplicates) == (0, len(records))


def test_a_first_import_that_repeats_a_fact_batches_later_counts_it_like_the_aggregate_path(
    app: LedgerApplication, tmp_path: Path, writer: str
) -> None:
    # Into an empty store the event-id index is not asked about each fact: a fact an earlier
    # batch saved is found by the index's unique key or by the rejections' check, and its
    # batch is decided again. Everything happens at one moment, so line order is batch order.
    at = "2026-01-10T10:00:00Z"
    registered = rec("CustomerRegistered", at, customer_id="c9", segment="smb", region="north", name="Cy")
    talk = rec("InteractionRecorded", at, customer_id="c9", channel="chat", direction="inbound")
    others = [
        rec("InteractionRecorded", at, customer_id="c9", channel="web", direction="inbound") for _ in range(9)
    ]
    records = [
        *basics("2026-01-01T00:00:00Z"),
        registered,
        talk,
        *others,
        registered,  # the same fact again: a duplicate (its rule alone would reject it)
        talk,  # the same fact again: a duplicate (its rule alone would accept it)
        {**talk, "channel": "phone"},  # the same id with other content: a conflict
        *others[:2],
    ]
    run = _write(tmp_path / "run.jsonl", records)
    summary = _ingest(app, run, tmp_path / "run.rejects", batch_size=3)
    aggregates = LedgerApplication(Settings(store=str(tmp_path / "aggregates.sqlite")).eventsourcing_env())
    sink = RejectSink(tmp_path / "aggregates.rejects", echo=None)
    expected = ingest_records(
        aggregates, read_file(run, RecordParser(aggregates.registry)), sink, batch_size=3, bulk=False
    )
    sink.close()

    assert (summary.accepted, summary.duplicates, summary.conflicts, summary.rejected) == (16, 4, 1, 0)
    assert summary == expected
    assert ledger_content(app) == ledger_content(aggregates)
    assert (tmp_path / "run.rejects").read_text() == (tmp_path / "aggregates.rejects").read_text()
    aggregates.close()


@pytest.mark.parametrize(
    ("message", "again"),
    [
        ("database is locked", True),
        ("pipeline aborted", True),  # PostgreSQL: an earlier statement of the insert lost a race
        ("could not serialize access due to concurrent update", True),
        ("database or disk is full", False),
        ("attempt to write a readonly database", False),
    ],
)
def test_a_batch_is_decided_again_only_when_another_writer_was_in_the_way(message: str, again: bool) -> None:
    attempts: list[int] = []
    forgotten: list[int] = []

    def attempt() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise OperationalError(message)
        return "written"

    if again:
        assert decided_again_on_contention(attempt, lambda: forgotten.append(1)) == "written"
        assert (len(attempts), len(forgotten)) == (2, 1)
    else:
        with pytest.raises(OperationalError, match=message):
            decided_again_on_contention(attempt, lambda: forgotten.append(1))
        assert (len(attempts), len(forgotten)) == (1, 0)
