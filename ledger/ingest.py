"""Bulk ingest of JSONL and CSV files: streaming, batched, idempotent, with a rejects file.

Each batch is one store transaction, and every fact is keyed by its event id, so a run
that is killed and started again ends with exactly the ledger of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeGuard

from crm_ledger.collector import DecidingCollector, fewer_collections
from crm_ledger.errors import CrmLedgerError
from crm_ledger.progress import Reporter, SilentReporter
from ledger.application import LedgerApplication, Outcome
from ledger.bulk import BulkWriter
from ledger.domain import EVENT_OWNERS
from ledger.errors import ValidationError
from ledger.inputs import (
    UTF8_BOM,
    data_suffix,
    input_damage,
    input_size,
    open_input,
    readable_start,
)
from ledger.json_items import json_items
from ledger.ordering import in_time_order, order_key
from ledger.plain_bytes import from_bytes
from ledger.prepared import Prepared
from ledger.records import Fact, RecordParser, is_unicode_text
from ledger.vault import PERSONAL_FIELDS

EVENT_TYPES = frozenset(EVENT_OWNERS)

#: Records per store transaction. At 1M events each commit writes (and syncs) the pages of
#: two random-key indexes that a batch touches, about one page per event: fewer, larger
#: batches write each page fewer times (measured at 1M: the writing thread's CPU 29 s at
#: 10,000, 21 s at 25,000, 15 s at 50,000), for more memory (peak 601, 760, 962 MB).
DEFAULT_BATCH_SIZE = 25_000
#: The largest record accepted, in bytes of input and of the encoded event: every accepted
#: event must fit in one Kafka message (the broker's default limit is ~1 MB), or the relay
#: could never send it.
DEFAULT_MAX_RECORD_BYTES = 512 * 1024
#: Nesting deeper than this is no ledger record (and could exhaust the parser's stack).
MAX_JSON_DEPTH = 32
#: Files from this size on are parsed in worker processes (below, starting them costs more).
PARALLEL_PARSE_BYTES = 8 << 20
#: Valid records sorted in memory at a time; larger runs spill sorted runs to disk.
SORT_RUN_SIZE = 200_000
#: A run that has read this many records starts the writing process (`ledger.write_process`,
#: `BulkWriter.expect_large_run`) while it reads on; a smaller run's batches are written by
#: the writing thread (starting a process costs ~1 s of CPU).
WRITE_PROCESS_RECORDS = 10_000
_csv_limit_raised = False


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One input record with where it came from, parsed or with the reason it was not.

    `raw` is what the rejects file shows: the input with customers' personal fields redacted.
    A record that parsed keeps its input mapping in `source` instead and is redacted only if
    the ledger refuses it (`shown`): most records are accepted and never shown.
    """

    location: str
    raw: str | None
    fact: Fact | None
    error: ValidationError | None
    bytes_read: int
    source: Mapping[str, Any] | None = None
    #: The JSON line of an accepted record parsed elsewhere (`ledger.parse_workers`).
    line: bytes | None = None
    #: The fact's message prepared where it was parsed (`ledger.prepared`), if it was.
    prepared: Prepared | None = None

    def shown(self) -> str | None:
        """The input as the rejects file shows it (personal fields redacted)."""
        if self.source is not None:
            return redacted_json(self.source)
        if self.line is not None:
            return _shown_line(self.line)
        return self.raw

    @property
    def sort_time(self) -> int | None:
        """Where the fact goes in its run (`ordering.order_key`; None for rejects)."""
        fact = self.fact
        return order_key(fact.event_type, fact.occurred_at) if fact is not None else None

    def as_source(self) -> SourceRecord:
        """This record (see `PendingRecord.as_source`)."""
        return self

    def packed(self) -> tuple[Any, ...]:
        """A parsed record as a plain tuple, cheap to spill to disk while sorting (`unpacked`)."""
        fact = self.fact
        assert fact is not None
        return (
            self.location,
            self.bytes_read,
            self.source,
            self.line,
            self.prepared,
            fact.event_type,
            fact.event_id,
            fact.occurred_at,
            fact.data,
        )

    @staticmethod
    def unpacked(packed: tuple[Any, ...]) -> SourceRecord:
        """The record `packed` was made from."""
        location, size, source, line, prepared, event_type, event_id, occurred_at, data = packed
        fact = Fact(event_type, event_id, occurred_at, data)
        return SourceRecord(location, None, fact, None, size, source, line, prepared)


class PendingRecord:
    """A valid record parsed in a worker process, its fact still in the worker's packed form.

    The main process sorts every record of a run, and spills most of them to disk, before it
    judges them: kept as the worker's bytes until then, a record costs the main process no
    dict, `Fact` or `SourceRecord` to unpack, build, spill, read back and build again.
    `as_fact` gives the fact when it is judged; `as_source` the `SourceRecord` it stands for.
    """

    __slots__ = ("blob", "bytes_read", "line", "location", "sort_time")
    error: None = None

    def __init__(self, location: str, bytes_read: int, line: bytes, sort_time: int, blob: bytes) -> None:
        self.location = location
        self.bytes_read = bytes_read
        #: The JSON line (redacted from only if the ledger refuses the record).
        self.line = line
        self.sort_time = sort_time
        #: `ledger.plain_bytes` of (event type, event id, occurred_at, fields, prepared message).
        self.blob = blob

    def as_fact(self) -> tuple[Fact, Prepared | None]:
        """The fact and its prepared message."""
        event_type, event_id, occurred_at, data, prepared = from_bytes(self.blob)
        return Fact(event_type, event_id, occurred_at, data), prepared

    def shown(self) -> str | None:
        """The input as the rejects file shows it (personal fields redacted)."""
        return _shown_line(self.line)

    def packed(self) -> tuple[Any, ...]:
        """Plain data to spill (`unpacked_record` reads it back)."""
        return (self.location, self.bytes_read, self.line, self.sort_time, self.blob)

    def as_source(self) -> SourceRecord:
        """The record with its fact unpacked."""
        fact, prepared = self.as_fact()
        size = self.bytes_read
        return SourceRecord(self.location, None, fact, None, size, line=self.line, prepared=prepared)


def _shown_line(line: bytes) -> str | None:
    """A JSON line as the rejects file shows it (personal fields redacted)."""
    return redacted_json(load_json_object(_decode(line).strip()))


#: What the readers yield: records, and worker-parsed valid records still packed.
AnyRecord = SourceRecord | PendingRecord


def packed_record(record: AnyRecord) -> tuple[Any, ...]:
    """A record as plain data to spill while sorting (`unpacked_record` reads it back)."""
    return record.packed()


def unpacked_record(packed: tuple[Any, ...]) -> AnyRecord:
    """The record a `packed_record` tuple stands for."""
    if len(packed) == 5:
        return PendingRecord(*packed)
    return SourceRecord.unpacked(packed)


@dataclass
class IngestSummary:
    """Counts of one ingest run."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    conflicts: int = 0

    def line(self) -> str:
        return (
            f"accepted {self.accepted}, duplicates skipped {self.duplicates}, "
            f"rejected {self.rejected}, conflicts {self.conflicts}"
        )

    def add(self, other: IngestSummary) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.conflicts += other.conflicts

    @property
    def refused(self) -> int:
        """Records that did not land and were not duplicates: the exit code is 1 when any."""
        return self.rejected + self.conflicts


def raise_csv_field_limit() -> None:
    # Free-text columns (complaint narratives) exceed the csv module's 128 KiB default; the
    # record size limit is enforced on the raw bytes instead.
    global _csv_limit_raised  # noqa: PLW0603 - one-time, process-wide csv setting
    if not _csv_limit_raised:
        csv.field_size_limit(2**31 - 1)
        _csv_limit_raised = True


# -- physical lines --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Line:
    number: int
    data: bytes | None  # None: longer than the limit (skipped, not held in memory)
    size: int


def _lines(handle: IO[bytes], limit: int) -> Iterator[_Line]:
    """Physical lines with their numbers; a line over `limit` bytes is skipped in chunks."""
    number = 0
    while True:
        data = handle.readline(limit + 1)
        if not data or (not data.endswith(b"\n") and input_damage(handle) is not None):
            return  # a line the damage cut short: the damage's own reject stands for it
        number += 1
        if number == 1 and data.startswith(UTF8_BOM):
            data = data[len(UTF8_BOM) :]
        if len(data) <= limit or data.endswith(b"\n"):
            yield _Line(number, data, len(data))
            continue
        size = len(data)
        while data and not data.endswith(b"\n"):
            data = handle.readline(1 << 20)
            size += len(data)
        yield _Line(number, None, size)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        # Most often a file a spreadsheet saved in its own encoding: say how to get UTF-8 back
        # (a byte taken as Windows-1252 could be the wrong letter: nothing is guessed here).
        raise ValidationError(
            "(record)",
            f"invalid UTF-8 at byte {error.start + 1} (a file saved in another encoding, "
            "Windows-1252 say? save it as UTF-8: 'CSV UTF-8' in a spreadsheet, or iconv)",
        ) from None


def _too_large(size: int, limit: int) -> ValidationError:
    return ValidationError("(record)", f"too large: {size} bytes, the limit is {limit} (--max-record-bytes)")


def refuse_damaged(name: str, handle: IO[bytes]) -> None:
    """Raise the damage of a compressed input that ended before its header could be read."""
    damage = input_damage(handle)
    if damage is not None:
        raise ValidationError("(file)", f"{name}: {damage[1].reason}")


def damaged_input(name: str, handle: IO[bytes]) -> Iterator[SourceRecord]:
    """The rejected record for a compressed input that ended at damaged data, if it did."""
    damage = input_damage(handle)
    if damage is not None:
        line, error = damage
        yield SourceRecord(f"{name}:{line}", None, None, error, 0)


# -- JSON lines ------------------------------------------------------------------------------
def _no_constants(name: str) -> Any:
    raise ValidationError("(record)", f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValidationError(key, "appears twice in the record")
        result[key] = value
    return result


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


#: One decoder for every line: `json.loads` with options builds a new one per call (~4 µs).
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constants)


def load_json_object(text: str) -> dict[str, Any]:
    """A JSON object, refusing what JSON parsers disagree on or silently change.

    Duplicate keys, NaN/Infinity, numbers too long to convert, deep nesting and anything
    but an object are `ValidationError`s.
    """
    try:
        raw = _DECODER.decode(text)
    except json.JSONDecodeError as error:
        # Some of json's messages end in "at" already ("Invalid control character at").
        message = error.msg.removesuffix(" at")
        raise ValidationError("(record)", f"invalid JSON: {message} at column {error.colno}") from None
    except RecursionError:
        raise ValidationError("(record)", f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValidationError:
        raise
    except ValueError as error:  # e.g. an integer literal with thousands of digits
        raise ValidationError("(record)", f"invalid JSON number: {str(error)[:80]}") from None
    if not isinstance(raw, dict):
        raise ValidationError("(record)", "each record must be a JSON object")
    # A flat object (the usual record) is one level deep: skip the walk. (The value types as
    # one set, built in C: a generator over the values cost ~5% of parsing a line.)
    kinds = set(map(type, raw.values()))
    if (dict in kinds or list in kinds) and _depth(raw) > MAX_JSON_DEPTH:
        raise ValidationError("(record)", f"nested deeper than {MAX_JSON_DEPTH} levels")
    return raw


def parse_json_line(
    name: str,
    number: int,
    line: bytes,
    parser: RecordParser,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    *,
    size: int | None = None,
) -> SourceRecord:
    """One JSONL line into a SourceRecord (blank lines carry neither fact nor error).

    `size` is the line's size with its line end when `line` comes without it.
    """
    return parse_json_record(f"{name}:{number}", line, parser, max_record_bytes, size=size)


def parse_json_record(
    location: str,
    line: bytes,
    parser: RecordParser,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    *,
    size: int | None = None,
) -> SourceRecord:
    """One JSON record (a JSONL line, or an item of a JSON array) into a SourceRecord."""
    size = len(line) if size is None else size
    if size > max_record_bytes:
        return SourceRecord(location, None, None, _too_large(size, max_record_bytes), size)
    raw: dict[str, Any] | None = None
    text = ""
    try:
        text = _decode(line).strip()
        if not text:
            return SourceRecord(location, "", None, None, size)
        raw = load_json_object(text)
        return SourceRecord(location, None, parser.parse(raw, strict=True), None, size, raw)
    except ValidationError as error:
        shown = redacted_json(raw) if raw is not None else redacted_text(text)
        return SourceRecord(location, shown, None, error, size)


def parse_workers_for(path: Path) -> int:
    """How many worker processes parse this file: none for small files or a single core."""
    cores = os.cpu_count() or 1
    size = input_size(path)
    if size is None:  # a compression that does not record its size: judge by the file
        size = path.stat().st_size
    return 0 if cores < 2 or size < PARALLEL_PARSE_BYTES else cores


def read_jsonl(
    path: Path,
    parser: RecordParser,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    workers: int | None = None,
) -> Iterator[AnyRecord]:
    """Parse a JSON-lines file record by record (a UTF-8 byte-order mark is accepted).

    Large files are parsed by `workers` processes (by default one per core, see
    `parse_workers_for`); the records are the same either way (valid ones from the workers
    come as `PendingRecord`s: `as_source` gives the `SourceRecord`).
    """
    workers = parse_workers_for(path) if workers is None else workers
    if workers > 0:
        from ledger.parse_workers import read_jsonl_in_workers  # noqa: PLC0415 - it imports this module

        yield from blank_runs(read_jsonl_in_workers(path, parser, max_record_bytes, workers))
        return
    yield from blank_runs(_jsonl_lines(path, parser, max_record_bytes))


def _jsonl_lines(path: Path, parser: RecordParser, max_record_bytes: int) -> Iterator[SourceRecord]:
    with open_input(path) as handle:
        for line in _lines(handle, max_record_bytes):
            if line.data is None:
                location = f"{path.name}:{line.number}"
                yield SourceRecord(location, None, None, _too_large(line.size, max_record_bytes), line.size)
            elif is_blank(line.data):  # known without parsing it
                yield SourceRecord(f"{path.name}:{line.number}", "", None, None, line.size)
            else:
                yield parse_json_line(path.name, line.number, line.data, parser, max_record_bytes)
        yield from damaged_input(path.name, handle)


def is_blank(line: bytes) -> bool:
    """Empty or ASCII white space only (without copying the line, as strip() would)."""
    return not line or line.isspace()


def is_blank_record(record: object) -> TypeGuard[SourceRecord]:
    """Whether `record` stands for blank lines only: read (its bytes count), nothing decided."""
    return isinstance(record, SourceRecord) and record.fact is None and record.error is None


def blank_runs(records: Iterable[AnyRecord]) -> Iterator[AnyRecord]:
    """`records` with each run of blank lines as one record (the first line's location, the
    run's bytes).

    Nothing is decided about a blank line, and a record per line made a file of millions of
    them (a few KB of gzip unpack to that) cost minutes in sorting and merging.
    """
    location, size = None, 0
    for record in records:
        if is_blank_record(record):
            location = location or record.location
            size += record.bytes_read
            continue
        if location is not None:
            yield SourceRecord(location, "", None, None, size)
            location, size = None, 0
        yield record
    if location is not None:
        yield SourceRecord(location, "", None, None, size)


# -- CSV -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CsvRow:
    """One logical CSV record: the physical line it starts on, its cells or why it has none."""

    line: int
    cells: list[str] | None
    error: ValidationError | None
    size: int


def csv_rows(handle: IO[bytes], max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[CsvRow]:
    """Logical records of a CSV byte stream, each decoded and split on its own.

    A record ends at the first line end with an even number of quote characters so far (RFC
    4180: escaped quotes come in pairs). A quote that is never closed would make the csv
    module swallow the rest of the file into one cell; here the record is cut off at the
    size limit or the end of the file, its first line is reported, and reading resumes on
    the line after it, so every following row is still read. Invalid UTF-8 is rejected per
    record, never replaced.
    """
    for row in csv_unsplit_rows(handle, max_record_bytes):
        yield split_csv_row(row, max_record_bytes) if isinstance(row, tuple) else row


#: A logical CSV record not yet decoded and split: (first line number, bytes, size).
UnsplitRow = tuple[int, bytes, int]


def csv_unsplit_rows(
    handle: IO[bytes], max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Iterator[CsvRow | UnsplitRow]:
    """The logical records of `csv_rows`, before decoding and splitting (`split_csv_row`).

    Finding where a record ends only counts quotes; decoding and splitting it can then be
    done elsewhere (in a worker process). Records cut off by an unbalanced quote or the size
    limit come as the `CsvRow` error `csv_rows` gives for them.
    """
    raise_csv_field_limit()
    lines = _lines(handle, max_record_bytes)
    pushed: list[_Line] = []  # lines to read again after an unbalanced quote (in reverse)

    def next_line() -> _Line | None:
        if pushed:
            return pushed.pop()
        return next(lines, None)

    held: list[_Line] = []
    quotes = 0
    size = 0
    while True:
        line = next_line()
        if line is None:
            if not held:
                return
            reason = "a quoted cell that starts here is never closed"
            yield CsvRow(held[0].number, None, ValidationError("(record)", reason), held[0].size)
            pushed.extend(reversed(held[1:]))
            held, quotes, size = [], 0, 0
            continue
        if line.data is None:
            if held:  # the record so far cannot be completed within the limit
                yield CsvRow(held[0].number, None, _unbalanced(max_record_bytes), held[0].size)
                pushed.append(line)
                pushed.extend(reversed(held[1:]))
                held, quotes, size = [], 0, 0
            else:
                yield CsvRow(line.number, None, _too_large(line.size, max_record_bytes), line.size)
            continue
        held.append(line)
        quotes += line.data.count(b'"')
        size += line.size
        if quotes % 2:
            if size > max_record_bytes:
                yield CsvRow(held[0].number, None, _unbalanced(max_record_bytes), held[0].size)
                pushed.extend(reversed(held[1:]))
                held, quotes, size = [], 0, 0
            continue
        data = held[0].data if len(held) == 1 else b"".join(h.data or b"" for h in held)
        yield held[0].number, data or b"", size
        held, quotes, size = [], 0, 0


def _unbalanced(limit: int) -> ValidationError:
    return ValidationError(
        "(record)", f"a quoted cell that starts here does not close within {limit} bytes (unbalanced quote?)"
    )


def header_row(rows: Iterator[CsvRow | UnsplitRow], limit: int) -> CsvRow | None:
    """A CSV's header: its first row that is not blank (None for a file of blank lines).

    Blank lines before the header are skipped: read as the header, they refused the file
    (or every row), though the header follows them.
    """
    for row in rows:
        split = split_csv_row(row, limit) if isinstance(row, tuple) else row
        if split.cells is None or any(cell.strip() for cell in split.cells):
            return split
    return None


def split_csv_row(row: UnsplitRow, limit: int) -> CsvRow:
    """A logical record of `csv_unsplit_rows` decoded and split into cells."""
    number, data, size = row
    raise_csv_field_limit()
    if size > limit:
        return CsvRow(number, None, _too_large(size, limit), size)
    try:
        text = _decode(data).rstrip("\r\n")
        cells = next(csv.reader([text]), [])
    except ValidationError as error:
        return CsvRow(number, None, error, size)
    except csv.Error as error:
        return CsvRow(number, None, ValidationError("(record)", f"unreadable CSV: {error}"), size)
    return CsvRow(number, cells, None, size)


def read_csv(
    path: Path, parser: RecordParser, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Iterator[SourceRecord]:
    """Parse a CSV file with a header row; columns are matched by name."""
    with open_input(path) as handle:
        yield from csv_records(handle, path.name, parser.parse, max_record_bytes)
        yield from damaged_input(path.name, handle)


def csv_records(
    handle: IO[bytes],
    name: str,
    parse: Callable[[dict[str, Any]], Fact],
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[SourceRecord]:
    """Records of a CSV byte stream, parsed with `parse`; errors are located by line."""
    rows = csv_rows(handle, max_record_bytes)
    first = header_row(rows, max_record_bytes)
    if first is None:
        return
    if first.cells is None:
        assert first.error is not None
        yield SourceRecord(f"{name}:{first.line}", None, None, first.error, first.size)
        # Without a header no row can be read: say so for every row rather than drop them.
        header_missing = ValidationError("(header)", "the header row is unreadable")
        for row in rows:
            yield SourceRecord(f"{name}:{row.line}", None, None, header_missing, row.size)
        return
    header = [h.strip() for h in first.cells]
    # Every record needs these columns: without one (a misspelt " Type", a file separated by
    # ';') every row would be refused alike, one reject per row; the file is refused instead.
    required = ("event_id", "occurred_at") if "event_type" in header else ("type", "event_id", "occurred_at")
    check_header(name, handle, header, required, "CSV of ledger records")
    for row in rows:
        location = f"{name}:{row.line}"
        if row.cells is None:
            yield SourceRecord(location, None, None, row.error, row.size)
            continue
        cells = row.cells
        if not any(cell.strip() for cell in cells):
            yield SourceRecord(location, "", None, None, row.size)
            continue
        raw = dict(zip(header, cells, strict=False))
        if len(cells) > len(header):
            problem = ValidationError("(record)", f"{len(cells)} cells but {len(header)} columns")
            yield SourceRecord(location, redacted_json(raw), None, problem, row.size)
            continue
        try:
            yield SourceRecord(location, None, parse(raw), None, row.size, raw)
        except ValidationError as error:
            yield SourceRecord(location, redacted_json(raw), None, error, row.size)


def read_row_mapped(
    path: Path,
    parser: RecordParser,
    to_records: Callable[[dict[str, str]], list[dict[str, Any]]],
    *,
    header: Callable[[str], str] = str.strip,
    required: tuple[str, ...] = (),
    kind: str = "CSV",
    personal_columns: frozenset[str] = frozenset(),
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    taken: Callable[[list[dict[str, Any]]], None] | None = None,
) -> Iterator[SourceRecord]:
    """Stream a CSV whose every row maps to several ledger records (CFPB, mapped exports).

    Columns are matched by (normalised) header name. A row is all or nothing: when one of
    its records is invalid, the row is rejected once, with its line and the field. Cells of
    `personal_columns` are redacted in the rejects file. `taken` hears the records of every
    row whose records all parsed (a mapping that keeps state keeps it only for those).
    """
    with open_input(path) as handle:
        rows = csv_rows(handle, max_record_bytes)
        first = header_row(rows, max_record_bytes)
        names = [header(h) for h in (first.cells or [])] if first is not None else []
        check_header(path.name, handle, names, required, kind)
        for row in rows:
            location = f"{path.name}:{row.line}"
            cells = row_cells(location, row, names, personal_columns)
            if isinstance(cells, SourceRecord):
                yield cells
                continue
            shown = functools.partial(redact_columns, cells, personal_columns)
            yield from mapped_records(location, cells, row.size, parser, to_records, shown=shown, taken=taken)
        yield from damaged_input(path.name, handle)


def check_header(name: str, handle: IO[bytes], names: list[str], required: Iterable[str], kind: str) -> None:
    """Refuse a CSV whose header lacks a `required` column or names a column twice.

    A column named twice would let the later one win unseen, whichever the reader meant.
    """
    missing = [c for c in required if c not in names]
    if missing:
        refuse_damaged(name, handle)
        hint = f"is this a {kind}?"
        if len(names) == 1 and ";" in names[0]:
            # A spreadsheet's CSV in a locale whose list separator is ';': one column.
            hint = "its columns are separated by ';': save it with commas"
        raise ValidationError(missing[0], f"{name}: column missing from the header ({hint})")
    seen: set[str] = set()
    for column in names:
        if column and column in seen:
            raise ValidationError(column, f"{name}: column named twice in the header")
        seen.add(column)


def mapped_records(
    location: str,
    row: dict[str, str],
    size: int,
    parser: RecordParser,
    to_records: Callable[[dict[str, str]], list[dict[str, Any]]],
    *,
    shown: Callable[[], str],
    taken: Callable[[list[dict[str, Any]]], None] | None = None,
) -> Iterator[SourceRecord]:
    """The ledger records one source row maps to, or the row's one reject (all or nothing).

    `shown` makes the row's text for the rejects file; `taken` hears the records of a row
    whose records all parsed.
    """
    try:
        records = to_records(row)
        facts = [parser.parse(r) for r in records]
    except ValidationError as error:
        yield SourceRecord(location, shown(), None, error, size)
        return
    if taken is not None:
        taken(records)
    for index, (record, fact) in enumerate(zip(records, facts, strict=True)):
        # The ledger record, not the (possibly long) row: it is held until applied.
        yield SourceRecord(location, None, fact, None, size if index == 0 else 0, record)


def row_cells(
    location: str, row: CsvRow, names: list[str], personal_columns: frozenset[str] = frozenset()
) -> dict[str, str] | SourceRecord:
    """A data row's cells by column name (missing trailing cells empty), or what it is instead.

    An unreadable row or one with more cells than columns is a reject, a blank row a record
    with neither fact nor error.
    """
    if row.cells is None:
        return SourceRecord(location, None, None, row.error, row.size)
    if not any(cell.strip() for cell in row.cells):
        return SourceRecord(location, "", None, None, row.size)
    cells = dict(zip(names, row.cells, strict=False))
    if len(row.cells) > len(names):
        problem = ValidationError("(record)", f"{len(row.cells)} cells but {len(names)} columns")
        return SourceRecord(location, redact_columns(cells, personal_columns), None, problem, row.size)
    for column in names[len(row.cells) :]:
        cells[column] = ""
    return cells


def read_file(
    path: Path, parser: RecordParser, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Iterator[AnyRecord]:
    """Records of a JSONL (.jsonl, .ndjson, .json) or CSV (.csv) file, plain or compressed.

    A .json file that holds one JSON array of records is read as such (`read_json_array`).

    Compressed files (.zip of one file, .gz, .bz2, .xz) are read as a stream (`ledger.inputs`).
    """
    if not path.exists():
        raise CrmLedgerError(f"{path}: no such file")
    start = readable_start(path)
    suffix = data_suffix(path)
    if suffix == ".json" and _holds_an_array(start):
        return read_json_array(path, parser, max_record_bytes)
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return read_jsonl(path, parser, max_record_bytes)
    if suffix == ".csv":
        return read_csv(path, parser, max_record_bytes)
    raise CrmLedgerError(
        f"{path}: unknown format {suffix!r} (use .jsonl or .csv, plain or as .zip, .gz, .bz2, .xz)"
    )


def _holds_an_array(start: bytes) -> bool:
    """Whether a .json file starting with `start` is one JSON array (else it is JSON lines)."""
    return start.removeprefix(UTF8_BOM).lstrip(b" \t\r\n").startswith(b"[")


def read_json_array(
    path: Path, parser: RecordParser, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Iterator[SourceRecord]:
    """The records of a file holding one JSON array of them, each located as `name[index]`.

    The array streams (`ledger.json_items`): a bad item is rejected alone, and only a broken
    structure (a file cut short, text after the array) ends the reading, with one reject.
    """
    with open_input(path) as handle:
        for item in json_items(path.name, handle, max_record_bytes):
            if item.text is None:
                yield SourceRecord(item.location, None, None, item.error, item.size)
            else:
                yield parse_json_record(item.location, item.text, parser, max_record_bytes, size=item.size)
        yield from damaged_input(path.name, handle)


# -- personal data in rejects ----------------------------------------------------------------
REDACTED = "[redacted]"
_PERSONAL_NAMES = frozenset(name for names in PERSONAL_FIELDS.values() for name in names)


def redacted_json(raw: Mapping[str, Any]) -> str:
    """The record as JSON, with customers' personal fields replaced by a marker.

    Redacted when the record is a customer record, or when its type is unknown (it might be).
    """
    # Both spellings are looked at: a record may name two types (and is refused for it).
    kinds = [kind for kind in (raw.get("type"), raw.get("event_type")) if kind] or [None]
    personal = any(
        not isinstance(kind, str) or kind in PERSONAL_FIELDS or kind not in EVENT_TYPES for kind in kinds
    )
    shown = {
        key: (REDACTED if personal and key in _PERSONAL_NAMES and value not in (None, "") else value)
        for key, value in raw.items()
    }
    return json.dumps(shown, ensure_ascii=False, default=str)


def redacted_text(text: str) -> str | None:
    """Unparseable input is shown only when it cannot hold a personal field."""
    if any(f'"{name}"' in text for name in _PERSONAL_NAMES):
        return None
    return text


def redact_columns(cells: Mapping[str, str], personal: frozenset[str]) -> str:
    """A CSV row as the rejects file shows it: cells of `personal` columns redacted."""
    return json.dumps(
        {k: (REDACTED if k in personal and v else v) for k, v in cells.items()}, ensure_ascii=False
    )


#: A reason quotes the value it refuses: longer ones are cut (the record itself is in `raw`).
MAX_REASON_CHARS = 300


def _shortened(text: str) -> str:
    if len(text) <= MAX_REASON_CHARS:
        return text
    return f"{text[:MAX_REASON_CHARS]}… ({len(text):,} characters)"


class RejectSink:
    """Writes each refused record to the rejects file (JSON lines) and to stderr.

    An entry is `{"record": "file:line", "kind": "rejected" | "conflict", "field", "reason",
    "raw"}`; `raw` has customers' personal fields redacted (null when the input could not be
    parsed and might hold them). Entries are flushed as they are written. A run that fails
    calls `discard`: the file goes back to what it held before the run, so the run made again
    writes each of its rejects once (a full disk cut its last line short, and every line it
    did write would have been written again after it).
    """

    def __init__(self, path: Path | None, echo: IO[str] | None = sys.stderr, echo_limit: int = 50) -> None:
        self._path = path
        self._handle: IO[str] | None = None
        self._echo = echo
        self._echo_limit = echo_limit
        self.count = 0
        #: Whether this sink created the file (an empty one is not left behind).
        self._made = False
        #: The file's size before this run's first line: what `discard` cuts it back to.
        self._start = 0

    def reject(
        self, location: str, error: ValidationError, raw: str | None, *, kind: str = "rejected"
    ) -> None:
        self.count += 1
        if self._path is not None:
            if self._handle is None:
                self.open()
            assert self._handle is not None
            entry = {
                "record": location,
                "kind": kind,
                "field": error.field,
                "reason": _shortened(error.reason),
                "raw": raw,
            }
            line = json.dumps(entry, ensure_ascii=False)
            if not line.isascii() and not is_unicode_text(line):
                # JSON input can hold unpaired surrogate escapes ("\ud800"), which no UTF-8
                # file can: the entry keeps them as escapes, which read back the same.
                line = json.dumps(entry)
            try:
                self._handle.write(line + "\n")
                self._handle.flush()
            except OSError as failed:
                # A failed write names no file: the error line must say which one is full.
                raise OSError(failed.errno, failed.strerror, str(self._path)) from failed
        if self._echo is not None:
            if self.count <= self._echo_limit:
                field, reason = _shortened(error.field), _shortened(error.reason)
                self._echo.write(f"{kind} {location}: field {field!r}: {reason}\n")
            elif self.count == self._echo_limit + 1:
                self._echo.write("... more rejects: see the rejects file\n")

    def open(self) -> None:
        """Open the rejects file now, so that a file that cannot be written stops the run
        before anything is recorded (not after, with the valid records in and no word of
        the refused ones). A file made only by this and left empty is removed by `close`."""
        if self._path is None or self._handle is not None:
            return
        self._made = not self._path.exists()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self._path.open("a", encoding="utf-8")
        self._start = self._handle.tell()

    def discard(self) -> None:
        """Take back this run's lines (the run failed and is to be made again): the file is cut
        back to its size before the run, or removed if the run made it. Best effort: a
        failure here must not hide the run's own error."""
        if self._path is None or self._handle is None:
            return
        handle, self._handle = self._handle, None
        # What is still buffered fails to be written again on a full disk; it is dropped anyway.
        with contextlib.suppress(OSError):
            handle.close()
        with contextlib.suppress(OSError):
            if self._made:
                self._path.unlink(missing_ok=True)
            else:
                os.truncate(self._path, self._start)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            if self.count == 0 and self._made and self._path is not None:
                self._path.unlink(missing_ok=True)


def ingest_records(
    app: LedgerApplication,
    records: Iterable[AnyRecord],
    rejects: RejectSink,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    reporter: Reporter | None = None,
    bulk: bool = True,
) -> IngestSummary:
    """Record a stream of parsed records in time order, in batches; one transaction per batch.

    The whole stream is one run: its valid facts are applied in `occurred_at` order (ties in
    input order, see `ledger.ordering`), so the outcome does not depend on line order, file
    order or batch size. Facts are written by the bulk path (`ledger.bulk`) unless `bulk` is
    False (then through eventsourcing aggregates, `LedgerApplication.record`): the same
    rules, events, rejects and summary either way.
    """
    reporter = reporter or SilentReporter()
    summary = IngestSummary()
    # The batch's records (for their location and shown input), facts and prepared messages.
    batch: list[AnyRecord] = []
    facts: list[Fact] = []
    ready: list[Prepared | None] = []
    writer = BulkWriter(app) if bulk else None
    collector = DecidingCollector()

    def report(done: list[AnyRecord], outcomes: list[Outcome]) -> None:
        for record, outcome in zip(done, outcomes, strict=True):
            if outcome.status == "accepted":
                summary.accepted += 1
            elif outcome.status == "duplicate":
                summary.duplicates += 1
            else:
                assert outcome.error is not None
                if outcome.status == "conflict":
                    summary.conflicts += 1
                else:
                    summary.rejected += 1
                rejects.reject(record.location, outcome.error, record.shown(), kind=outcome.status)
        reporter.advance(0, events=len(done))

    def flush() -> None:
        nonlocal batch, facts, ready
        if writer is not None:
            # Valid records come once the run is read and sorted: the deciding phase.
            collector.start()
            # Decided now, written while the next batch is decided: reported once committed.
            for done, outcomes in writer.submit(facts, ready, batch):
                report(done, outcomes)
            collector.decided(len(facts))
        else:
            report(batch, app.record(facts))
        batch, facts, ready = [], [], []

    try:
        with fewer_collections():
            large = writer.expect_large_run if writer is not None else None
            ordered = in_time_order(
                _counted(records, reporter, large),
                run_size=SORT_RUN_SIZE,
                pack=packed_record,
                unpack=unpacked_record,
            )
            for source in ordered:
                if source.error is not None:
                    summary.rejected += 1
                    rejects.reject(source.location, source.error, source.shown())
                    continue
                if isinstance(source, PendingRecord):
                    fact, prepared = source.as_fact()
                elif source.fact is None:
                    continue
                else:
                    fact, prepared = source.fact, source.prepared
                batch.append(source)
                facts.append(fact)
                ready.append(prepared)
                if len(batch) >= batch_size:
                    flush()
            if batch:
                flush()
            if writer is not None:
                for done, outcomes in writer.finish():
                    report(done, outcomes)
    finally:
        collector.stop()
        if writer is not None:
            writer.close()
    return summary


def _counted(
    records: Iterable[AnyRecord], reporter: Reporter, large: Callable[[], None] | None = None
) -> Iterator[AnyRecord]:
    """Report bytes read as the records are read (the bar measures input consumed); call
    `large` once the run has read `WRITE_PROCESS_RECORDS` records. Once every record is
    read, the bar is complete: a CSV header's or a JSON array's brackets' bytes belong to
    no record, and the bar stopped short of its total."""
    pending = 0
    for count, record in enumerate(records):
        if count == WRITE_PROCESS_RECORDS and large is not None:
            large()
        pending += record.bytes_read
        if pending >= 1 << 20:
            reporter.advance(pending)
            pending = 0
        yield record
    reporter.advance(pending)
    reporter.complete()
