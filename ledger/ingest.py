"""Bulk ingest of JSONL and CSV files: streaming, batched, idempotent, with a rejects file.

Each batch is one store transaction, and every fact is keyed by its event id, so a run
that is killed and started again ends with exactly the ledger of an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from crm_ledger.errors import CrmLedgerError
from crm_ledger.progress import Reporter, SilentReporter
from ledger.application import LedgerApplication
from ledger.errors import ValidationError
from ledger.records import Fact, RecordParser

DEFAULT_BATCH_SIZE = 2000
_csv_limit_raised = False


@dataclass(frozen=True)
class SourceRecord:
    """One input record with where it came from, parsed or with the reason it was not."""

    location: str
    raw: str
    fact: Fact | None
    error: ValidationError | None
    bytes_read: int


@dataclass
class IngestSummary:
    """Counts of one ingest run."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0

    def line(self) -> str:
        return f"accepted {self.accepted}, duplicates skipped {self.duplicates}, rejected {self.rejected}"

    def add(self, other: IngestSummary) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected += other.rejected


def raise_csv_field_limit() -> None:
    # Free-text columns (complaint narratives) exceed the csv module's 128 KiB default.
    global _csv_limit_raised  # noqa: PLW0603 - one-time, process-wide csv setting
    if not _csv_limit_raised:
        csv.field_size_limit(2**31 - 1)
        _csv_limit_raised = True


def parse_json_line(name: str, number: int, line: bytes, parser: RecordParser) -> SourceRecord:
    """One JSONL line into a SourceRecord (blank lines carry neither fact nor error)."""
    size = len(line)
    text = line.decode("utf-8", errors="replace").strip()
    location = f"{name}:{number}"
    if not text:
        return SourceRecord(location, "", None, None, size)
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValidationError("(record)", "each line must be a JSON object")
        return SourceRecord(location, text, parser.parse(raw), None, size)
    except json.JSONDecodeError as error:
        invalid = ValidationError("(record)", f"invalid JSON: {error.msg}")
        return SourceRecord(location, text, None, invalid, size)
    except ValidationError as error:
        return SourceRecord(location, text, None, error, size)


def read_jsonl(path: Path, parser: RecordParser) -> Iterator[SourceRecord]:
    """Parse a JSON-lines file record by record, in this process."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            yield parse_json_line(path.name, number, line, parser)


def read_csv(path: Path, parser: RecordParser) -> Iterator[SourceRecord]:
    """Parse a CSV file with a header row; columns are matched by name."""
    raise_csv_field_limit()
    with path.open("r", newline="", encoding="utf-8-sig", errors="replace") as handle:
        yield from csv_records(handle, path.name, parser.parse)


def csv_records(
    handle: IO[str], name: str, parse: Callable[[dict[str, Any]], Fact]
) -> Iterator[SourceRecord]:
    """Records of an open CSV stream, parsed with `parse`; errors are located by line."""
    raise_csv_field_limit()
    reader = csv.reader(handle)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return
    except csv.Error as error:
        yield SourceRecord(f"{name}:1", "", None, ValidationError("(header)", f"unreadable CSV: {error}"), 0)
        return
    for line, row in safe_rows(reader):
        if isinstance(row, ValidationError):
            yield SourceRecord(f"{name}:{line}", "", None, row, 0)
            continue
        location = f"{name}:{line}"
        raw_text = ",".join(row)
        size = len(raw_text) + 1
        if not any(cell.strip() for cell in row):
            yield SourceRecord(location, raw_text, None, None, size)
            continue
        if len(row) > len(header):
            problem = ValidationError("(record)", f"{len(row)} cells but {len(header)} columns")
            yield SourceRecord(location, raw_text, None, problem, size)
            continue
        raw = dict(zip(header, row, strict=False))
        try:
            yield SourceRecord(location, raw_text, parse(raw), None, size)
        except ValidationError as error:
            yield SourceRecord(location, raw_text, None, error, size)


def safe_rows(reader: Any) -> Iterator[tuple[int, Any]]:
    """(line, row) of a csv reader; a malformed line (NUL byte, bad quoting) becomes an error.

    Python's csv module raises on such lines; the reader can go on with the next one, so one
    bad line is one reject, never the end of the import.
    """
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield reader.line_num, ValidationError("(record)", f"unreadable CSV line: {error}")
            continue
        yield reader.line_num, row


def read_row_mapped(
    path: Path,
    parser: RecordParser,
    to_records: Callable[[dict[str, str]], list[dict[str, Any]]],
    *,
    header: Callable[[str], str] = str.strip,
    required: tuple[str, ...] = (),
    kind: str = "CSV",
) -> Iterator[SourceRecord]:
    """Stream a CSV whose every row maps to several ledger records (CFPB, mapped exports).

    Columns are matched by (normalised) header name. A row is all or nothing: when one of
    its records is invalid, the row is rejected once, with its line and the field.
    """
    raise_csv_field_limit()
    with path.open("r", newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.DictReader(handle)
        names = [header(h) for h in reader.fieldnames or []]
        reader.fieldnames = names
        missing = [c for c in required if c not in names]
        if missing:
            raise ValidationError(
                missing[0], f"{path.name}: column missing from the header (is this a {kind}?)"
            )
        for line, row in safe_rows(reader):
            location = f"{path.name}:{line}"
            if isinstance(row, ValidationError):
                yield SourceRecord(location, "", None, row, 0)
                continue
            raw = ",".join(v or "" for v in row.values() if isinstance(v, str))
            size = len(raw) + 1
            try:
                facts = [parser.parse(r) for r in to_records(row)]
            except ValidationError as error:
                yield SourceRecord(location, raw, None, error, size)
                continue
            for index, fact in enumerate(facts):
                yield SourceRecord(location, raw, fact, None, size if index == 0 else 0)


def read_file(path: Path, parser: RecordParser) -> Iterator[SourceRecord]:
    """Records of a JSONL (.jsonl, .ndjson, .json) or CSV (.csv) file."""
    if not path.exists():
        raise CrmLedgerError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return read_jsonl(path, parser)
    if suffix == ".csv":
        return read_csv(path, parser)
    raise CrmLedgerError(f"{path}: unknown format {suffix!r} (use .jsonl or .csv)")


class RejectSink:
    """Writes each rejected record to the rejects file (JSON lines) and to stderr."""

    def __init__(self, path: Path | None, echo: IO[str] | None = sys.stderr, echo_limit: int = 50) -> None:
        self._path = path
        self._handle: IO[str] | None = None
        self._echo = echo
        self._echo_limit = echo_limit
        self.count = 0

    def reject(self, location: str, error: ValidationError, raw: str) -> None:
        self.count += 1
        if self._path is not None:
            if self._handle is None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = self._path.open("a", encoding="utf-8")
            entry = {"record": location, "field": error.field, "reason": error.reason, "raw": raw}
            self._handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        if self._echo is not None:
            if self.count <= self._echo_limit:
                self._echo.write(f"rejected {location}: field {error.field!r}: {error.reason}\n")
            elif self.count == self._echo_limit + 1:
                self._echo.write("... more rejects: see the rejects file\n")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def ingest_records(
    app: LedgerApplication,
    records: Iterable[SourceRecord],
    rejects: RejectSink,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    reporter: Reporter | None = None,
) -> IngestSummary:
    """Record a stream of parsed records in batches; one transaction per batch."""
    reporter = reporter or SilentReporter()
    summary = IngestSummary()
    batch: list[SourceRecord] = []
    consumed = 0

    def flush() -> None:
        nonlocal consumed
        outcomes = app.record([r.fact for r in batch if r.fact is not None])
        facts = iter(outcomes)
        for record in batch:
            if record.fact is None:
                continue
            outcome = next(facts)
            if outcome.status == "accepted":
                summary.accepted += 1
            elif outcome.status == "duplicate":
                summary.duplicates += 1
            else:
                assert outcome.error is not None
                summary.rejected += 1
                rejects.reject(record.location, outcome.error, record.raw)
        reporter.advance(consumed, events=len(batch))
        consumed = 0
        batch.clear()

    for record in records:
        consumed += record.bytes_read
        if record.error is not None:
            summary.rejected += 1
            rejects.reject(record.location, record.error, record.raw)
            continue
        if record.fact is None:
            continue
        batch.append(record)
        if len(batch) >= batch_size:
            flush()
    if batch or consumed:
        flush()
    return summary
