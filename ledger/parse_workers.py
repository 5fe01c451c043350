"""Parse JSON lines in worker processes while the main process sorts and writes.

Parsing and checking a record (JSON, strict types, the schema's and the domain's field
rules) is the largest cost of an import and needs no ledger state, so large files are parsed
by a pool of forked workers. The main process reads the physical lines (line numbers and the
size limit stay exactly as in `ledger.ingest.read_jsonl`), hands them over in chunks, and
gets back per line only plain data: a fact's time and the fact (type, id, time, fields)
packed by the worker (`ledger.plain_bytes`), which the main process sorts and spills as
bytes and unpacks only when it judges the fact (`ledger.ingest.PendingRecord`), or a
reject's shown text and error. It keeps the lines themselves, so an accepted record travels
once and a rejects entry is redacted from its line only if the ledger later refuses it.
Chunks come back in input order and only a few are in flight, so memory stays bounded
whatever the file size.
Each worker also prepares the fact's Avro message and size bound (`ledger.prepared`), so
the main process, which alone can judge and write, has that much less to do.

The records are the ones `read_jsonl` yields for the same file, field for field
(`tests/test_parse_workers.py`).
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import IO, Any, TypeVar

from crm_ledger.pool_worker import become_pool_worker
from ledger.errors import ValidationError
from ledger.ingest import (
    AnyRecord,
    PendingRecord,
    SourceRecord,
    _too_large,
    damaged_input,
    is_blank,
    parse_json_line,
)
from ledger.inputs import UTF8_BOM, input_damage, open_input
from ledger.ordering import order_key
from ledger.plain_bytes import from_bytes, to_bytes
from ledger.prepared import Preparer
from ledger.records import RecordParser
from schemas.codec import AvroCodec

#: Bytes of whole lines per block handed to a worker, and blocks in flight per worker.
BLOCK_BYTES = 512 * 1024
IN_FLIGHT_PER_WORKER = 4

#: Per line of a block, in order: (sort time (`ordering.order_key`), size, line, `to_bytes` of
#: (event type, event id, occurred_at, fields, prepared message)) of a fact, which the main
#: process unpacks only when it judges the fact (`PendingRecord`); (None, size, shown,
#: error class, field, reason) of a reject; and (lines, size) for each run of blank lines.
Parsed = tuple[Any, ...]
#: (number of the block's first line, its whole lines, the number and size of an over-long
#: line right after them or None): what the main process reads (`_blocks`).
Block = tuple[int, bytes, tuple[int, int] | None]

# One parser per worker process, set by the pool's initializer (state of that process only).
_worker: dict[str, Any] = {}


def _start_worker(parser: RecordParser, name: str, max_record_bytes: int) -> None:
    become_pool_worker()
    preparer = Preparer(AvroCodec(parser.registry))
    _worker.update(parser=parser, name=name, limit=max_record_bytes, prepare=preparer.prepare)


def _parse_block(sent: tuple[int, bytes]) -> bytes:
    """Every line of a block parsed, as `read_jsonl` parses a line (`parse_json_line`).

    Sent back as one `ledger.plain_bytes` value: the pool then pickles one bytes object,
    and the main process reads the block's tuples back in about half pickle's time.
    """
    parser, name, limit = _worker["parser"], _worker["name"], _worker["limit"]
    prepare = _worker["prepare"]
    number, block = sent
    lines = block.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the block ends with a line end, as all but a file's last one do
        last = -1
    else:
        last = len(lines) - 1  # the file's last line, without a line end
    out: list[Parsed] = []
    for index, data in enumerate(lines, start=number):
        size = len(data) if index - number == last else len(data) + 1
        # A blank line (ASCII white space) within the size limit is known without parsing it.
        blank = size <= limit and is_blank(data)
        record = None if blank else parse_json_line(name, index, data, parser, limit, size=size)
        if record is not None and record.fact is not None:
            fact = record.fact
            packed = (fact.event_type, fact.event_id, fact.occurred_at, fact.data, prepare(fact))
            key = order_key(fact.event_type, fact.occurred_at)
            out.append((key, size, data, to_bytes(packed)))
        elif record is not None and record.error is not None:
            error = record.error
            out.append((None, size, record.raw, type(error), error.field, error.reason))
        elif out and len(out[-1]) == 2:
            out[-1] = (out[-1][0] + 1, out[-1][1] + size)
        else:
            out.append((1, size))
    return to_bytes(out)


def _blocks(handle: IO[bytes], limit: int) -> Iterator[Block]:
    """The input in blocks of whole lines, numbered as `ledger.ingest._lines` numbers them.

    The main process only finds the last line end of each block (in C) and counts its line
    ends; the workers split it into lines. A line longer than any record (more than `limit`
    bytes without its line end) that does not fit a block is skipped here, counted but never
    held in memory, and reported as the over-long line after the block before it.
    """
    number = 1
    pending = handle.read(BLOCK_BYTES)
    if pending.startswith(UTF8_BOM):
        pending = pending[len(UTF8_BOM) :]
    while True:
        cut = pending.rfind(b"\n") + 1
        if cut:
            block, pending = pending[:cut], pending[cut:]
            yield number, block, None
            number += block.count(b"\n")
        elif len(pending) > limit + 1:
            size = len(pending)
            while True:
                data = handle.read(BLOCK_BYTES)
                end = data.find(b"\n") + 1
                if end or not data:
                    size += end or len(data)
                    pending = data[end:]
                    break
                size += len(data)
            yield number, b"", (number, size)
            number += 1
            continue
        data = handle.read(BLOCK_BYTES)
        if not data:
            # A last line the damage cut short is left to the damage's own reject.
            if pending and input_damage(handle) is None:
                yield number, pending, None
            return
        pending += data


def read_jsonl_in_workers(
    path: Path, parser: RecordParser, max_record_bytes: int, workers: int
) -> Iterator[AnyRecord]:
    """The records of `read_jsonl(path, parser, max_record_bytes)`, parsed by `workers` processes."""
    name = path.name
    with open_input(path) as handle:
        for block, parsed in in_workers(
            _blocks(handle, max_record_bytes),
            _sent,
            _parse_block,
            workers=workers,
            initializer=_start_worker,
            initargs=(parser, name, max_record_bytes),
        ):
            yield from _records(name, max_record_bytes, block, from_bytes(parsed))
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


def _sent(block: Block) -> tuple[int, bytes]:
    return block[0], block[1]


def _records(name: str, limit: int, block: Block, results: list[Parsed]) -> Iterator[AnyRecord]:
    number = block[0]
    for item in results:
        location = f"{name}:{number}"
        number += 1
        if len(item) == 2:
            yield SourceRecord(location, "", None, None, item[1])
            number += item[0] - 1
        elif item[0] is not None:
            yield PendingRecord(location, item[1], item[2], item[0], item[3])
        else:
            _, size, shown, error_class, field, reason = item
            error: ValidationError = error_class(field, reason)
            yield SourceRecord(location, shown, None, error, size)
    if block[2] is not None:
        number, size = block[2]
        yield SourceRecord(f"{name}:{number}", None, None, _too_large(size, limit), size)
