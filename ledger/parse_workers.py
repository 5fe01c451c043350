"""Parse JSON lines in worker processes while the main process sorts and writes.

Parsing and checking a record (JSON, strict types, the schema's and the domain's field rules)
is the largest cost of an import and needs no ledger state, so large files are parsed by a
pool of forked workers. The main process reads the physical lines (line numbers and the size
limit stay exactly as in `ledger.ingest.read_jsonl`), hands them over in chunks, and gets back
per line only plain tuples: the fact's type, id, time and fields, or a reject's shown text and
error. It keeps the lines themselves, so an accepted record travels once and a rejects entry
is redacted from its line only if the ledger later refuses it. Chunks come back in input
order and only a few are in flight, so memory stays bounded whatever the file size.
Each worker also prepares the fact's Avro message and size bound (`ledger.prepared`), so
the main process, which alone can judge and write, has that much less to do.

The records are the ones `read_jsonl` yields for the same file, field for field
(`tests/test_parse_workers.py`).
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Iterator
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import Any

from ledger.errors import ValidationError
from ledger.ingest import SourceRecord, _Line, _lines, _too_large, parse_json_line
from ledger.prepared import Preparer
from ledger.records import Fact, RecordParser
from schemas.codec import AvroCodec

#: Lines per chunk handed to a worker, and chunks in flight per worker.
CHUNK_LINES = 2000
IN_FLIGHT_PER_WORKER = 4

#: (event type, event id, occurred_at, fields, prepared message or None) of a fact;
#: (None, shown, error class, field, reason) of a reject; None for a blank line.
Parsed = tuple[Any, ...] | None

# One parser per worker process, set by the pool's initializer (state of that process only).
_worker: dict[str, Any] = {}


def _start_worker(parser: RecordParser, name: str, max_record_bytes: int) -> None:
    # Ctrl-C reaches the whole process group: the main process stops the run (and the pool);
    # a worker interrupted on its own would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    preparer = Preparer(AvroCodec(parser.registry))
    _worker.update(parser=parser, name=name, limit=max_record_bytes, prepare=preparer.prepare)


def _parse_chunk(lines: list[tuple[int, bytes]]) -> list[Parsed]:
    parser, name, limit = _worker["parser"], _worker["name"], _worker["limit"]
    prepare = _worker["prepare"]
    out: list[Parsed] = []
    for number, data in lines:
        record = parse_json_line(name, number, data, parser, limit)
        if record.fact is not None:
            fact = record.fact
            out.append((fact.event_type, fact.event_id, fact.occurred_at, fact.data, prepare(fact)))
        elif record.error is not None:
            error = record.error
            out.append((None, record.raw, type(error), error.field, error.reason))
        else:
            out.append(None)
    return out


def read_jsonl_in_workers(
    path: Path, parser: RecordParser, max_record_bytes: int, workers: int
) -> Iterator[SourceRecord]:
    """The records of `read_jsonl(path, parser, max_record_bytes)`, parsed by `workers` processes."""
    # fork: the workers inherit the parser as it is (its rules are closures, not picklable).
    context = multiprocessing.get_context("fork")
    name = path.name
    pending: deque[tuple[list[_Line], AsyncResult[list[Parsed]]]] = deque()
    with (
        context.Pool(workers, initializer=_start_worker, initargs=(parser, name, max_record_bytes)) as pool,
        path.open("rb") as handle,
    ):
        chunk: list[_Line] = []
        for line in _lines(handle, max_record_bytes):
            chunk.append(line)
            if len(chunk) >= CHUNK_LINES:
                pending.append((chunk, _submit(pool, chunk)))
                chunk = []
                if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                    yield from _records(name, max_record_bytes, *pending.popleft())
        if chunk:
            pending.append((chunk, _submit(pool, chunk)))
        while pending:
            yield from _records(name, max_record_bytes, *pending.popleft())


def _submit(pool: Any, chunk: list[_Line]) -> AsyncResult[list[Parsed]]:
    lines = [(line.number, line.data) for line in chunk if line.data is not None]
    result: AsyncResult[list[Parsed]] = pool.apply_async(_parse_chunk, (lines,))
    return result


def _records(
    name: str, limit: int, chunk: list[_Line], result: AsyncResult[list[Parsed]]
) -> Iterator[SourceRecord]:
    parsed = iter(result.get())
    for line in chunk:
        location = f"{name}:{line.number}"
        if line.data is None:
            yield SourceRecord(location, None, None, _too_large(line.size, limit), line.size)
            continue
        item = next(parsed)
        if item is None:
            yield SourceRecord(location, "", None, None, line.size)
        elif item[0] is None:
            _, shown, error_class, field, reason = item
            error: ValidationError = error_class(field, reason)
            yield SourceRecord(location, shown, None, error, line.size)
        else:
            fact = Fact(item[0], item[1], item[2], item[3])
            yield SourceRecord(location, None, fact, None, line.size, line=line.data, prepared=item[4])
