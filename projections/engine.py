"""The projection engine: log batches into a version's tables, exactly once.

`apply` decodes a whole batch, appends it to the version's `events` with one Arrow insert,
routes undecodable records to `dead_letters`, and records the source positions, all in
one DuckDB transaction: a crash at any point leaves either all of the batch or none of
it. `refresh` rebuilds the read models from `events` in one transaction. Because the
models are a pure function of the events, a rebuilt or replayed version is identical.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from crm_ledger.progress import Reporter, SilentReporter
from ledger.records import parse_timestamp
from projections.columns import EventsWriter
from projections.models import all_model_sql, scores_only_sql
from projections.sources import LogSource, Position, RawBatch
from projections.store import ProjectionDB, VersionInfo, _now
from schemas.codec import AvroCodec


@dataclass
class ProjectStats:
    """What one run did."""

    applied: int = 0
    dead_letters: int = 0
    batches: int = 0
    refreshed: bool = False
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.applied / self.seconds if self.seconds > 0 else 0.0


class Projector:
    """Applies a log source to one version of the read models."""

    def __init__(
        self, db: ProjectionDB, version: VersionInfo, source: LogSource | None, codec: AvroCodec
    ) -> None:
        self.db = db
        self.version = version
        #: where the events live: the version itself, or the base of a weights-only version
        self.storage = db.storage_version(version)
        self.source = source
        self.codec = codec
        self._as_of_ms = int(version.as_of.timestamp() * 1000) if version.as_of else None
        self.spec = version.spec()
        self.writer = EventsWriter(codec.registry)

    def prepare(self, batch: RawBatch) -> PreparedBatch:
        """Decode a batch and build its Arrow tables (no database access: runs on any thread)."""
        groups, errors = self.codec.decode_groups(batch.values)
        dead = [
            (
                batch.sources[i],
                batch.partitions[i],
                batch.offsets[i],
                batch.notification_ids[i],
                str(error),
                batch.values[i],
                _now(),
            )
            for i, error in errors
        ]
        return PreparedBatch(
            self.writer.prepare(batch, groups), dead, list(batch.positions.values()), len(batch)
        )

    def write(self, prepared: PreparedBatch) -> tuple[int, int]:
        """Append a prepared batch and its positions in one transaction; (applied, dead letters)."""
        con = self.db.connection
        con.execute("BEGIN TRANSACTION")
        try:
            applied = self.writer.write(con, self.storage.schema, prepared.tables, as_of_ms=self._as_of_ms)
            if prepared.dead:
                con.executemany(
                    f"INSERT INTO {self.storage.schema}.dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
                    prepared.dead,
                )
            self.db.tracking(self.storage).record_positions(prepared.positions)
            con.execute(
                "UPDATE main.crm_versions SET state = 'building' WHERE version IN (?, ?)",
                [self.version.version, self.storage.version],
            )
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        return applied, len(prepared.dead)

    def apply(self, batch: RawBatch) -> tuple[int, int]:
        """Decode and append one batch with its positions, in one transaction."""
        return self.write(self.prepare(batch))

    def refresh(self, *, scores_only: bool = False) -> None:
        """Rebuild the read models (or just the scores) in one transaction."""
        schema = self.version.schema
        statements = []
        if self.storage.version != self.version.version and not scores_only:
            # The shared KPI tables live with the base: bring the base up to date first.
            statements += all_model_sql(self.storage.schema, self.storage.spec(), self.storage.version)
        if scores_only or self.storage.version != self.version.version:
            statements += scores_only_sql(schema, self.spec, self.version.version)
        else:
            statements += all_model_sql(schema, self.spec, self.version.version)
        con = self.db.connection
        con.execute("BEGIN TRANSACTION")
        try:
            for statement in statements:
                con.execute(statement)
            if self.storage.version != self.version.version and not scores_only:
                self.db.mark_built(self.storage)
            self.db.mark_built(self.version)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def needs_refresh(self) -> bool:
        rows = self.db.connection.execute(
            "SELECT state FROM main.crm_versions WHERE version IN (?, ?)",
            [self.version.version, self.storage.version],
        ).fetchall()
        return not rows or any(r[0] != "ready" for r in rows)

    def run(
        self,
        *,
        follow: bool = False,
        reporter: Reporter | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        refresh_interval_s: float = 5.0,
        on_refresh: Callable[[], None] | None = None,
        stop_after_batches: int | None = None,
    ) -> ProjectStats:
        """Catch up with the source (and keep following it when `follow`)."""
        if self.source is None:
            raise ValueError("this projector has no source: it can only refresh")
        source = self.source
        reporter = reporter or SilentReporter()
        stats = ProjectStats()
        started = time.monotonic()
        last_refresh = time.monotonic()
        dirty = self.needs_refresh()
        positions = self.db.tracking(self.storage).positions()
        reporter.total(source.lag(positions))
        with _Prefetcher(self, source, positions, follow) as prepared_batches:
            for prepared in prepared_batches:
                if should_stop():
                    break
                if prepared.size:
                    applied, dead = self.write(prepared)
                    stats.applied += applied
                    stats.dead_letters += dead
                    stats.batches += 1
                    dirty = True
                    note = f"{stats.dead_letters} dead letters" if stats.dead_letters else ""
                    reporter.advance(prepared.size, events=prepared.size, note=note)
                    if stop_after_batches is not None and stats.batches >= stop_after_batches:
                        break
                caught_up = not prepared.size
                if follow and dirty and (caught_up or time.monotonic() - last_refresh >= refresh_interval_s):
                    self.refresh()
                    stats.refreshed = True
                    dirty = False
                    last_refresh = time.monotonic()
                    if on_refresh is not None:
                        on_refresh()
                if follow and caught_up and not dirty:
                    # Idle: let go of the file so that other commands get their turn.
                    self.db.release()
        if dirty and not should_stop() and stop_after_batches is None:
            self.refresh()
            stats.refreshed = True
            if on_refresh is not None:
                on_refresh()
        stats.seconds = time.monotonic() - started
        return stats


@dataclass
class PreparedBatch:
    """A decoded batch ready to write: Arrow tables per event type, dead letters, positions."""

    tables: list[tuple[str, pa.Table]]
    dead: list[tuple[Any, ...]]
    positions: list[Position]
    size: int


_DONE = object()


class _Prefetcher:
    """Reads and decodes the next batches on a thread while the caller writes the current one.

    The Python work (consuming, Avro decoding, building Arrow) overlaps with DuckDB's writes,
    which release the GIL. Batches come out in source order; a failure on the thread is
    raised in the caller. At most two batches wait, so memory stays bounded.
    """

    def __init__(self, projector: Projector, source: LogSource, positions: Any, follow: bool) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._halt = threading.Event()
        self._thread = threading.Thread(
            target=self._produce, args=(projector, source, positions, follow), daemon=True
        )

    def _put(self, item: Any) -> bool:
        while not self._halt.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, projector: Projector, source: LogSource, positions: Any, follow: bool) -> None:
        try:
            for batch in source.batches(positions, follow=follow):
                if self._halt.is_set() or not self._put(projector.prepare(batch)):
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


def parse_as_of(text: str | None) -> datetime | None:
    """An --as-of value: ISO date or timestamp, UTC when no zone is given."""
    if text is None:
        return None
    millis = parse_timestamp(text, "as_of")
    return datetime.fromtimestamp(millis / 1000, tz=UTC)
