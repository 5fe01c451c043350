"""Differential test: a CFPB export mapped in worker processes gives what one process gives.

The shipped samples and a file of hostile rows (an unclosed quote, invalid UTF-8, too many
cells, blank rows, missing and unparseable cells, a date past 2199 on a company's first row,
after which its desk joins with the company's first valid row) are read by `read_cfpb` in the
main process and by worker processes in tiny chunks: the same records (location, fields,
error, bytes read, rejects text) come out, and ingesting them stores the same events (byte
for byte apart from `recorded_at`), with the same rejects and summary, on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from crm_ledger.settings import Settings
from importers import cfpb_workers
from importers.cfpb import read_cfpb
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, SourceRecord, ingest_records
from ledger.records import RecordParser
from tests.postgres_server import create_database

DATA = Path(__file__).parent.parent / "data"
NOW_MS = 1_900_000_000_000
HEADER = (
    "Date received,Product,Sub-product,Issue,Sub-issue,Consumer complaint narrative,"
    "Company public response,Company,State,ZIP code,Tags,Consumer consent provided?,"
    "Submitted via,Date sent to company,Company response to consumer,Timely response?,"
    "Consumer disputed?,Complaint ID"
)


def _row(
    complaint: str, company: str, received: str = "2023-05-01", sent: str = "2023-05-02", **extra: str
) -> str:
    cells = {
        "received": received,
        "product": "Mortgage",
        "issue": "Payments",
        "company": company,
        "state": "CA",
        "via": "Phone",
        "sent": sent,
        "response": "Closed with explanation",
        "timely": "Yes",
        "disputed": "Yes",
        **extra,
    }
    return (
        f"{cells['received']},{cells['product']},,{cells['issue']},,,,{cells['company']},{cells['state']},,,,"
        f"{cells['via']},{cells['sent']},{cells['response']},{cells['timely']},{cells['disputed']},{complaint}"
    )


def _hostile(path: Path) -> Path:
    lines = [
        HEADER,
        _row("900001", "Acme Bank"),
        _row("900002", "Acme Bank", response="In progress"),
        _row("900003", "Far Future Bank", received="2999-01-01", sent="2999-01-02"),
        _row("900004", "Far Future Bank"),  # the company's first valid row: its desk joins here
        "",
        ",,,,,,,,,,,,,,,,,",
        _row("", "Acme Bank"),
        _row("900005", "Acme Bank", received="yesterday"),
        _row("900006", "", sent=""),
        _row("900007", "Acme Bank") + ",one too many",
        _row("900008", "Beta Credit", sent="not a date"),
        _row("900009", "Beta Credit", sent="", via="Carrier pigeon"),
        _row("900010", "Gamma Loans", received="05/01/2013", sent="05/03/2013", disputed="No"),
        _row("900011", "Gamma Loans", received="2031-12-01", sent="2031-12-02"),  # past the future tolerance
        _row("900012", '"Delta, ""Quoted"" Inc."', response="Closed with monetary relief"),
        _row("900013", "Acme Bank", state="\xe9t\xe9"),
    ]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    bad_utf8 = _row("900014", "Acme Bank").encode("utf-8").replace(b"Mortgage", b"Mort\xffgage")
    unclosed = _row("900015", '"Never closed Bank').encode("utf-8")
    path.write_bytes(
        data + bad_utf8 + b"\n" + _row("900016", "Epsilon").encode("utf-8") + b"\n" + unclosed + b"\n"
    )
    return path


def _seen(record: SourceRecord) -> tuple[Any, ...]:
    fact = record.fact
    error = record.error
    return (
        record.location,
        record.bytes_read,
        record.shown(),
        None if fact is None else (fact.event_type, fact.event_id, fact.occurred_at, dict(fact.data)),
        None if error is None else (type(error), error.field, error.reason),
    )


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return [DATA / "cfpb_current.csv", DATA / "cfpb_2014.csv", _hostile(tmp_path / "hostile.csv")]


def test_workers_read_the_same_records(
    files: list[Path], registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cfpb_workers, "CHUNK_ROWS", 3)  # companies' first rows across chunks
    parser = RecordParser(registry, now_ms=NOW_MS)
    for path in files:
        alone = [_seen(r) for r in read_cfpb(path, parser, workers=0)]
        pooled = list(read_cfpb(path, parser, workers=2))
        assert [_seen(r) for r in pooled] == alone, path.name
        assert any(r.prepared is not None and r.prepared[0] is not None for r in pooled)
    hostile = [_seen(r) for r in read_cfpb(files[2], parser, workers=0)]
    assert sum(1 for r in hostile if r[4] is not None) >= 9
    # A refused first row joins no desk: the company's next valid row brings it.
    far_future = [r[3][0] for r in hostile if r[3] is not None and r[3][3].get("team_id") == "Far Future Bank"]
    assert far_future[:2] == ["EmployeeJoined", "CaseOpened"]


def test_workers_refuse_a_file_without_the_columns(tmp_path: Path, registry: Any) -> None:
    path = tmp_path / "not-cfpb.csv"
    path.write_text("a,b\n1,2\n")
    parser = RecordParser(registry, now_ms=NOW_MS)
    with pytest.raises(Exception, match="Complaint ID"):
        list(read_cfpb(path, parser, workers=2))


def _ingested(
    app: LedgerApplication, parser: RecordParser, files: list[Path], workers: int, rejects: Path
) -> Any:
    sink = RejectSink(rejects, echo=None)
    try:
        summaries = [
            ingest_records(app, read_cfpb(path, parser, workers=workers), sink, batch_size=5).line()
            for path in files
        ]
    finally:
        sink.close()
    stored = []
    for notification in app.read_notifications(1, 1_000_000):
        event_type, record = app.codec.decode(notification.state)
        record["recorded_at"] = 0
        stored.append(
            (notification.originator_version, notification.topic, app.codec.encode(event_type, record))
        )
    return summaries, stored, rejects.read_text()


def test_workers_store_the_same_ledger(
    app: LedgerApplication,
    files: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setattr(cfpb_workers, "CHUNK_ROWS", 4)
    parser = RecordParser(app.registry, now_ms=NOW_MS)
    pooled = _ingested(app, parser, files, 2, tmp_path / "pooled.rejects")
    other = LedgerApplication(_fresh_settings(tmp_path, request).eventsourcing_env())
    try:
        alone = _ingested(other, parser, files, 0, tmp_path / "alone.rejects")
    finally:
        other.close()
    assert pooled == alone
    summaries, stored, rejects = pooled
    assert len(stored) > 40 and "rejected 0" not in summaries[2] and "Far Future Bank" in rejects


def _fresh_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    store = str(tmp_path / "alone.sqlite")
    if request.getfixturevalue("store_kind") == "postgres":
        store = create_database(
            request.getfixturevalue("postgres_server"), f"cfpb_alone_{uuid.uuid4().hex[:8]}"
        )
    return Settings(store=store)
