"""`replay --engine spark`: a version's read models computed by Spark, loaded as a version.

Like a DuckDB replay, it first brings the shared decoded log up to date (only what the
source holds beyond it), then reads one committed snapshot of the log (a Delta version)
with Spark, runs every read model of the spec there, and loads the tables into the
projection database as the spec's version, recording that log version and its stream
positions. The projection database is held only for the load, never while Spark runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from crm_ledger.progress import Reporter, SilentReporter
from crm_ledger.settings import Settings, log_root
from engines.load import load_version
from engines.spark_build import build_on_spark
from engines.spark_session import LOCAL_MASTER, spark_session
from projections.log import DecodedLog, log_slug
from projections.service import append_source, check_can_follow, ledger_for, source_label
from projections.spec import DEFAULT_SPEC, MetricSpec, load_spec
from projections.store import ProjectionDB, version_id


@dataclass(frozen=True)
class SparkReplayResult:
    """What a Spark replay did."""

    version: str
    name: str
    master: str
    log_version: int
    events: int
    seconds: float
    spark_seconds: float
    interrupted: bool = False

    def message(self) -> str:
        if self.interrupted:
            return f"{self.version} ({self.name}): interrupted; run the same command again to continue"
        return (
            f"{self.version} ({self.name}): built on Spark ({self.master}) from log version "
            f"{self.log_version}: {self.events} events in {self.seconds:.1f}s "
            f"(Spark {self.spark_seconds:.1f}s)"
        )


def replay_on_spark(
    settings: Settings,
    spec_path: Path,
    source: str,
    *,
    as_of: datetime | None = None,
    name: str | None = None,
    master: str = LOCAL_MASTER,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> SparkReplayResult:
    """Build the version of `spec_path` on Spark over the decoded log; load it into the projection DB."""
    spec = load_spec(spec_path)  # every spec error surfaces before any work
    spec_text = spec_path.read_text(encoding="utf-8")
    return _build_and_load(
        settings,
        spec,
        spec_text,
        source=source,
        as_of=as_of,
        name=name,
        master=master,
        reporter=reporter,
        should_stop=should_stop,
        promote_first=False,
    )


def project_on_spark(
    settings: Settings,
    source: str,
    metrics: Path | None,
    *,
    master: str = LOCAL_MASTER,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> SparkReplayResult:
    """`project --engine spark`: rebuild the promoted version on Spark, one shot.

    The promoted version's every table is computed again by Spark from the log brought up to
    date, and replaces the version's tables in one transaction. On an empty database, the
    version of `metrics` (or the default spec) is built and promoted, as `project` does.
    """
    label = source_label(settings, source)
    with ProjectionDB(settings.projections_db, wait_s=600) as db:
        promoted = db.promoted_version()
        version = db.find_version(promoted) if promoted is not None else None
    if version is None:
        spec_path = metrics or DEFAULT_SPEC
        spec, spec_text = load_spec(spec_path), spec_path.read_text(encoding="utf-8")
        name = None
    else:
        check_can_follow(version, label, metrics)
        spec, spec_text, name = version.spec(), version.spec_text, version.name
    return _build_and_load(
        settings,
        spec,
        spec_text,
        source=source,
        as_of=None,
        name=name,
        master=master,
        reporter=reporter,
        should_stop=should_stop,
        promote_first=True,
    )


def _build_and_load(
    settings: Settings,
    spec: MetricSpec,
    spec_text: str,
    *,
    source: str,
    as_of: datetime | None,
    name: str | None,
    master: str,
    reporter: Reporter | None,
    should_stop: Callable[[], bool],
    promote_first: bool,
) -> SparkReplayResult:
    reporter = reporter or SilentReporter()
    label = source_label(settings, source)
    target = version_id(spec, as_of, label)
    started = time.monotonic()
    app = ledger_for(settings, source)
    append_source(settings, source, label, app, reporter=reporter, should_stop=should_stop)
    if should_stop():
        return SparkReplayResult(target, name or spec.name, master, -1, 0, 0.0, 0.0, interrupted=True)
    log = DecodedLog(log_root(settings.projections_db) / log_slug(label))
    snapshot = log.version()
    with spark_session(master) as spark:
        built = build_on_spark(spark, log.path, snapshot, spec, target, as_of=as_of, reporter=reporter)
    if should_stop():
        return SparkReplayResult(target, name or spec.name, master, snapshot, 0, 0.0, 0.0, interrupted=True)
    with ProjectionDB(settings.projections_db, wait_s=600) as db:
        version = db.ensure_version(spec, spec_text, label, as_of=as_of, name=name)
        load_version(db, version, built.tables, log=log, log_version=snapshot, events=built.events)
        if promote_first and db.promoted_version() is None:
            db.promote(db.find_version(version.version))
    return SparkReplayResult(
        target,
        version.name,
        master,
        snapshot,
        built.events,
        time.monotonic() - started,
        built.seconds,
    )
