"""The CFPB JSON download: the same complaints give the same events as the CSV export."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import importers.json_items as json_items_module
from importers.cfpb import canonical_header, read_cfpb
from importers.cfpb_json import JSON_FIELDS
from importers.json_items import json_items
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


def _items(data: bytes, limit: int = 10_000) -> list[Any]:
    return list(json_items("f.json", io.BytesIO(data), limit))


def test_items_are_found_across_chunk_boundaries_and_inside_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_items_module, "CHUNK_BYTES", 2)
    tricky = {"a": 'quote " and ] } [ { brackets', "b": "back\\slash\\", "c": [1, {"d": "\u00e9"}]}
    data = b"\xef\xbb\xbf " + json.dumps([tricky, 7, "s", tricky]).encode() + b"\n"
    items = _items(data)
    assert [i.location for i in items] == ["f.json[0]", "f.json[1]", "f.json[2]", "f.json[3]"]
    assert [json.loads(i.text) for i in items] == [tricky, 7, "s", tricky]


def test_json_lines_are_located_by_line_and_a_large_item_is_skipped_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(json_items_module, "CHUNK_BYTES", 16)
    big = json.dumps({"x": "y" * 200, "z": "multi\nline"}, indent=1)
    data = f'{{"n": 1}}\n\n{big}\n{{"n": 2}}\n'.encode()
    items = _items(data, limit=100)
    assert [(i.location, i.text is None) for i in items] == [("f.json:1", False), ("f.json:3", True), ("f.json:7", False)]
    assert items[1].error is not None and "larger than 100 bytes" in items[1].error.reason
    assert json.loads(items[2].text) == {"n": 2}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'[{"a": 1}, {"a": ', "ends inside this item"),
        (b'[{"a": 1}, {"a": 2}', "before the array is closed"),
        (b'[{"a": 1}] {"a": 2}', "text after the array"),
        (b'[{"a": 1}, "unterminated', "ends inside this item"),
    ],
)
def test_a_broken_structure_keeps_what_came_before(data: bytes, reason: str) -> None:
    *good, broken = _items(data)
    assert [json.loads(i.text) for i in good] in ([{"a": 1}], [{"a": 1}, {"a": 2}])
    assert broken.text is None and broken.error is not None and reason in broken.error.reason


def test_an_empty_file_has_no_items() -> None:
    assert _items(b"") == [] and _items(b" \n") == [] and _items(b"[]") == []


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(_VALUES, max_size=8),
    indent=st.sampled_from([None, 0, 2]),
    lines=st.booleans(),
    chunk=st.integers(min_value=1, max_value=64),
)
def test_any_json_values_come_back_as_they_were(values: list[Any], indent: int | None, lines: bool, chunk: int) -> None:
    if lines:  # JSON lines of objects (a file that starts with "[" is an array)
        values = [{"v": v} for v in values]
        data = "".join(json.dumps(v) + "\n" for v in values).encode()
    else:
        data = json.dumps(values, indent=indent).encode()
    original = json_items_module.CHUNK_BYTES
    json_items_module.CHUNK_BYTES = chunk
    try:
        items = _items(data, limit=1 << 20)
    finally:
        json_items_module.CHUNK_BYTES = original
    assert [json.loads(i.text) for i in items] == values
    if lines:
        assert [i.location for i in items] == [f"f.json:{n}" for n in range(1, len(values) + 1)]


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


def test_a_huge_item_is_skipped_in_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_items_module, "CHUNK_BYTES", 1 << 16)
    largest = 0
    more = json_items_module._Buffer.more

    def watched(buffer: Any) -> bool:
        nonlocal largest
        largest = max(largest, len(buffer.data))
        return bool(more(buffer))

    monkeypatch.setattr(json_items_module._Buffer, "more", watched)
    huge_string = b'{"a": "' + b"x\\\"" * 2_000_000 + b'"}'
    huge_bare = b"7" * 6_000_000
    data = b"[" + huge_string + b", " + huge_bare + b"," + b" " * 5_000_000 + b'{"n": 1}]'
    items = _items(data, limit=1000)
    assert [(i.location, i.size, i.text) for i in items] == [
        ("f.json[0]", len(huge_string), None),
        ("f.json[1]", len(huge_bare), None),
        ("f.json[2]", 8, b'{"n": 1}'),
    ]
    assert largest < 3 * (1 << 16)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), chunk=st.integers(min_value=1, max_value=16))
def test_any_bytes_give_items_or_rejects_never_a_crash(data: bytes, chunk: int) -> None:
    original = json_items_module.CHUNK_BYTES
    json_items_module.CHUNK_BYTES = chunk
    try:
        items = _items(data, limit=50)
    finally:
        json_items_module.CHUNK_BYTES = original
    assert all((i.text is None) == (i.error is not None) for i in items)
    assert sum(i.size for i in items) <= len(data)
