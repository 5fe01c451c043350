"""Bulk ingest: exact counts, idempotency, CSV, rejects, and kill-and-resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from crm_ledger.settings import Settings
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from tests.factory import basics, chat, rec
from tests.helpers import kill_hard, ledger_content, run_cli, start_cli, stored_rows, wait_for


def write_jsonl(path: Path, records: list[dict[str, Any]], extra_lines: list[str] = ()) -> Path:  # type: ignore[assignment]
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def ingest(
    app: LedgerApplication,
    parser: RecordParser,
    path: Path,
    rejects: Path | None = None,
    batch_size: int = 3,
) -> Any:
    sink = RejectSink(rejects, echo=None)
    try:
        return ingest_records(app, read_file(path, parser), sink, batch_size=batch_size)
    finally:
        sink.close()


def test_mixed_file_exact_counts(app: LedgerApplication, parser: RecordParser, tmp_path: Path) -> None:
    good = [
        *basics(),
        chat(),
    ]
    duplicate = dict(good[-1])
    bad = [
        rec("SurveyAnswered", customer_id="c1", case_id="k", csat=9),
        rec("InteractionRecorded", customer_id="ghost", channel="chat", direction="inbound"),
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", [*good, duplicate, *bad], ["{not json", "[1, 2]", ""])
    rejects = tmp_path / "rejects.jsonl"
    summary = ingest(app, parser, path, rejects)
    assert (summary.accepted, summary.duplicates, summary.rejected) == (6, 1, 4)
    entries = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert {e["field"] for e in entries} == {"csat", "customer_id", "(record)"}
    assert all(e["record"].startswith("mixed.jsonl:") and "raw" in e for e in entries)
    assert [e["record"] for e in entries if e["field"] == "csat"] == ["mixed.jsonl:8"]
    assert app.max_position() == 6


def test_reimport_and_overlap_are_idempotent(
    app: LedgerApplication, parser: RecordParser, tmp_path: Path
) -> None:
    records = [
        *basics(),
        *[
            rec(
                "InteractionRecorded",
                customer_id="c2",
                employee_id="e2",
                channel="web",
                direction="outbound",
            )
            for _ in range(7)
        ],
    ]
    first = write_jsonl(tmp_path / "a.jsonl", records[:8])
    overlap = write_jsonl(tmp_path / "b.jsonl", records[4:])
    assert ingest(app, parser, first).accepted == 8
    again = ingest(app, parser, first)
    assert (again.accepted, again.duplicates) == (0, 8)
    overlapping = ingest(app, parser, overlap)
    assert (overlapping.accepted, overlapping.duplicates) == (4, 4)
    assert app.max_position() == 12


def test_csv_input(app: LedgerApplication, parser: RecordParser, tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    rows = [
        *basics(),
        rec(
            "CaseOpened",
            case_id="k1",
            customer_id="c1",
            kind="complaint",
            channel="email",
            summary="late, again",
        ),
    ]
    columns = sorted({k for r in rows for k in r})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        handle.write("SurveyAnswered,,,,,,,,,,,,,,\n")
    summary = ingest(app, parser, path)
    assert (summary.accepted, summary.rejected) == (6, 1)
    _, opened = ledger_content(app)[-1]
    assert opened["summary"] == "late, again"


def test_a_json_array_gives_the_events_of_the_same_records_as_json_lines(
    parser: RecordParser, tmp_path: Path
) -> None:
    lines = tmp_path / "h.jsonl"
    with lines.open("w") as handle:
        write_history(GeneratorConfig(customers=40, employees=6, months=1, seed=5), handle)
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    array = tmp_path / "h.json"
    array.write_text(json.dumps([*records[:3], 7, {"type": "Nope"}, *records[3:]], indent=1))
    contents, rejected = [], []
    for path in (lines, array):
        app = LedgerApplication(Settings(store=str(tmp_path / f"{path.suffix[1:]}.sqlite")).eventsourcing_env())
        rejects = tmp_path / f"{path.suffix[1:]}-rejects.jsonl"
        summary = ingest(app, parser, path, rejects=rejects, batch_size=50)
        contents.append(ledger_content(app))
        rejected.append([(e["record"], e["field"]) for e in map(json.loads, rejects.read_text().splitlines())] if rejects.exists() else [])
        assert summary.accepted == len(records)
        app.close()
    assert contents[0] == contents[1]
    assert rejected == [[], [("h.json[3]", "(record)"), ("h.json[4]", "type")]]


def test_generated_history_lands_completely(
    app: LedgerApplication, parser: RecordParser, tmp_path: Path
) -> None:
    path = tmp_path / "h.jsonl"
    with path.open("w") as handle:
        written = write_history(GeneratorConfig(customers=120, employees=10, months=2, seed=3), handle)
    summary = ingest(app, parser, path, batch_size=500)
    assert summary.rejected == 0
    assert summary.accepted == written


@pytest.mark.slow
def test_kill_and_resume_import_equals_uninterrupted(tmp_path: Path, parser: RecordParser) -> None:
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(
            GeneratorConfig(customers=3000, employees=30, months=3, seed=11, invalid_rate=0.002),
            handle,
        )
    killed_store = tmp_path / "killed.sqlite"
    env = {"CRM_LEDGER_STORE": str(killed_store), "CRM_LEDGER_DB": str(tmp_path / "k.duckdb")}
    process = start_cli("ingest", "--batch-size", "500", str(history), env=env)
    wait_for(lambda: stored_rows(killed_store) >= 2000, what="some committed batches")
    kill_hard(process)
    partial = stored_rows(killed_store)
    resumed = run_cli("ingest", "--batch-size", "500", str(history), env=env)
    assert resumed.returncode == 1, resumed.stderr  # the deliberately invalid records
    assert "duplicates skipped" in resumed.stdout

    whole = Settings(store=str(tmp_path / "whole.sqlite"))
    uninterrupted = LedgerApplication(whole.eventsourcing_env())
    ingest(uninterrupted, parser, history, batch_size=500)
    killed = LedgerApplication(Settings(store=str(killed_store)).eventsourcing_env())
    assert 0 < partial < uninterrupted.max_position()
    assert ledger_content(killed) == ledger_content(uninterrupted)


def test_hostile_input_is_rejected_never_crashes(
    app: LedgerApplication, parser: RecordParser, tmp_path: Path
) -> None:
    good = basics()
    bad = [
        rec(
            "InteractionRecorded",
            "99999999999999999999",
            customer_id="c1",
            channel="chat",
            direction="inbound",
        ),
        rec("InteractionRecorded", customer_id="c1", channel="chat", direction="inbound", duration_s=2**40),
        rec(
            "InteractionRecorded", customer_id="c1", channel="chat", direction="inbound", topic={"nested": 1}
        ),
        rec(
            "InteractionRecorded",
            "1850-01-01T00:00:00Z",
            customer_id="c1",
            channel="chat",
            direction="inbound",
        ),
    ]
    lines = [json.dumps(r) for r in [*good, *bad]] + ['{"type": "InteractionRecorded", "topic": "\\ud800"}']
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(lines) + "\n")
    summary = ingest(app, parser, path)
    assert (summary.accepted, summary.rejected) == (5, 5)
    csv_path = tmp_path / "nul.csv"
    csv_path.write_bytes(
        b"type,event_id,occurred_at,customer_id,segment,region\n"
        b"CustomerRegistered,00000000-0000-4000-8000-0000000000aa,2026-01-01,c7,smb,x\x00y\n"
        b"CustomerRegistered,00000000-0000-4000-8000-0000000000ab,2026-01-01,c8,smb,north\n"
    )
    # Python's csv reads NUL bytes as text; the record holding one is refused on every store
    # (PostgreSQL's text cannot hold it), and the other lands.
    summary = ingest(app, parser, csv_path)
    assert (summary.accepted, summary.rejected) == (1, 1)


def test_the_rejects_file_cannot_be_an_input_and_a_device_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "v.jsonl", [], ['{"a": 1}'])
    env = {"CRM_LEDGER_STORE": str(tmp_path / "l.sqlite")}
    same = run_cli("ingest", str(path), "--rejects", str(path), env=env)
    assert same.returncode == 1
    assert same.stderr.strip().splitlines() == [f"error: {path}: the rejects file is one of the input files; name another"]
    assert path.read_text() == '{"a": 1}\n'
    device = run_cli("ingest", "/dev/null", env=env)
    assert device.returncode == 1 and "not a regular file" in device.stderr


def test_a_csv_header_naming_a_column_twice_refuses_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text(
        "type,event_id,occurred_at,customer_id,segment,region,segment\n"
        "CustomerRegistered,6f1c2b1e-0000-4000-8000-000000000009,2024-01-01T00:00:00Z,c9,smb,eu,ent\n"
    )
    result = run_cli("ingest", str(path), env={"CRM_LEDGER_STORE": str(tmp_path / "l.sqlite")})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: field 'segment': dup.csv: column named twice in the header"]


class _Bar:
    """A reporter that keeps what it was told."""

    def __init__(self) -> None:
        self.advanced = 0.0
        self.completed = False

    def advance(self, done: float, *, events: int = 0, note: str = "") -> None:
        self.advanced += done

    def total(self, total: float | None) -> None:
        return None

    def complete(self) -> None:
        self.completed = True


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_the_progress_is_complete_once_every_record_is_read(
    app: LedgerApplication, parser: RecordParser, tmp_path: Path, suffix: str
) -> None:
    """A CSV header's bytes, or a JSON array's brackets, belong to no record: the bar is
    told it is complete once the last record is read, not left short of its total."""
    rows = basics()
    path = tmp_path / f"events{suffix}"
    if suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=sorted({k for r in rows for k in r}))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text(json.dumps(rows))
    bar = _Bar()
    ingest_records(app, read_file(path, parser), RejectSink(None, echo=None), reporter=bar)
    assert bar.advanced < path.stat().st_size
    assert bar.completed
