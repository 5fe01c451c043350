"""The appender: a log source into the decoded log, exactly once.

Each source batch is decoded once (natively, straight into Arrow: projections.native)
into one flat Arrow table (dead letters included) and committed to the Delta log together
with the new stream positions as Delta application transactions. Where to resume is read
back from the log itself, so a killed appender neither loses nor repeats a message.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from projections.log import DecodedLog
from projections.native import NativeBatchBuilder
from projections.sources import LogSource, Position, RawBatch
from schemas.codec import AvroCodec


@dataclass(frozen=True)
class PreparedBatch:
    """A decoded batch ready to commit: its rows, the positions after it, and counts."""

    table: pa.Table
    positions: list[Position]
    size: int
    dead_letters: int


class LogAppender:
    """Appends a source to its decoded log."""

    def __init__(self, log: DecodedLog, source: LogSource, codec: AvroCodec) -> None:
        self.log = log
        self.source = source
        self.codec = codec
        self.builder = NativeBatchBuilder(codec)
        #: each stream's position in the log as this appender last knew it: a commit is made
        #: only while the log is still there (`DecodedLog.append`)
        self.expected: dict[str, int | None] = {}

    def positions(self) -> dict[str, Position]:
        """Where the log stands for each of the source's streams."""
        return self.log.positions(self.source.streams())

    def prepare(self, batch: RawBatch) -> PreparedBatch:
        """Decode a batch into the log's rows (no I/O: runs on any thread)."""
        now = datetime.now(tz=UTC).replace(tzinfo=None)
        table, dead_letters = self.builder.build(batch, now)
        return PreparedBatch(table, list(batch.positions.values()), len(batch), dead_letters)

    def commit(self, prepared: PreparedBatch) -> int:
        """Append the rows and their positions in one Delta commit; returns the log version.

        Raises StaleBatchError when another process appended the same source meanwhile.
        """
        for position in prepared.positions:
            if position.stream not in self.expected:  # not read through `batches` (a new stream)
                last = self.log.table().transaction_version(position.stream)
                self.expected[position.stream] = None if last is None else int(last)
        version = self.log.append(prepared.table, prepared.positions, self.expected)
        self.expected.update({p.stream: p.offset for p in prepared.positions})
        return version

    def batches(self, *, follow: bool, positions: dict[str, Position] | None = None) -> _Prefetcher:
        """Prepared batches after the log's positions, decoded on a thread ahead of the caller.

        `positions` are the log's positions when the caller has just read them: reading them
        finds the ledger's chain head in the Delta files (~7-14 ms at 1M events).
        """
        start = self.positions() if positions is None else positions
        self.expected = {s: start[s].offset if s in start else None for s in self.source.streams()}
        return _Prefetcher(self.prepare, self.source.batches(start, follow=follow))


_DONE = object()


class _Prefetcher:
    """Reads and decodes the next batches on a thread while the caller commits the current one.

    Batches come out in source order; a failure on the thread is raised in the caller. At
    most two batches wait, so memory stays bounded. An empty batch means "caught up".
    """

    def __init__(self, prepare: Callable[[RawBatch], PreparedBatch], batches: Iterator[RawBatch]) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(prepare, batches), daemon=True)

    def _put(self, item: Any) -> bool:
        while not self._halt.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, prepare: Callable[[RawBatch], PreparedBatch], batches: Iterator[RawBatch]) -> None:
        try:
            for batch in batches:
                if self._halt.is_set() or not self._put(prepare(batch)):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            self._put(error)
            return
        self._put(_DONE)

    def __enter__(self) -> Iterator[PreparedBatch]:
        self._thread.start()
        return self._items()

    def _items(self) -> Iterator[PreparedBatch]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join(timeout=60)
