"""The CFPB JSON download: the same complaints give the same events as the CSV export."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from importers.cfpb import canonical_header, read_cfpb
from importers.cfpb_json import JSON_FIELDS
from ledger.ingest import SourceRecord
from ledger.records import RecordParser
from tests.helpers import run_cli

DATA = Path(__file__).parent.parent / "data"
CSV_EXPORTS = (DATA / "cfpb_current.csv", DATA / "cfpb_2014.csv")
_API_NAMES = {column: key for key, column in JSON_FIELDS.items()}


def _as_api_objects(export: Path) -> list[dict[str, Any]]:
    """The export's rows as the JSON download's objects (API field names, ISO timestamps)."""
    with export.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    objects = []
    for row in rows:
        item: dict[str, Any] = {
            _API_NAMES.get(canonical_header(column), column): value or None for column, value in row.items()
        }
        for key in ("date_received", "date_sent_to_company"):
            text = item.get(key) or ""
            if len(text) == 10 and text[4] == "-":
                item[key] = f"{text}T12:00:00-05:00"
        item["has_narrative"] = bool(item.get("complaint_what_happened"))
        objects.append(item)
    return objects


def _outcomes(records: list[SourceRecord]) -> list[tuple[Any, ...]]:
    """What an import would store or reject, without where each record came from."""
    return [
        (r.fact.event_type, r.fact.event_id, r.fact.occurred_at, r.fact.data)
        if r.fact is not None
        else ("rejected", r.error.field if r.error else None)
        for r in records
        if r.fact is not None or r.error is not None
    ]


@pytest.mark.parametrize("export", CSV_EXPORTS, ids=lambda p: p.name)
@pytest.mark.parametrize("layout", ["array", "indented", "lines", "zipped", "hits"])
@pytest.mark.parametrize("workers", [0, 2])
def test_the_json_download_gives_the_csv_exports_events(
    export: Path, layout: str, workers: int, parser: RecordParser, tmp_path: Path
) -> None:
    objects = _as_api_objects(export)
    if layout == "hits":  # the API's search results
        objects = [{"_index": "complaint-public", "_id": o["complaint_id"], "_source": o} for o in objects]
    if layout == "lines":
        path = tmp_path / "complaints.jsonl"
        path.write_text("".join(json.dumps(o) + "\n" for o in objects))
    else:
        text = json.dumps(objects, indent=2 if layout == "indented" else None)
        path = tmp_path / "complaints.json"
        path.write_text(text)
        if layout == "zipped":
            zipped = tmp_path / "complaints.json.zip"
            with zipfile.ZipFile(zipped, "w") as archive:
                archive.write(path, "complaints.json")
            path = zipped
    from_csv = list(read_cfpb(export, parser, workers=0))
    from_json = list(read_cfpb(path, parser, workers=workers))
    assert _outcomes(from_json) == _outcomes(from_csv)
    rejected = [r.location for r in from_json if r.error is not None]
    assert all(location.startswith("complaints.json") for location in rejected)


def _everything(records: list[SourceRecord]) -> list[tuple[Any, ...]]:
    return [
        (
            r.location,
            r.shown(),
            r.bytes_read,
            r.fact,
            None if r.error is None else (type(r.error), r.error.field, r.error.reason),
        )
        for r in records
    ]


def test_worker_processes_give_the_same_records_and_rejects(
    parser: RecordParser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("importers.cfpb_workers.CHUNK_ROWS", 3)
    good = _as_api_objects(CSV_EXPORTS[0])
    refused_first = {**good[0], "complaint_id": "900", "company": "NEW CO", "date_sent_to_company": "13/45/2020"}
    later = {**good[0], "complaint_id": "901", "company": "NEW CO"}
    texts = [
        json.dumps(refused_first),
        json.dumps(later),
        '{"complaint_id": "902", "company": ["A"], "date_received": "2020-01-01"}',
        '{"complaint_id": "903" "company": "A"}',
        "42",
        '"text"',
        json.dumps({"complaint_id": "904", "company": "B", "date_received": "2020-01-01", "x": "y" * 3000}),
        # Unknown keys are ignored whatever they hold.
        json.dumps({"complaint_id": "906", "company": "B", "date_received": "2020-01-01", "extra": {"a": [1]}}),
        r'{"complaint_id": "905", "company": "\u00e9\ud800", "date_received": "2020-01-01", "x": "\udfff"}',
        *map(json.dumps, good),
    ]
    path = tmp_path / "complaints.json"
    path.write_bytes(b"[" + b",\n".join(t.encode() for t in texts) + b"\xff]")
    one = list(read_cfpb(path, parser, max_record_bytes=2000, workers=0))
    two = list(read_cfpb(path, parser, max_record_bytes=2000, workers=2))
    assert _everything(two) == _everything(one)
    rejected = {r.location: r.error.field for r in one if r.error is not None}
    assert {k: rejected[k] for k in ("complaints.json[0]", "complaints.json[2]", "complaints.json[6]")} == {
        "complaints.json[0]": "Date sent to company",
        "complaints.json[2]": "company",
        "complaints.json[6]": "(record)",
    }
    assert rejected["complaints.json[8]"] == "company"  # an unpaired surrogate escape
    assert "complaints.json[7]" not in rejected
    # NEW CO's desk joins with its first complaint whose records are all valid.
    desks = [r.location for r in one if r.fact is not None and r.fact.event_type == "EmployeeJoined"]
    assert "complaints.json[1]" in desks


def test_cli_imports_the_json_download(tmp_path: Path) -> None:
    path = tmp_path / "complaints.json"
    path.write_text(json.dumps(_as_api_objects(CSV_EXPORTS[0])))
    env = {"CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    result = run_cli("import", "cfpb", str(path), "--rejects", str(tmp_path / "r.jsonl"), env=env)
    assert "accepted 28, duplicates skipped 0, rejected 2" in result.stderr + result.stdout
    assert "complaints.json[6]: field 'Date received'" in result.stderr
    not_cfpb = tmp_path / "other.json"
    not_cfpb.write_text('[{"type": "CaseOpened"}]')
    refused = run_cli("import", "cfpb", str(not_cfpb), env=env)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: field 'Complaint ID': other.json: the first item has no such field (is this a CFPB export?)"
    ]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_row_with_an_overlong_cell_is_refused_whole(workers: int, parser: RecordParser, tmp_path: Path) -> None:
    objects = _as_api_objects(CSV_EXPORTS[0])
    objects[2]["company"] = "A" * 200_000
    path = tmp_path / "complaints.json"
    path.write_text(json.dumps(objects))
    records = list(read_cfpb(path, parser, workers=workers))
    third = [r for r in records if r.location == "complaints.json[2]"]
    assert len(third) == 1 and third[0].fact is None and third[0].error is not None
    assert (third[0].error.field, third[0].error.reason) == ("Company", "longer than 2,000 characters")


def test_a_complaint_id_has_one_spelling_and_anything_else_is_refused(parser: RecordParser, tmp_path: Path) -> None:
    base = _as_api_objects(CSV_EXPORTS[0])[0]
    spellings: list[Any] = ["9000043", 9000043, 9000043.0, "09000043", "9000043.00"]
    hostile: list[Any] = ["abc/../x", "-1", "0x10", "１２３", 1e999, 10**400, "9000043.5", ""]
    path = tmp_path / "complaints.json"
    path.write_text(json.dumps([{**base, "complaint_id": c} for c in [*spellings, *hostile]]))
    records = list(read_cfpb(path, parser, workers=0))
    cases = {r.fact.data["case_id"] for r in records if r.fact is not None and r.fact.event_type == "CaseOpened"}
    assert cases == {"cfpb:9000043"}
    refused = {r.location: r.error.field for r in records if r.error is not None}
    expected = {f"complaints.json[{i}]" for i in range(len(spellings), len(spellings) + len(hostile))}
    assert set(refused) == expected
    # Infinity is refused as JSON already; every other one for its Complaint ID.
    assert sorted(refused.values()) == ["(record)", *["Complaint ID"] * (len(hostile) - 1)]


def test_dates_out_of_range_name_their_column(parser: RecordParser, tmp_path: Path) -> None:
    base = {"complaint_id": "1", "company": "A", "date_received": "2020-01-01"}
    items = [
        {**base, "date_received": "0001-01-01"},
        {**base, "complaint_id": "2", "date_sent_to_company": "0005-01-01"},
        {**base, "complaint_id": "3", "date_received": "9999-12-31T23:59:59"},
    ]
    path = tmp_path / "complaints.json"
    path.write_text(json.dumps(items))
    refused = [(r.location, r.error.field) for r in read_cfpb(path, parser) if r.error is not None]
    assert refused == [
        ("complaints.json[0]", "Date received"),
        ("complaints.json[1]", "Date sent to company"),
        ("complaints.json[2]", "Date received"),
    ]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_nul_character_in_a_cell_is_refused_by_its_column(workers: int, parser: RecordParser, tmp_path: Path) -> None:
    """Named by the CFPB column, not by the ledger field it would land in (the company becomes
    the desk's employee id, which the user never wrote)."""
    objects = _as_api_objects(CSV_EXPORTS[0])
    objects[1]["company"] = "Bank\u0000 of X"
    path = tmp_path / "complaints.json"
    path.write_text(json.dumps(objects))
    records = list(read_cfpb(path, parser, workers=workers))
    second = [r for r in records if r.location == "complaints.json[1]"]
    assert len(second) == 1 and second[0].fact is None and second[0].error is not None
    assert second[0].error.field == "Company" and "NUL character" in second[0].error.reason
    assert {r.location for r in records if r.error is None} >= {"complaints.json[0]", "complaints.json[2]"}


def test_a_date_written_as_a_timestamp_counts_by_its_date_in_either_download(
    parser: RecordParser, tmp_path: Path
) -> None:
    """The CSV export kept a timestamp's time (and refused one with a zone) while the JSON
    download counted it by its date: importing both downloads gave conflicts."""
    stamps = ["2019-09-24T12:00:00", "2019-09-24T12:00:00-05:00", "2019-09-24T23:30:00Z", "2019-09-24 12:00:00"]
    header = "Complaint ID,Date received,Company,Date sent to company,Company response to consumer"
    csv_path = tmp_path / "complaints.csv"
    csv_path.write_text(
        "\n".join([header, *(f"{n},{s},ACME,{s},Closed with explanation" for n, s in enumerate(stamps, 1))]) + "\n"
    )
    json_path = tmp_path / "complaints.json"
    json_path.write_text(
        json.dumps(
            [
                {"complaint_id": n, "date_received": s, "company": "ACME", "date_sent_to_company": s,
                 "company_response": "Closed with explanation"}
                for n, s in enumerate(stamps, 1)
            ]
        )
    )
    from_csv = _outcomes(list(read_cfpb(csv_path, parser, workers=0)))
    assert from_csv == _outcomes(list(read_cfpb(json_path, parser, workers=0)))
    day = 1_569_283_200_000  # 2019-09-24T00:00:00Z
    assert {outcome[2] for outcome in from_csv} - {0} == {day}  # the desk joins at the epoch
    bad = tmp_path / "bad.csv"
    bad.write_text(f"{header}\n9,2019-09-24T25:00:00,ACME,,\n")
    [refused] = [r for r in read_cfpb(bad, parser, workers=0) if r.error is not None]
    assert (refused.error.field, refused.error.reason) == ("Date received", "not a date: '2019-09-24T25:00:00'")


@pytest.mark.parametrize("workers", [0, 2])
def test_two_keys_for_one_field_refuse_the_item(workers: int, parser: RecordParser, tmp_path: Path) -> None:
    """`complaint_id` beside `Complaint ID` imported whichever came last, silently."""
    base = {"complaint_id": "21", "company": "ACME", "date_received": "2020-01-01"}
    path = tmp_path / "complaints.json"
    path.write_text(json.dumps([base, {**base, "Complaint ID": "22"}, {**base, "complaint_id": "23", "Company ": "B"}]))
    records = list(read_cfpb(path, parser, workers=workers))
    refused = [(r.location, r.error.field, r.error.reason) for r in records if r.error is not None]
    assert refused == [
        ("complaints.json[1]", "Complaint ID", "given twice, as 'complaint_id' and 'Complaint ID'"),
        ("complaints.json[2]", "Company", "given twice, as 'company' and 'Company '"),
    ]
    assert {r.location for r in records if r.fact is not None} == {"complaints.json[0]"}


@pytest.mark.parametrize("workers", [0, 2])
def test_text_that_is_not_imported_is_not_checked(workers: int, parser: RecordParser, tmp_path: Path) -> None:
    """An unpaired surrogate (an emoji cut in two) in a narrative or public response, which
    are not imported, refused the whole complaint; a NUL character there never did."""
    base = {"company": "ACME", "date_received": "2020-01-01"}
    items = [
        {**base, "complaint_id": "41", "complaint_what_happened": "cut emoji \ud83d"},
        {**base, "complaint_id": "42", "company_public_response": "\udc00"},
        {**base, "complaint_id": "43", "complaint_what_happened": {"text": "an object"}},
        {**base, "complaint_id": "44", "company": "ACME \ud800"},
    ]
    path = tmp_path / "complaints.json"
    path.write_text(json.dumps(items))  # ASCII escapes: "\ud83d" stays a lone surrogate
    records = list(read_cfpb(path, parser, workers=workers))
    refused = [(r.location, r.error.field, r.error.reason) for r in records if r.error is not None]
    assert refused == [("complaints.json[3]", "company", "is not valid Unicode text")]
    opened = sorted(r.fact.data["case_id"] for r in records if r.fact is not None and r.fact.event_type == "CaseOpened")
    assert opened == ["cfpb:41", "cfpb:42", "cfpb:43"]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_a_date_in_the_future_names_its_column(workers: int, suffix: str, registry: Any, tmp_path: Path) -> None:
    """The ledger's own check named `occurred_at`, a field the export has no column of, so
    the user could not tell which of the row's dates was wrong."""
    parser = RecordParser(registry, now_ms=1_700_000_000_000)  # 2023-11-14
    rows = [
        ("61", "2030-01-01", ""),
        ("62", "2020-01-01", "2030-01-02"),
        ("63", "01/02/68", ""),  # a two-digit year is read as 2068
        ("64", "2023-11-14", "2023-11-15"),  # within the day's tolerance
    ]
    path = tmp_path / f"complaints{suffix}"
    if suffix == ".csv":
        header = "Complaint ID,Date received,Date sent to company,Company,Company response to consumer"
        path.write_text("\n".join([header, *(f"{n},{r},{s},ACME,Closed" for n, r, s in rows)]) + "\n")
    else:
        keys = ("complaint_id", "date_received", "date_sent_to_company")
        path.write_text(json.dumps([{**dict(zip(keys, row, strict=True)), "company": "ACME", "company_response": "Closed"} for row in rows]))
    records = list(read_cfpb(path, parser, workers=workers))
    refused = [(r.error.field, r.error.reason.split(" (")[0]) for r in records if r.error is not None]
    assert refused == [
        ("Date received", "is in the future: '2030-01-01'"),
        ("Date sent to company", "is in the future: '2030-01-02'"),
        ("Date received", "is in the future: '01/02/68'"),
    ]
    assert {r.fact.data["case_id"] for r in records if r.fact is not None and r.fact.event_type == "CaseResolved"} == {"cfpb:64"}


@pytest.mark.parametrize("workers", [0, 2])
def test_blank_lines_before_the_header_are_skipped(workers: int, parser: RecordParser, tmp_path: Path) -> None:
    """Read as the header, a blank first line refused the whole export."""
    export = CSV_EXPORTS[0]
    path = tmp_path / "complaints.csv"
    path.write_bytes(b"\xef\xbb\xbf\r\n \r\n" + export.read_bytes())
    records = list(read_cfpb(path, parser, workers=workers))
    assert _outcomes(records) == _outcomes(list(read_cfpb(export, parser, workers=workers)))
    assert records[0].location == "complaints.csv:4"  # lines are the file's own
