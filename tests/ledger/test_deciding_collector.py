"""The collector while an import decides (`crm_ledger.collector.DecidingCollector`): off,
scheduled, restored, and deciding leaves no cycles for it to find."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

from crm_ledger.collector import DecidingCollector
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from tests.factory import basics, rec


def test_collections_are_off_while_deciding_and_run_on_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    collected: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: collected.append(generation) or 0)
    assert gc.isenabled()
    collector = DecidingCollector(every=10)
    collector.start()
    collector.start()  # idempotent: still restores to enabled
    assert not gc.isenabled()
    collector.decided(6)
    assert collected == []
    collector.decided(6)
    assert collected == [1]
    collector.decided(9)
    assert collected == [1]
    collector.stop()
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled() -> None:
    gc.disable()
    try:
        collector = DecidingCollector()
        collector.start()
        collector.stop()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_an_import_restores_the_collector_and_leaves_no_cycles(
    app: LedgerApplication, parser: RecordParser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rejected facts among accepted ones, batches of 3: after the run nothing is left for the
    collector (a reject's traceback used to tie its batch into a cycle)."""
    monkeypatch.setattr("crm_ledger.collector.COLLECT_EVERY", 10**9)
    records = [
        *basics(),
        rec("SurveyAnswered", "2026-01-09T00:00:00Z", customer_id="c1", case_id="nope", csat=4),
        rec("CaseAccepted", "2026-01-09T00:00:00Z", case_id="missing", employee_id="e1"),
    ]
    path = tmp_path / "run.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    gc.collect()
    gc.disable()  # nothing collected behind the test's back
    try:
        sink = RejectSink(None, echo=None)
        summary = ingest_records(app, read_file(path, parser), sink, batch_size=3)
        assert summary.rejected == 2
        assert not gc.isenabled()  # as it was before the run
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kinds = {type(o).__name__ for o in gc.garbage}
        assert not kinds & {"frame", "Fact", "Outcome", "BulkUnitOfWork"}, kinds
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
