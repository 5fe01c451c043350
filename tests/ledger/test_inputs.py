"""Compressed inputs read as they were downloaded: the same records as the plain file."""

from __future__ import annotations

import bz2
import gzip
import lzma
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from importers.cfpb import read_cfpb
from importers.generator import GeneratorConfig, write_history
from ledger.errors import ValidationError
from ledger.ingest import AnyRecord, read_file, read_jsonl
from ledger.inputs import data_suffix, input_size, open_input
from ledger.records import RecordParser
from schemas.registry import SchemaRegistry

DATA = Path(__file__).parent.parent / "data"
NOW_MS = 1_900_000_000_000


def _seen(given: AnyRecord) -> tuple[Any, ...]:
    record = given.as_source()
    error = None if record.error is None else (type(record.error), record.error.field, record.error.reason)
    fact = (
        None
        if record.fact is None
        else (record.fact.event_type, record.fact.event_id, dict(record.fact.data))
    )
    # The location without the file's name: `:line` or `[index]`.
    where = record.location[min(i for i in (record.location.find(":"), record.location.find("[")) if i >= 0) :]
    return (where, record.bytes_read, fact, error)


def _compressed(plain: Path, kind: str) -> Path:
    data = plain.read_bytes()
    if kind == "zip":
        path = plain.with_name(plain.name + ".zip")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("export/", b"")  # folders are not files
            archive.writestr(plain.name, data)
        return path
    compressors: dict[str, tuple[Callable[[bytes], bytes], str]] = {
        "gzip": (gzip.compress, ".gz"),
        "bzip2": (bz2.compress, ".bz2"),
        "xz": (lzma.compress, ".xz"),
    }
    opener, suffix = compressors[kind]
    path = plain.with_name(plain.name + suffix)
    path.write_bytes(opener(data))
    return path


@pytest.fixture
def history(tmp_path: Path) -> Path:
    path = tmp_path / "history.jsonl"
    with path.open("w") as handle:
        write_history(GeneratorConfig(customers=30, employees=4, months=2, seed=5, invalid_rate=0.05), handle)
    return path


@pytest.mark.parametrize("kind", ["zip", "gzip", "bzip2", "xz"])
def test_a_compressed_file_gives_the_records_of_the_plain_one(
    history: Path, registry: SchemaRegistry, kind: str
) -> None:
    parser = RecordParser(registry, now_ms=NOW_MS)
    packed = _compressed(history, kind)
    assert data_suffix(packed) == ".jsonl"
    assert input_size(packed) in (history.stat().st_size, None)
    plain = [_seen(r) for r in read_jsonl(history, parser, workers=0)]
    assert [_seen(r) for r in read_file(packed, parser)] == plain
    assert [_seen(r) for r in read_jsonl(packed, parser, workers=2)] == plain


@pytest.mark.parametrize("workers", [0, 2])
def test_a_zipped_cfpb_export_reads_like_the_csv(
    registry: SchemaRegistry, tmp_path: Path, workers: int
) -> None:
    plain = tmp_path / "complaints.csv"
    plain.write_bytes((DATA / "cfpb_current.csv").read_bytes())
    parser = RecordParser(registry, now_ms=NOW_MS)
    expected = [_seen(r) for r in read_cfpb(plain, parser, workers=0)]
    assert [_seen(r) for r in read_cfpb(_compressed(plain, "zip"), parser, workers=workers)] == expected


@pytest.mark.parametrize("workers", [0, 2])
def test_damaged_data_ends_the_file_with_one_reject(
    history: Path, registry: SchemaRegistry, tmp_path: Path, workers: int
) -> None:
    parser = RecordParser(registry, now_ms=NOW_MS)
    # Several MB, so that the damage falls after some records were read.
    big = tmp_path / "big.jsonl"
    big.write_bytes(history.read_bytes() * 40)
    packed = gzip.compress(big.read_bytes(), compresslevel=1)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    records = list(read_jsonl(cut, parser, workers=workers))
    *before, last = records
    assert last.error is not None and last.error.field == "(file)"
    assert "compressed data damaged" in last.error.reason
    plain = [_seen(r) for r in read_jsonl(big, parser, workers=0)]
    read = [_seen(r) for r in before]
    # Every record before the damage is read as in the whole file; the line the damage cut
    # short is not rejected by itself besides the damage.
    assert len(read) > 100
    assert read == plain[: len(read)]


@pytest.mark.parametrize("name", ["cut.csv.gz", "cut.json.gz"])
def test_damage_in_a_csv_or_a_json_array_is_one_reject(
    history: Path, registry: SchemaRegistry, tmp_path: Path, name: str
) -> None:
    parser = RecordParser(registry, now_ms=NOW_MS)
    lines = history.read_text().splitlines() * 20
    if name.startswith("cut.csv"):
        text = "type,event_id,occurred_at\n" + "".join(
            f"CustomerNoted,{i:032x},2025-01-01T00:00:00Z\n" for i in range(len(lines))
        )
    else:
        text = "[" + ",\n".join(lines) + "]"
    whole = tmp_path / name.removesuffix(".gz")
    whole.write_text(text)
    packed = gzip.compress(text.encode(), compresslevel=1)
    cut = tmp_path / name
    cut.write_bytes(packed[: len(packed) // 2])
    *before, last = list(read_file(cut, parser))
    assert last.error is not None and last.error.field == "(file)"
    assert "compressed data damaged" in last.error.reason
    # The records before the damage are the whole file's first ones: the item cut short is
    # not rejected by itself besides the damage.
    assert len(before) > 100
    assert [_seen(r) for r in before] == [_seen(r) for r in read_file(whole, parser)][: len(before)]


def test_an_archive_of_several_files_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.csv", "x\n")
        archive.writestr("b.csv", "y\n")
    with pytest.raises(ValidationError, match=r"two.zip: .*holds a.csv, b.csv"), open_input(path):
        pass
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValidationError, match="not a readable zip archive"), open_input(bad):
        pass


def test_a_cut_header_is_named_as_damage_not_as_a_missing_column(
    registry: SchemaRegistry, tmp_path: Path
) -> None:
    path = tmp_path / "tiny.csv.gz"
    path.write_bytes(gzip.compress((DATA / "cfpb_current.csv").read_bytes())[:60])
    with pytest.raises(ValidationError, match=r"tiny\.csv\.gz: compressed data damaged"):
        list(read_cfpb(path, RecordParser(registry, now_ms=NOW_MS), workers=0))


def test_the_gzip_size_is_the_decompressed_size(tmp_path: Path) -> None:
    path = tmp_path / "a.csv.gz"
    data = b"a,b\n" * 10_000
    path.write_bytes(gzip.compress(data))
    assert input_size(path) == len(data)
    assert data_suffix(path) == ".csv"
    plain = tmp_path / "a.csv"
    plain.write_bytes(data)
    assert input_size(plain) == len(data)


@pytest.mark.parametrize("kind", [None, "zip", "gzip"])
def test_the_bytes_counted_reach_the_size_with_a_byte_order_mark(
    history: Path, registry: SchemaRegistry, kind: str | None
) -> None:
    """The readers drop the mark before the first record: the total leaves it out, so the
    progress ends at 100%."""
    history.write_bytes(b"\xef\xbb\xbf" + history.read_bytes())
    path = history if kind is None else _compressed(history, kind)
    parser = RecordParser(registry, now_ms=NOW_MS)
    for workers in (0, 2):
        assert input_size(path) == sum(r.bytes_read for r in read_jsonl(path, parser, workers=workers))
    assert input_size(path) == history.stat().st_size - 3


def test_the_name_decides_never_the_first_bytes(registry: SchemaRegistry, tmp_path: Path) -> None:
    parser = RecordParser(registry, now_ms=NOW_MS)
    # Plain lines that begin like bzip2, zip and gzip data are plain lines (one reject each).
    plain = tmp_path / "odd.jsonl"
    plain.write_bytes(b"BZh\nPK\x03\x04\n\x1f\x8b\n")
    records = list(read_file(plain, parser))
    assert [r.location for r in records] == ["odd.jsonl:1", "odd.jsonl:2", "odd.jsonl:3"]
    assert all(r.error is not None and r.error.field != "(file)" for r in records)
    # A plain file named as gzip is one reject saying so, not a crash.
    misnamed = tmp_path / "plain.jsonl.gz"
    misnamed.write_bytes(b'{"type": "x"}\n')
    (only,) = list(read_file(misnamed, parser))
    assert only.error is not None and only.error.field == "(file)"
    assert "compressed data damaged after 0 bytes" in only.error.reason


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("name", ["h.jsonl", "h.csv", "h.jsonl.gz", "cfpb.csv"])
def test_utf16_and_utf32_text_is_refused_naming_the_encoding(
    parser: RecordParser, tmp_path: Path, encoding: str, name: str
) -> None:
    text = '{"type": "CustomerRegistered"}\n' if "jsonl" in name else "a,b\n1,2\n"
    mark = {"utf-16-be": "\ufeff"}.get(encoding, "")  # Python writes the mark itself for the others
    data = (mark + text).encode(encoding)
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    read = read_cfpb if name.startswith("cfpb") else read_file
    with pytest.raises(ValidationError, match=f"{name}: UTF-{encoding[4:6]} text; save it as UTF-8"):
        list(read(path, parser))


@pytest.mark.parametrize("name", ["h.jsonl", "h.csv", "h.csv.gz", "cfpb.csv"])
def test_classic_mac_line_endings_are_refused(parser: RecordParser, tmp_path: Path, name: str) -> None:
    """A file whose lines end with CR alone reads as one line: refused in one line instead."""
    text = '{"type": "CustomerRegistered"}\r{"type": "x"}\r' if "jsonl" in name else "a,b\r1,2\r3,4\r"
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    read = read_cfpb if name.startswith("cfpb") else read_file
    with pytest.raises(ValidationError, match=f"{name}: lines end with a carriage return alone"):
        list(read(path, parser))


def test_a_lone_trailing_carriage_return_is_not_classic_mac_text(parser: RecordParser, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_bytes(b'{"type": "x"}\r')
    (only,) = list(read_file(path, parser))
    assert only.error is not None and only.error.field != "(file)"


@pytest.mark.parametrize("workers", [0, 2])
def test_runs_of_blank_lines_are_one_record_each(
    history: Path, registry: SchemaRegistry, tmp_path: Path, workers: int
) -> None:
    """A run of blank lines is one record (millions of them, a few KB of gzip, cost minutes
    as a record each); the other records keep their locations, in both readers."""
    parser = RecordParser(registry, now_ms=NOW_MS)
    lines = history.read_bytes().splitlines(keepends=True)
    padded = tmp_path / "padded.jsonl.gz"
    padded.write_bytes(gzip.compress(b"\n" * 600_000 + b"".join(lines[:5]) + b" \t\n" * 200_000 + lines[5]))
    records = list(read_jsonl(padded, parser, workers=workers))
    blank = [r for r in records if r.as_source().fact is None and r.error is None]
    assert [r.location for r in blank] == ["padded.jsonl.gz:1", "padded.jsonl.gz:600006"]
    assert [r.bytes_read for r in blank] == [600_000, 600_000]
    assert [r.location for r in records if r not in blank] == [
        *(f"padded.jsonl.gz:{n}" for n in range(600_001, 600_006)),
        "padded.jsonl.gz:800006",
    ]
