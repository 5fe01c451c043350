"""Read a large CFPB export with worker processes, like large JSON-lines files.

Decoding and splitting a CSV row, mapping it to the complaint's records, checking each
record and preparing its Avro message need no ledger state and are most of an import's
parsing cost, so forked workers do them (`ledger.parse_workers.in_workers`). The main
process only finds where each logical row ends (`csv_unsplit_rows`: counting quotes) and
keeps the one piece of state the mapping has: which companies' complaint desks have joined
already. A worker maps every row as if its company were new and hands back the desk's
record apart; the main process, taking rows in file order, puts it in front of the
company's first complaint whose records are all valid, exactly as `DeskJoins` does. So the
records, their locations and the rejects are those of `read_cfpb` in one process
(`tests/importers/test_cfpb_workers.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crm_ledger.pool_worker import become_pool_worker
from importers.cfpb import REQUIRED, canonical_header, complaint_parts
from importers.cfpb_json import complaint_row, export_items, shown
from ledger.errors import ValidationError
from ledger.ingest import (
    CsvRow,
    SourceRecord,
    UnsplitRow,
    check_header,
    csv_unsplit_rows,
    damaged_input,
    header_row,
    redact_columns,
    row_cells,
    split_csv_row,
)
from ledger.inputs import open_input
from ledger.json_items import JsonItem
from ledger.parse_workers import chunked, in_workers
from ledger.prepared import Preparer
from ledger.records import Fact, RecordParser
from schemas.codec import AvroCodec

#: A checked record: (event type, event id, occurred_at, fields, prepared message, the
#: ledger record it was parsed from). A refusal: (error class, field, reason).
_Fact = tuple[str, str, int, Any, Any, dict[str, Any]]
_Refusal = tuple[type[ValidationError], str, str]

#: Rows per chunk handed to a worker (each makes three to five records).
CHUNK_ROWS = 1000

# The worker process's parser, column names and preparer, set by the pool's initializer.
_worker: dict[str, Any] = {}


def _start_worker(parser: RecordParser, names: list[str], max_record_bytes: int) -> None:
    become_pool_worker()
    # The facts come back as objects and are held so while the run is sorted: the aggregates
    # they name are found when they are judged instead (less memory per held fact).
    preparer = Preparer(AvroCodec(parser.registry), named=False)
    _worker.update(parser=parser, names=names, limit=max_record_bytes, prepare=preparer.prepare)


def _checked(records: list[dict[str, Any]]) -> list[_Fact] | _Refusal:
    """The records checked and prepared, or the first one's refusal (as `read_row_mapped`)."""
    parse, prepare = _worker["parser"].parse, _worker["prepare"]
    out: list[_Fact] = []
    for record in records:
        try:
            fact = parse(record)
        except ValidationError as error:
            return type(error), error.field, error.reason
        out.append((fact.event_type, fact.event_id, fact.occurred_at, fact.data, prepare(fact), record))
    return out


def _map_rows(rows: list[UnsplitRow]) -> list[tuple[Any, ...]]:
    """Per row: ("blank",), ("reject", shown, error class, field, reason) or
    ("row", company, desk's checked record, the complaint's checked records, shown)."""
    names, limit = _worker["names"], _worker["limit"]
    out: list[tuple[Any, ...]] = []
    for unsplit in rows:
        cells = row_cells("", split_csv_row(unsplit, limit), names)
        if isinstance(cells, SourceRecord):
            if cells.error is None:
                out.append(("blank",))
            else:
                out.append(("reject", cells.raw, type(cells.error), cells.error.field, cells.error.reason))
            continue
        out.append(_map_cells(cells))
    return out


def _map_cells(cells: dict[str, str]) -> tuple[Any, ...]:
    """One complaint row: ("reject", shown, error class, field, reason) or
    ("row", company, desk's checked record, the complaint's checked records, shown)."""
    try:
        company, desk, records = complaint_parts(cells, _worker["parser"].latest_ms)
    except ValidationError as error:
        return ("reject", redact_columns(cells, frozenset()), type(error), error.field, error.reason)
    joined, checked = _checked([desk]), _checked(records)
    # Shown only if refused; the cells are not sent back otherwise.
    refused = isinstance(joined, tuple) or isinstance(checked, tuple)
    shown = redact_columns(cells, frozenset()) if refused else None
    return ("row", company, joined, checked, shown)


def _map_items(texts: list[bytes]) -> list[tuple[Any, ...]]:
    """Per JSON item, as `_map_cells`; a reject's or a refused row's item is shown by the
    main process, which has its text (so None here)."""
    out: list[tuple[Any, ...]] = []
    for text in texts:
        try:
            cells = complaint_row(text)
        except ValidationError as error:
            out.append(("reject", None, type(error), error.field, error.reason))
            continue
        mapped = _map_cells(cells)
        # The row's cells are not sent back: the main process shows the item's own text.
        out.append((*mapped[:-1], None) if mapped[0] == "row" else ("reject", None, *mapped[2:]))
    return out


def read_cfpb_in_workers(
    path: Path, parser: RecordParser, max_record_bytes: int, workers: int
) -> Iterator[SourceRecord]:
    """The records of `read_cfpb(path, parser, max_record_bytes)`, rows mapped by `workers` processes."""
    name = path.name
    with open_input(path) as handle:
        rows = csv_unsplit_rows(handle, max_record_bytes)
        first = header_row(rows, max_record_bytes)
        names = [canonical_header(h) for h in (first.cells or [])] if first is not None else []
        check_header(path.name, handle, names, REQUIRED, "CFPB export")
        seen_companies: set[str] = set()
        chunks = chunked(rows, CHUNK_ROWS)
        for chunk, mapped in in_workers(
            chunks,
            _unsplit,
            _map_rows,
            workers=workers,
            initializer=_start_worker,
            initargs=(parser, names, max_record_bytes),
        ):
            results = iter(mapped)
            for row in chunk:
                if isinstance(row, CsvRow):
                    error = row_cells(f"{name}:{row.line}", row, names)
                    assert isinstance(error, SourceRecord)
                    yield error
                    continue
                yield from _records(f"{name}:{row[0]}", row[2], next(results), seen_companies)
        yield from damaged_input(name, handle)


def read_cfpb_json_in_workers(
    path: Path, parser: RecordParser, max_record_bytes: int, workers: int
) -> Iterator[SourceRecord]:
    """The records of `read_cfpb_json(path, parser, max_record_bytes)`, items mapped by
    `workers` processes (the main process only finds where each item ends)."""
    seen_companies: set[str] = set()
    with open_input(path) as handle:
        chunks = chunked(export_items(path, handle, max_record_bytes), CHUNK_ROWS)
        for chunk, mapped in in_workers(
            chunks,
            _texts,
            _map_items,
            workers=workers,
            initializer=_start_worker,
            initargs=(parser, [], max_record_bytes),
        ):
            results = iter(mapped)
            for item in chunk:
                if item.text is None:
                    yield SourceRecord(item.location, None, None, item.error, item.size)
                    continue
                result = _item_shown(next(results), item.text)
                yield from _records(item.location, item.size, result, seen_companies)
        yield from damaged_input(path.name, handle)


def _item_shown(result: tuple[Any, ...], text: bytes) -> tuple[Any, ...]:
    """A worker's result for a JSON item, with the item's text as what a refusal shows
    (decoded only for a reject or a row with a refused record)."""
    if result[0] == "reject":
        return ("reject", shown(text), *result[2:])
    if isinstance(result[2], tuple) or isinstance(result[3], tuple):
        return (*result[:-1], shown(text))
    return result


def _texts(chunk: list[JsonItem]) -> list[bytes]:
    return [item.text for item in chunk if item.text is not None]


def _unsplit(chunk: list[CsvRow | UnsplitRow]) -> list[UnsplitRow]:
    return [row for row in chunk if isinstance(row, tuple)]


def _records(
    location: str, size: int, item: tuple[Any, ...], seen_companies: set[str]
) -> Iterator[SourceRecord]:
    if item[0] == "blank":
        yield SourceRecord(location, "", None, None, size)
        return
    if item[0] == "reject":
        _, shown, error_class, field, reason = item
        yield SourceRecord(location, shown, None, error_class(field, reason), size)
        return
    _, company, joined, checked, shown = item
    # As `DeskJoins`: the desk joins with its company's first row whose records are all valid.
    first = company not in seen_companies
    for part in (joined, checked) if first else (checked,):
        if isinstance(part, tuple):
            error_class, field, reason = part
            yield SourceRecord(location, shown, None, error_class(field, reason), size)
            return
    seen_companies.add(company)
    facts = [*joined, *checked] if first else checked
    for index, (event_type, event_id, occurred_at, data, prepared, record) in enumerate(facts):
        fact = Fact(event_type, event_id, occurred_at, data)
        yield SourceRecord(location, None, fact, None, size if index == 0 else 0, record, prepared=prepared)
