"""Parse JSON lines in worker processes while the main process sorts and writes.

Parsing and checking a record (JSON, strict types, the schema's and the domain's field rules)
is the largest cost of an import and needs no ledger state, so large files are parsed by a
pool of forked workers. The main process reads the physical lines (line numbers and the size
limit stay exactly as in `ledger.ingest.read_jsonl`), hands them over in chunks, and gets back
per line only plain data: a fact's time and the fact (type, id, time, fields) pickled by the
worker, which the main process sorts and spills as bytes and unpickles only when it judges
the fact (`ledger.ingest.PendingRecord`), or a reject's shown text and error. It keeps the
lines themselves, so an accepted record travels once and a rejects entry is redacted from
its line only if the ledger later refuses it. Chunks come back in input order and only a
few are in flight, so memory stays bounded whatever the file size.
Each worker also prepares the fact's Avro message and size bound (`ledger.prepared`), so
the main process, which alone can judge and write, has that much less to do.

The records are the ones `read_jsonl` yields for the same file, field for field
(`tests/test_parse_workers.py`).
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import Any, TypeVar

from ledger.errors import ValidationError
from ledger.ingest import (
    AnyRecord,
    PendingRecord,
    SourceRecord,
    _Line,
    _lines,
    _too_large,
    damaged_input,
    parse_json_line,
)
from ledger.inputs import open_input
from ledger.prepared import Preparer
from ledger.records import RecordParser
from schemas.codec import AvroCodec

#: Lines per chunk handed to a worker, and chunks in flight per worker.
CHUNK_LINES = 2000
IN_FLIGHT_PER_WORKER = 4

#: (occurred_at, pickle of (event type, event id, occurred_at, fields, prepared message)) of
#: a fact: the main process unpickles it only when it judges the fact (`PendingRecord`);
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
            packed = (fact.event_type, fact.event_id, fact.occurred_at, fact.data, prepare(fact))
            out.append((fact.occurred_at, pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL)))
        elif record.error is not None:
            error = record.error
            out.append((None, record.raw, type(error), error.field, error.reason))
        else:
            out.append(None)
    return out


def read_jsonl_in_workers(
    path: Path, parser: RecordParser, max_record_bytes: int, workers: int
) -> Iterator[AnyRecord]:
    """The records of `read_jsonl(path, parser, max_record_bytes)`, parsed by `workers` processes."""
    name = path.name
    with open_input(path) as handle:
        chunks = chunked(_lines(handle, max_record_bytes), CHUNK_LINES)
        for chunk, parsed in in_workers(
            chunks,
            _sent,
            _parse_chunk,
            workers=workers,
            initializer=_start_worker,
            initargs=(parser, name, max_record_bytes),
        ):
            yield from _records(name, max_record_bytes, chunk, parsed)
        yield from damaged_input(name, handle)


T = TypeVar("T")
C = TypeVar("C")
R = TypeVar("R")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last one shorter)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def in_workers(
    chunks: Iterable[C],
    sent: Callable[[C], Any],
    work: Callable[[Any], R],
    *,
    workers: int,
    initializer: Callable[..., None],
    initargs: tuple[Any, ...],
) -> Iterator[tuple[C, R]]:
    """Each chunk with `work(sent(chunk))` computed by a pool of `workers` forked processes.

    Results come back in chunk order, and only `IN_FLIGHT_PER_WORKER` chunks per worker are
    in flight, so memory stays bounded whatever the input's size.
    """
    # fork: the workers inherit the parser as it is (its rules are closures, not picklable).
    context = multiprocessing.get_context("fork")
    pending: deque[tuple[C, AsyncResult[R]]] = deque()
    with context.Pool(workers, initializer=initializer, initargs=initargs) as pool:
        for chunk in chunks:
            pending.append((chunk, pool.apply_async(work, (sent(chunk),))))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()


def _sent(chunk: list[_Line]) -> list[tuple[int, bytes]]:
    return [(line.number, line.data) for line in chunk if line.data is not None]


def _records(name: str, limit: int, chunk: list[_Line], results: list[Parsed]) -> Iterator[AnyRecord]:
    parsed = iter(results)
    for line in chunk:
        location = f"{name}:{line.number}"
        if line.data is None:
            yield SourceRecord(location, None, None, _too_large(line.size, limit), line.size)
            continue
        item = next(parsed)
        if item is None:
            yield SourceRecord(location, "", None, None, line.size)
        elif len(item) == 2:
            yield PendingRecord(location, line.size, line.data, item[0], item[1])
        else:
            _, shown, error_class, field, reason = item
            error: ValidationError = error_class(field, reason)
            yield SourceRecord(location, shown, None, error, line.size)
