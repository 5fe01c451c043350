"""Where a live-follow round spends its time: every SQL statement of the refresh, timed.

Builds (once, cached) a version over the log minus the last rounds' events, then copies it
and applies rounds of 1,000 new events with one Projector, releasing the database file
between rounds, as `project --follow` does, and times each statement the maintainer runs.
Prints JSON: per round the total, the sum of the statement times and their number; the
statements (first 90 characters) by mean time over the later rounds; and the last round's
statements in the order they ran. A profile, not a benchmark: bench/follow.py measures the
latency against a full rebuild.
"""

from __future__ import annotations

import re
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from common import BENCH_DIR, arguments, prepared_ledger, report
from follow import NEW_EVENTS, ROUNDS, CappedLedger

from crm_ledger.settings import log_root
from ledger.application import LedgerApplication
from projections.engine import Projector
from projections.sources import LedgerSource
from projections.spec import DEFAULT_SPEC, load_spec
from projections.store import ProjectionDB

TOP = 40
#: The first rounds warm caches: the mean is over the later ones.
WARM_UP = 2


class Timings:
    """Each statement's time, in the order they ran."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, float]] = []

    def add(self, sql: str, seconds: float) -> None:
        self.ran.append((re.sub(r"\s+", " ", sql).strip()[:90], seconds))


class TimedConnection:
    """A DuckDB connection whose `execute` records its time."""

    def __init__(self, connection: Any, timings: Timings) -> None:
        self._connection = connection
        self._timings = timings

    def execute(self, sql: str, *args: Any) -> Any:
        started = time.perf_counter()
        result = self._connection.execute(sql, *args)
        self._timings.add(sql, time.perf_counter() - started)
        return result

    def sql(self, sql: str, *args: Any) -> Any:
        started = time.perf_counter()
        result = self._connection.sql(sql, *args)
        self._timings.add(sql, time.perf_counter() - started)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class TimedDB(ProjectionDB):
    """A projection database whose connection times every statement."""

    def __init__(self, path: Path, timings: Timings) -> None:
        self.timings = timings
        super().__init__(path)

    @property
    def connection(self) -> Any:
        return TimedConnection(super().connection, self.timings)


def _template(events: int, seed: int) -> tuple[Path, LedgerApplication, int]:
    """A version built over the log minus the rounds' events (cached between runs)."""
    app = prepared_ledger(events, seed)
    total = app.max_position()
    path = BENCH_DIR / f"follow-template-{events}-{seed}.duckdb"
    if not path.with_suffix(".complete").exists():
        for leftover in BENCH_DIR.glob(f"{path.name}*"):
            leftover.unlink()
        shutil.rmtree(log_root(path), ignore_errors=True)
        db = ProjectionDB(path)
        version = db.ensure_version(load_spec(DEFAULT_SPEC), DEFAULT_SPEC.read_text(), "ledger")
        ledger = CappedLedger(app, total - ROUNDS * NEW_EVENTS)
        Projector(db, version, LedgerSource(ledger), app.codec).run()  # type: ignore[arg-type]
        db.close()
        path.with_suffix(".complete").touch()
    return path, app, total


def main() -> None:
    args = arguments(__doc__ or "", 1_000_000)
    template, app, total = _template(args.events, args.seed)
    path = BENCH_DIR / "follow-profile.duckdb"
    for leftover in BENCH_DIR.glob("follow-profile.duckdb*"):
        leftover.unlink()
    shutil.rmtree(log_root(path), ignore_errors=True)
    shutil.copy(template, path)
    shutil.copytree(log_root(template), log_root(path))
    timings = Timings()
    db = TimedDB(path, timings)
    version = db.versions()[0]
    ledger = CappedLedger(app, total - ROUNDS * NEW_EVENTS)
    projector = Projector(db, version, LedgerSource(ledger), app.codec)  # type: ignore[arg-type]
    db.release()
    rounds = []
    #: CPU seconds of this process (all its threads) per round: other jobs on the same
    #: cores stretch the wall-clock time far more than they change this.
    cpu_s: list[float] = []
    for _ in range(ROUNDS):
        ledger.cap += NEW_EVENTS
        timings.ran.clear()
        started, cpu = time.perf_counter(), time.process_time()
        stats = projector.run()
        seconds = time.perf_counter() - started
        assert stats.applied == NEW_EVENTS, stats
        rounds.append((seconds, list(timings.ran)))
        cpu_s.append(time.process_time() - cpu)
        db.release()
    db.close()
    later = rounds[WARM_UP:]
    mean: dict[str, float] = defaultdict(float)
    for _, ran in later:
        for key, seconds in ran:
            mean[key] += seconds / len(later)
    top = sorted(mean.items(), key=lambda item: -item[1])[:TOP]
    report(
        "follow_profile",
        {
            "rounds_s": [round(seconds, 3) for seconds, _ in rounds],
            "cpu_s": [round(seconds, 3) for seconds in cpu_s],
            "sql_s": [round(sum(s for _, s in ran), 3) for _, ran in rounds],
            "statements": [len(ran) for _, ran in rounds],
            "top_mean_ms": [[round(1000 * s, 1), key] for key, s in top],
            "last_round_ms": [[round(1000 * s, 1), key[:60]] for key, s in rounds[-1][1]],
        },
    )


if __name__ == "__main__":
    main()
