"""Live follow: how soon new events are visible in every read model, and what a refresh costs.

With about 1M events in the decoded log and a version built over it, batches of 1,000 new
events are appended (decoded, committed to the log) and the version is updated
incrementally; each round's latency is from the first read of the new events to the
commit of every read model. As `project --follow` does, one Projector (its appender, its
decoder, its log handle and its maintainer) serves every round, and the database file is
let go of between rounds (an idle follower releases it for other commands: closing
checkpoints it, outside the latency; the next refresh opens it again, inside it). Baseline
in the same run: a full rebuild of the version from the same log; with `--old-design REV`,
also this benchmark as it is at that revision (a clean export, the same cached ledger),
run right after. Each round's CPU time (this process, all its threads) is reported too:
other jobs on the same cores move it far less than the latency.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common import BENCH_DIR, ROOT, arguments, prepared_ledger, report, timed

from crm_ledger.settings import log_root
from ledger.application import LedgerApplication
from projections.engine import Projector
from projections.maintain import Maintainer
from projections.sources import LedgerSource
from projections.spec import DEFAULT_SPEC, load_spec
from projections.store import ProjectionDB

ROUNDS = 12
NEW_EVENTS = 1_000
GOAL_LATENCY_S = 1.0
GOAL_SHARE_OF_FULL = 0.10


class CappedLedger:
    """The ledger as if it ended at notification `cap` (raised between rounds)."""

    def __init__(self, app: LedgerApplication, cap: int) -> None:
        self.app = app
        self.cap = cap

    def read_notifications(self, start: int, limit: int, stop: int | None = None) -> Iterable[Any]:
        return self.app.read_notifications(start, limit, stop=min(self.cap, stop or self.cap))

    def max_position(self) -> int:
        return self.cap


def old_design(rev: str, events: int, seed: int) -> dict[str, Any]:
    """This benchmark's figures at revision `rev`, run from a clean export on the cached ledger."""
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / "tree"
        cache = tree / ".crm-ledger" / "bench"
        cache.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        for cached in BENCH_DIR.glob(f"ledger-{events}-{seed}.*"):
            (cache / cached.name).symlink_to(cached)
        out = subprocess.run(
            [sys.executable, "bench/follow.py", "--events", str(events), "--seed", str(seed)],
            check=True,
            capture_output=True,
            text=True,
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
        )
    figures: dict[str, Any] = json.loads(out.stdout)
    return figures


def main() -> None:
    args = arguments(__doc__ or "", 1_000_000)
    app = prepared_ledger(args.events, args.seed)
    total = app.max_position()
    db_path = BENCH_DIR / "follow.duckdb"
    for leftover in BENCH_DIR.glob("follow.duckdb*"):
        leftover.unlink()
    shutil.rmtree(log_root(db_path), ignore_errors=True)
    ledger = CappedLedger(app, total - ROUNDS * NEW_EVENTS)
    db = ProjectionDB(db_path)
    version = db.ensure_version(load_spec(DEFAULT_SPEC), DEFAULT_SPEC.read_text(), "ledger")
    source = LedgerSource(ledger)  # type: ignore[arg-type]
    Projector(db, version, source, app.codec).run()
    full_cpu = time.process_time()
    _, full_s = timed(lambda: Maintainer(db, version).update(full=True))
    full_cpu = time.process_time() - full_cpu
    latencies, refreshes, releases, cpu = [], [], [], []
    projector = Projector(db, version, source, app.codec)
    db.release()
    load_before = os.getloadavg()[0]
    for _ in range(ROUNDS):
        ledger.cap += NEW_EVENTS
        started_cpu = time.process_time()
        stats, seconds = timed(projector.run)
        cpu.append(time.process_time() - started_cpu)
        assert stats.applied == NEW_EVENTS, stats
        latencies.append(seconds)
        refreshes.append(stats.refresh_seconds)
        releases.append(timed(db.release)[1])
    load_after = os.getloadavg()[0]
    db.close()
    rounds_s = [round(s, 3) for s in latencies]
    latencies.sort()
    p50 = statistics.median(latencies)
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    figures: dict[str, Any] = {}
    if args.old_design:
        old = old_design(args.old_design, args.events, args.seed)
        figures = {
            "old_design": args.old_design,
            "old_design_latency_p50_s": old["latency_p50_s"],
            "old_design_latency_p95_s": old["latency_p95_s"],
            "old_design_full_rebuild_s": old["baseline_full_rebuild_s"],
            "old_design_share_of_full_rebuild": old["incremental_share_of_full_rebuild"],
            "old_design_refresh_share_of_full_rebuild": old.get("refresh_share_of_full_rebuild"),
            "old_design_load_average": old["load_average"],
            # Absent from revisions that did not measure it.
            "old_design_cpu_per_round_p50_s": old.get("cpu_per_round_p50_s"),
            "p50_vs_old_design": round(old["latency_p50_s"] / p50, 2),
        }
    report(
        "follow",
        {
            "events_in_log": total,
            "new_events_per_round": NEW_EVENTS,
            "rounds": ROUNDS,
            "latency_p50_s": round(p50, 3),
            "latency_p95_s": round(p95, 3),
            "baseline_full_rebuild_s": round(full_s, 2),
            "incremental_share_of_full_rebuild": round(p50 / full_s, 3),
            # The refresh alone (the maintainer's update, as the rebuild is): the latency above
            # also holds reading the new events from the ledger, decoding them and committing
            # them to the log, which the rebuild, from the log at hand, does not pay.
            "refresh_p50_s": round(statistics.median(refreshes), 3),
            "refresh_share_of_full_rebuild": round(statistics.median(refreshes) / full_s, 3),
            "goal_latency_p50_s": GOAL_LATENCY_S,
            "goal_share_of_full_rebuild": GOAL_SHARE_OF_FULL,
            "rounds_s": rounds_s,
            # CPU seconds of this process (all its threads) per round: other jobs on the same
            # cores stretch the wall-clock latency far more than they change this.
            "cpu_per_round_p50_s": round(statistics.median(cpu), 3),
            # What a refresh costs in CPU against the full rebuild's CPU (DuckDB runs a
            # rebuild on both cores, a small refresh mostly on one): the wall-clock share
            # above stays the headline figure.
            "baseline_full_rebuild_cpu_s": round(full_cpu, 2),
            "incremental_cpu_share_of_full_rebuild": round(statistics.median(cpu) / full_cpu, 3),
            # Letting go of the file after a round (a checkpoint), while the follower is idle.
            "release_after_round_p50_s": round(statistics.median(releases), 3),
            # Other work on the same cores moves every figure: the 1-minute load average
            # before and after the rounds says how much.
            "load_average": [round(load_before, 2), round(load_after, 2)],
            **figures,
        },
    )


if __name__ == "__main__":
    main()
