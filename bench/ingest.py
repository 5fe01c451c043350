"""Validated ingest: the bulk path vs. the eventsourcing-aggregate path, same file, same run.

Both read, validate (every rule), sort by time, encrypt, encode and store the same generated
history into fresh SQLite stores (the bulk path parses in worker processes, the baseline in
the main process, as before); `--postgres` also runs the bulk path into a PostgreSQL
server started from the machine's binaries. `--baseline-events N` caps the baseline's input
(its rate is steady; the whole file at ~8k events/s takes minutes).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from common import BENCH_DIR, ROOT, history_file, report, timed

from crm_ledger.settings import Settings
from ledger.application import LedgerApplication
from ledger.ingest import IngestSummary, RejectSink, ingest_records, read_jsonl
from ledger.records import RecordParser

GOAL = 30_000


def fresh_app(name: str) -> LedgerApplication:
    for leftover in BENCH_DIR.glob(f"{name}.sqlite*"):
        leftover.unlink()
    return LedgerApplication(Settings(store=str(BENCH_DIR / f"{name}.sqlite")).eventsourcing_env())


def ingest(
    app: LedgerApplication, history: Path, *, bulk: bool, limit: int | None = None
) -> tuple[IngestSummary, float]:
    # The baseline is the path as it was: parsed in this process, aggregates and events.
    records = read_jsonl(history, RecordParser(app.registry), workers=None if bulk else 0)
    if limit is not None:
        records = itertools.islice(records, limit)
    sink = RejectSink(None, echo=None)
    return timed(lambda: ingest_records(app, records, sink, batch_size=2000, bulk=bulk))  # type: ignore[no-any-return]


def postgres_rate(history: Path) -> float | None:
    sys.path.insert(0, str(ROOT))
    from tests.postgres_server import create_database, start

    base = Path(tempfile.mkdtemp(prefix="crm-ledger-bench-pg-"))
    started = start(base)
    if started is None:
        shutil.rmtree(base, ignore_errors=True)
        return None
    server, process = started
    try:
        app = LedgerApplication(
            Settings(store=create_database(server, f"bench_{uuid.uuid4().hex[:8]}")).eventsourcing_env()
        )
        summary, seconds = ingest(app, history, bulk=True)
        app.close()
        return summary.accepted / seconds
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="approximate event count")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline-events", type=int, default=None, help="cap the baseline's input")
    parser.add_argument("--postgres", action="store_true", help="also run the bulk path into PostgreSQL")
    args = parser.parse_args()
    history = history_file(args.events, args.seed)

    app = fresh_app("ingest-bulk")
    summary, seconds = ingest(app, history, bulk=True)
    app.close()
    bulk = summary.accepted / seconds

    base_app = fresh_app("ingest-aggregates")
    base_summary, base_seconds = ingest(base_app, history, bulk=False, limit=args.baseline_events)
    base_app.close()
    baseline = base_summary.accepted / base_seconds

    figures = {
        "events": summary.accepted,
        "rejected": summary.rejected,
        "seconds": round(seconds, 1),
        "bulk_events_per_s": round(bulk),
        "baseline_aggregate_path_events_per_s": round(baseline),
        "baseline_events": base_summary.accepted,
        "speedup_vs_aggregate_path": round(bulk / baseline, 2),
        "goal_events_per_s": GOAL,
        "goal_ratio": round(bulk / GOAL, 2),
    }
    if args.postgres:
        rate = postgres_rate(history)
        figures["postgres_bulk_events_per_s"] = None if rate is None else round(rate)
    report("ingest", figures)


if __name__ == "__main__":
    main()
