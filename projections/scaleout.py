"""`project --workers N`: N decoder processes in one consumer group, one maintainer.

The main process starts the decoder workers (projections.decoders), each a member of one
Kafka consumer group appending its partitions' batches to the decoded log, and itself only
maintains the promoted version's read models from the log's snapshots. Without `follow` it
stops the workers once every partition has been read to its end and committed, then brings
the read models up to date once.

A worker that dies (kill -9, out of memory) stops the run with one line: everything it
committed is in the log, nothing else, and the next run resumes each partition from the log.
Ctrl-C reaches every process; the workers ignore it and the main process stops them.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from crm_ledger.errors import KafkaUnavailableError
from crm_ledger.kafka import BrokerWatch
from crm_ledger.progress import Reporter, SilentReporter
from crm_ledger.settings import Settings
from projections.decoder_process import WorkerConfig, WorkerReport, process_main
from projections.errors import ProjectionError
from projections.maintain import Maintainer
from projections.service import check_can_follow, source_label
from projections.sources import KafkaSource
from projections.spec import DEFAULT_SPEC, load_spec
from projections.store import ProjectionDB, VersionInfo

#: Seconds the workers get to leave the group and exit once told to stop.
STOP_TIMEOUT_S = 60.0


@contextmanager
def _main_script_not_rerun() -> Iterator[None]:
    """Spawn processes without running the parent's main script in them again.

    multiprocessing's spawn runs the parent's `__main__` (the `crm-ledger` script, a
    benchmark) in every child first, for targets defined there. The workers' target and
    arguments are importable by their own module names, and that script's imports would
    only delay the moment each worker joins the group (projections.decoder_process).
    """
    main = sys.modules["__main__"]
    saved: dict[str, Any] = {n: main.__dict__[n] for n in ("__file__", "__spec__") if n in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


class DecoderPool:
    """The decoder processes of one run and what they report."""

    def __init__(self, count: int, config: WorkerConfig) -> None:
        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self.reports: Any = context.Queue()
        config = replace(config, group_size=count)
        self.processes = [
            context.Process(target=process_main, args=(i, config, self.stop, self.reports), daemon=True)
            for i in range(count)
        ]
        #: where the workers' time went, summed over their reports (see `count`), and when
        #: each step of the run ended, in seconds after `start`
        self.timings: dict[str, float] = {}
        #: the partitions each worker read to their end (for benchmarks: who held what)
        self.ended: dict[int, list[int]] = {}
        self.started_at = 0.0

    def count(self, report: WorkerReport) -> None:
        """Add a report's figures to `timings` (events, seconds and retries per worker and step)."""
        for step in ("events", "consume_s", "decode_s", "commit_s", "retries"):
            key = f"worker_{report.worker}_{step}"
            self.timings[key] = self.timings.get(key, 0) + getattr(report, step)
        self.ended.setdefault(report.worker, []).extend(report.at_end)
        for name, at in report.marks:
            self.mark(f"worker_{report.worker}_{name}", at)
        if report.events or report.dead_letters or report.at_end:
            self.mark(f"worker_{report.worker}_last_batch", time.time())

    def mark(self, name: str, at: float) -> None:
        """Record in `timings` when a step ended (`at`: wall clock), in seconds after `start`."""
        self.timings[f"{name}_at_s"] = round(at - self.started_at, 3)

    def start(self) -> None:
        # Ctrl-C goes to the whole process group: a worker must ignore it from its first
        # instruction (an ignored signal stays ignored across exec), the main process decides.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.started_at = time.time()
        try:
            with _main_script_not_rerun():
                for process in self.processes:
                    process.start()
        finally:
            signal.signal(signal.SIGINT, previous)

    def drain(self, wait_s: float) -> list[WorkerReport]:
        reports = []
        try:
            reports.append(self.reports.get(timeout=wait_s))
            while True:
                reports.append(self.reports.get_nowait())
        except queue.Empty:
            return reports

    def dead(self) -> str | None:
        """A line about the first worker that exited although it was not told to stop."""
        for index, process in enumerate(self.processes):
            code = process.exitcode
            if code is not None and not self.stop.is_set():
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                return f"decoder worker {index} stopped ({how})"
        return None

    def close(self) -> None:
        """Stop the workers: wait until each has said it stopped, or exited; kill the rest.

        A worker says so once it left the group and everything it did is in the log. Its
        exit itself (the kernel freeing ~1 GB: ~0.1 s) is not waited for; multiprocessing
        reaps it later.
        """
        self.stop.set()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        running = {i for i, process in enumerate(self.processes) if process.pid is not None}
        while running and time.monotonic() < deadline:
            try:
                report = self.reports.get(timeout=0.05)
            except queue.Empty:
                report = None
            if report is not None and report.stopped:
                running.discard(report.worker)
            running = {i for i in running if self.processes[i].exitcode is None}
        for index in running:
            self.processes[index].kill()
            self.processes[index].join()
        self.reports.close()
        self.reports.join_thread()
        self.mark("stopped", time.time())


def project_with_workers(
    settings: Settings,
    workers: int,
    metrics: Path | None,
    *,
    follow: bool,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    refresh_interval_s: float = 5.0,
    on_refresh: Callable[[ProjectionDB], None] | None = None,
    batch_size: int = 150_000,
) -> str:
    """Decode the events topic with `workers` processes and maintain the promoted version."""
    reporter = reporter or SilentReporter()
    label = source_label(settings, "kafka")
    watch = BrokerWatch(settings.bootstrap, lambda _: None, settings.broker_timeout_s)
    source = KafkaSource(settings.bootstrap, settings.events_topic, watch=watch)
    try:
        partitions = {int(s.rsplit(":", 1)[1]) for s in source.streams()}
        with ProjectionDB(settings.projections_db) as db:
            version = _version(db, label, metrics)
            log = db.log(label)
            positions = log.positions(source.streams())
            # The workers resume at these positions: a topic made anew must not be read on from.
            source.check_continues(positions)
            reporter.total(source.lag(positions))
            db.release()  # appending needs no DuckDB
            config = WorkerConfig(
                settings.bootstrap,
                settings.events_topic,
                # A group of this run only: members of an earlier, killed run are not waited for.
                f"crm-ledger-decoders-{uuid.uuid4().hex[:12]}",
                log.path,
                batch_size=batch_size,
                broker_timeout_s=settings.broker_timeout_s,
            )
            started = time.monotonic()
            events, dead_letters, interrupted = _run(
                db,
                version,
                DecoderPool(workers, config),
                partitions,
                reporter=reporter,
                should_stop=should_stop,
                follow=follow,
                refresh_interval_s=refresh_interval_s,
                on_refresh=on_refresh,
            )
            seconds = time.monotonic() - started
    finally:
        source.close()
    rate = events / seconds if seconds > 0 else 0.0
    what = "stopped" if interrupted else "applied"
    return (
        f"{version.version} ({version.name}): {what} after {events} events decoded by {workers} workers"
        f" in {seconds:.1f}s ({rate:,.0f} ev/s), {dead_letters} dead letters"
    )


def _version(db: ProjectionDB, label: str, metrics: Path | None) -> VersionInfo:
    promoted = db.promoted_version()
    if promoted is None:
        spec_path = metrics or DEFAULT_SPEC
        return db.ensure_version(load_spec(spec_path), spec_path.read_text(encoding="utf-8"), label)
    version = db.find_version(promoted)
    check_can_follow(version, label, metrics)
    return version


def _run(
    db: ProjectionDB,
    version: VersionInfo,
    workers: DecoderPool,
    partitions: set[int],
    *,
    reporter: Reporter,
    should_stop: Callable[[], bool],
    follow: bool,
    refresh_interval_s: float,
    on_refresh: Callable[[ProjectionDB], None] | None,
) -> tuple[int, int, bool]:
    """Supervise the workers and refresh the read models; (events, dead letters, interrupted)."""
    maintainer = Maintainer(db, version)
    last_refresh = [time.monotonic()]

    def tick() -> None:
        if follow and time.monotonic() - last_refresh[0] >= refresh_interval_s:
            _refresh(db, maintainer, version, on_refresh)
            last_refresh[0] = time.monotonic()

    events, dead_letters, interrupted = supervise(
        workers, partitions, reporter=reporter, should_stop=should_stop, follow=follow, tick=tick
    )
    if not interrupted:
        _refresh(db, maintainer, version, on_refresh)
    return events, dead_letters, interrupted


def supervise(
    workers: DecoderPool,
    partitions: set[int],
    *,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    follow: bool = False,
    tick: Callable[[], None] = lambda: None,
) -> tuple[int, int, bool]:
    """Run the workers until every partition is read to its end (or, following, until stopped).

    Calls `tick` between reports (the maintainer's turn). Returns (events, dead letters,
    whether it was interrupted); a worker's failure or death is raised as one line.
    """
    reporter = reporter or SilentReporter()
    events = dead_letters = 0
    at_end: set[int] = set()
    workers.timings.clear()
    workers.ended.clear()
    workers.start()
    try:
        while True:
            for report in workers.drain(0.2):
                if report.error is not None:
                    error = KafkaUnavailableError if report.transient else ProjectionError
                    raise error(report.error)
                events += report.events
                dead_letters += report.dead_letters
                at_end.update(report.at_end)
                workers.count(report)
                if report.events or report.dead_letters:
                    reporter.advance(report.events + report.dead_letters, events=report.events)
            died = workers.dead()
            if died is not None:
                raise ProjectionError(
                    f"{died}; the log holds every batch committed so far: run the command again to resume"
                )
            if should_stop():
                return events, dead_letters, True
            if not follow and partitions <= at_end:
                workers.mark("all_at_end", time.time())
                return events, dead_letters, False
            tick()
    finally:
        workers.close()


def _refresh(
    db: ProjectionDB,
    maintainer: Maintainer,
    version: VersionInfo,
    on_refresh: Callable[[ProjectionDB], None] | None,
) -> None:
    if not maintainer.is_current():
        maintainer.update()
        if db.promoted_version() is None:
            db.promote(db.find_version(version.version))
        if on_refresh is not None:
            on_refresh(db)
    db.release()
