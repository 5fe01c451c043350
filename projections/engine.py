"""The projection engine: a log source into the decoded log, the log into a version.

`run` has two steps that never share a transaction and need not share a process: the
appender commits each source batch to the source's decoded log (Delta, exactly once,
projections.append), and the maintainer brings the version's derived tables to the log's
latest snapshot (DuckDB, position in the same transaction, projections.maintain). When
the log is already ahead of the source (a replay, a second version), nothing is decoded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from crm_ledger.progress import Reporter, SilentReporter
from ledger.records import parse_timestamp
from projections.append import LogAppender
from projections.errors import StaleBatchError
from projections.maintain import Maintainer
from projections.sources import LogSource, RawBatch
from projections.store import ProjectionDB, VersionInfo
from schemas.codec import AvroCodec

#: A catch-up shorter than this many events keeps the database file open: it takes well
#: under a second, while letting go and taking the file again costs a checkpoint and a
#: reopen (about 0.2 s at 1M events), which a follower would pay for every refresh.
HOLD_FILE_BELOW = 20_000


@dataclass
class ProjectStats:
    """What one run did."""

    applied: int = 0
    dead_letters: int = 0
    batches: int = 0
    refreshed: bool = False
    seconds: float = 0.0
    #: of `seconds`, the time spent bringing the read models to the log (the rest appends)
    refresh_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.applied / self.seconds if self.seconds > 0 else 0.0


class Projector:
    """Appends a log source to its decoded log and keeps one version of the read models current."""

    def __init__(
        self, db: ProjectionDB, version: VersionInfo, source: LogSource | None, codec: AvroCodec
    ) -> None:
        self.db = db
        self.version = version
        self.source = source
        self.codec = codec
        self.log = db.log(version.source)
        self.maintainer = Maintainer(db, version)
        self.appender = None if source is None else LogAppender(self.log, source, codec)

    def apply(self, batch: RawBatch) -> tuple[int, int]:
        """Decode and commit one batch to the log; (events, dead letters)."""
        if self.appender is None:
            raise ValueError("this projector has no source")
        prepared = self.appender.prepare(batch)
        self.appender.commit(prepared)
        return prepared.size - prepared.dead_letters, prepared.dead_letters

    def refresh(self, *, scores_only: bool = False, full: bool = False) -> None:
        """Bring the version's tables to the log's latest snapshot, in one transaction."""
        self.maintainer.update(scores_only=scores_only, full=full)

    def needs_refresh(self) -> bool:
        return not self.maintainer.is_current()

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
        if self.appender is None:
            raise ValueError("this projector has no source: it can only refresh")
        appender = self.appender
        reporter = reporter or SilentReporter()
        stats = ProjectStats()
        started = time.monotonic()
        last_refresh = time.monotonic()
        # Whether the version lags the log. A committed batch makes it lag; otherwise it is
        # asked when first needed (asking opens the database file and reads the catalog,
        # which a refresh after a batch does anyway).
        dirty: bool | None = None
        positions = appender.positions()
        lag = appender.source.lag(positions)
        if lag > HOLD_FILE_BELOW:
            # Appending needs no DuckDB: let go of the file so that other commands get their turn.
            self.db.release()
        reporter.total(lag)
        while True:
            overtaken = False
            with appender.batches(follow=follow, positions=positions) as prepared_batches:
                for prepared in prepared_batches:
                    if should_stop():
                        break
                    if prepared.size:
                        try:
                            appender.commit(prepared)
                        except StaleBatchError:
                            # Another process appended the same source meanwhile (nothing was
                            # written twice): go on from where the log ends now.
                            overtaken = dirty = True
                            break
                        stats.applied += prepared.size - prepared.dead_letters
                        stats.dead_letters += prepared.dead_letters
                        stats.batches += 1
                        dirty = True
                        note = f"{stats.dead_letters} dead letters" if stats.dead_letters else ""
                        reporter.advance(prepared.size, events=prepared.size, note=note)
                        if stop_after_batches is not None and stats.batches >= stop_after_batches:
                            break
                    caught_up = not prepared.size
                    if follow and caught_up and dirty is None:
                        dirty = self.needs_refresh()
                    due = caught_up or time.monotonic() - last_refresh >= refresh_interval_s
                    if follow and dirty and due:
                        self._timed_refresh(stats)
                        dirty = False
                        last_refresh = time.monotonic()
                        if on_refresh is not None:
                            on_refresh()
                    if follow and caught_up and not dirty:
                        # Idle: let go of the file so that other commands get their turn.
                        self.db.release()
            if not overtaken:
                break
            positions = appender.positions()
        if dirty is None and not should_stop() and stop_after_batches is None:
            dirty = self.needs_refresh()
        if dirty and not should_stop() and stop_after_batches is None:
            self._timed_refresh(stats)
            if on_refresh is not None:
                on_refresh()
        stats.seconds = time.monotonic() - started
        return stats

    def _timed_refresh(self, stats: ProjectStats) -> None:
        started = time.monotonic()
        self.refresh()
        stats.refreshed = True
        stats.refresh_seconds += time.monotonic() - started


def parse_as_of(text: str | None) -> datetime | None:
    """An --as-of value: ISO date or timestamp, UTC when no zone is given."""
    if text is None:
        return None
    millis = parse_timestamp(text, "as_of")
    return datetime.fromtimestamp(millis / 1000, tz=UTC)
