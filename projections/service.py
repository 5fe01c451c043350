"""Use cases of the read side that the CLI calls: build and follow the promoted version."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from crm_ledger.progress import Reporter
from crm_ledger.settings import Settings, log_root
from ledger.application import LedgerApplication
from ledger.connect import open_ledger
from projections.append import LogAppender
from projections.engine import Projector, ProjectStats
from projections.errors import ProjectionError
from projections.log import DecodedLog, log_slug
from projections.sources import open_source
from projections.spec import DEFAULT_SPEC, load_spec
from projections.store import ProjectionDB, VersionInfo
from schemas.codec import AvroCodec
from schemas.registry import SchemaRegistry


def source_label(settings: Settings, source: str) -> str:
    return "ledger" if source == "ledger" else f"kafka:{settings.events_topic}"


def ledger_for(settings: Settings, source: str) -> LedgerApplication | None:
    """The ledger, when `source` is the ledger. A Kafka source needs no event store: a
    consumer on another host has none, and opening one would make an empty store file (or
    fail on an unreachable PostgreSQL) for nothing."""
    return open_ledger(settings) if source == "ledger" else None


def codec_of(app: LedgerApplication | None) -> AvroCodec:
    """The codec events are decoded with: the ledger's, or the same one made from the schemas."""
    return app.codec if app is not None else AvroCodec(SchemaRegistry.load(), epoch_millis=True)


def project_promoted(
    settings: Settings,
    source: str,
    metrics: Path | None,
    *,
    follow: bool,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    refresh_interval_s: float = 5.0,
    on_refresh: Callable[[ProjectionDB], None] | None = None,
) -> str:
    """Bring the promoted version up to date (creating and promoting one on first use).

    When following, a promotion made by another command is noticed at the next refresh and
    the follower moves on to the newly promoted version.
    """
    app = ledger_for(settings, source)
    label = source_label(settings, source)
    messages: list[str] = []
    with ProjectionDB(settings.projections_db) as db:
        while True:
            promoted = db.promoted_version()
            if promoted is None:
                spec_path = metrics or DEFAULT_SPEC
                spec = load_spec(spec_path)
                version = db.ensure_version(spec, spec_path.read_text(encoding="utf-8"), label)
            else:
                version = db.find_version(promoted)
                check_can_follow(version, label, None if messages else metrics)
            switched: list[bool] = [False]

            def refreshed(version: VersionInfo = version, switched: list[bool] = switched) -> None:
                current = db.promoted_version()
                if current is None:
                    # A first build is queryable from its first refresh, not only when it stops.
                    db.promote(db.find_version(version.version))
                    current = version.version
                if on_refresh is not None:
                    on_refresh(db)
                switched[0] = current != version.version

            projector = Projector(db, version, open_source(settings, source, app), codec_of(app))
            try:
                stats = projector.run(
                    follow=follow,
                    reporter=reporter,
                    should_stop=_stop_or_switched(should_stop, switched),
                    refresh_interval_s=refresh_interval_s,
                    on_refresh=refreshed,
                )
            finally:
                if projector.source is not None:
                    projector.source.close()
            if promoted is None and db.promoted_version() is None and not projector.needs_refresh():
                db.promote(db.find_version(version.version))
                if on_refresh is not None:
                    on_refresh(db)  # the first build is only promoted now: publish it too
            line = (
                f"{version.version} ({version.name}): applied {stats.applied} events"
                f" in {stats.seconds:.1f}s ({stats.rate:,.0f} ev/s), {stats.dead_letters} dead letters"
            )
            if stats.refreshed and not stats.applied:
                # Events another process decoded into the log (a replay, the workers) reached
                # the read models all the same: "applied 0" alone read as nothing done.
                events = db.find_version(version.version).events
                line += f"; the read models brought up to the log ({events} events)"
            messages.append(line)
            if not (follow and switched[0] and not should_stop()):
                return "\n".join(messages)


def catch_up(
    db: ProjectionDB,
    version: VersionInfo,
    *,
    settings: Settings,
    source: str,
    app: LedgerApplication | None,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[ProjectStats, Projector]:
    """Bring `version` up to date with `source` once (no following); closes the source."""
    projector = Projector(db, version, open_source(settings, source, app), codec_of(app))
    try:
        return projector.run(reporter=reporter, should_stop=should_stop), projector
    finally:
        if projector.source is not None:
            projector.source.close()


def append_source(
    settings: Settings,
    source: str,
    label: str,
    app: LedgerApplication | None,
    *,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Append what `source` holds beyond its decoded log; returns the events appended."""
    log = DecodedLog(log_root(settings.projections_db) / log_slug(label))
    appended, _ = _append_all(log, settings, source, app, reporter=reporter, should_stop=should_stop)
    return appended


def _append_all(
    log: DecodedLog,
    settings: Settings,
    source: str,
    app: LedgerApplication | None,
    *,
    reporter: Reporter | None,
    should_stop: Callable[[], bool],
) -> tuple[int, bool]:
    """Append what `source` holds beyond `log`; (events appended, whether it reached the end)."""
    appender = LogAppender(log, open_source(settings, source, app), codec_of(app))
    appended = 0
    try:
        if reporter is not None:
            reporter.total(appender.source.lag(appender.positions()))
        with appender.batches(follow=False) as batches:
            for prepared in batches:
                if should_stop():
                    return appended, False
                appender.commit(prepared)
                appended += prepared.size - prepared.dead_letters
                if reporter is not None:
                    reporter.advance(prepared.size, events=prepared.size)
    finally:
        appender.source.close()
    return appended, True


def rebuild_log(
    settings: Settings,
    source: str,
    label: str,
    app: LedgerApplication | None,
    *,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Decode the whole source again into a fresh log, then put it in place of the shared one.

    For when someone doubts the log. The old log is moved aside and removed only once the
    new one is complete; a killed rebuild leaves the old log untouched.
    """
    current = log_root(settings.projections_db) / log_slug(label)
    fresh = current.with_name(current.name + ".rebuild")
    if fresh.exists():
        shutil.rmtree(fresh)
    try:
        decoded, complete = _append_all(
            DecodedLog(fresh), settings, source, app, reporter=reporter, should_stop=should_stop
        )
    except BaseException:
        # Half a log beside the shared one (a broker gone mid-read): this run's, of no use to any.
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    if not complete:
        return decoded
    retired = current.with_name(current.name + ".old")
    if retired.exists():
        # A log an earlier rebuild replaced and was stopped while removing: renaming onto it fails.
        shutil.rmtree(retired)
    if current.exists():
        current.rename(retired)
    fresh.rename(current)
    shutil.rmtree(retired, ignore_errors=True)
    return decoded


def _stop_or_switched(should_stop: Callable[[], bool], switched: list[bool]) -> Callable[[], bool]:
    return lambda: should_stop() or switched[0]


def check_can_follow(version: VersionInfo, label: str, metrics: Path | None) -> None:
    if version.source != label:
        raise ProjectionError(
            f"the promoted version {version.version} reads from {version.source!r}, not {label!r}; "
            f"build a version from {label!r} with `crm-ledger replay` and promote it first"
        )
    if version.as_of is not None:
        raise ProjectionError(
            f"the promoted version {version.version} is frozen as of {version.as_of}; promote a live version"
        )
    if metrics is not None:
        spec = load_spec(metrics)
        if spec.content_hash != version.spec_hash:
            raise ProjectionError(
                f"version {version.version} is promoted with other metrics; "
                "use `crm-ledger replay --metrics` to build and compare a new version"
            )
