"""The projection engine: log batches into a version's tables, exactly once.

`apply` decodes a whole batch, appends it to the version's `events` with one Arrow insert,
routes undecodable records to `dead_letters`, and records the source positions, all in
one DuckDB transaction: a crash at any point leaves either all of the batch or none of
it. `refresh` rebuilds the read models from `events` in one transaction. Because the
models are a pure function of the events, a rebuilt or replayed version is identical.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from crm_ledger.progress import Reporter, SilentReporter
from ledger.records import parse_timestamp
from projections.columns import EventsWriter
from projections.models import all_model_sql, scores_only_sql
from projections.sources import LogSource, RawBatch
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

    def apply(self, batch: RawBatch) -> tuple[int, int]:
        """Append one batch and its positions in one transaction; (applied, dead letters)."""
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
        con = self.db.connection
        con.execute("BEGIN TRANSACTION")
        try:
            applied = self.writer.insert(con, self.storage.schema, batch, groups, as_of_ms=self._as_of_ms)
            if dead:
                con.executemany(
                    f"INSERT INTO {self.storage.schema}.dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
                    dead,
                )
            self.db.tracking(self.storage).record_positions(batch.positions.values())
            con.execute(
                "UPDATE main.crm_versions SET state = 'building' WHERE version IN (?, ?)",
                [self.version.version, self.storage.version],
            )
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        return applied, len(dead)

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
        for batch in source.batches(positions, follow=follow):
            if should_stop():
                break
            if len(batch):
                applied, dead = self.apply(batch)
                stats.applied += applied
                stats.dead_letters += dead
                stats.batches += 1
                dirty = True
                reporter.advance(
                    len(batch),
                    events=len(batch),
                    note=f"{stats.dead_letters} dead letters" if stats.dead_letters else "",
                )
                if stop_after_batches is not None and stats.batches >= stop_after_batches:
                    break
            caught_up = not len(batch)
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


def parse_as_of(text: str | None) -> datetime | None:
    """An --as-of value: ISO date or timestamp, UTC when no zone is given."""
    if text is None:
        return None
    millis = parse_timestamp(text, "as_of")
    return datetime.fromtimestamp(millis / 1000, tz=UTC)
