"""Bulk ingest into the SQLite event store vs. the naive path (one store save per event)."""

from __future__ import annotations

import itertools

from common import BENCH_DIR, arguments, history_file, report, timed

from crm_ledger.settings import Settings
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser

GOAL = 30_000


def fresh_app(name: str) -> LedgerApplication:
    for leftover in BENCH_DIR.glob(f"{name}.sqlite*"):
        leftover.unlink()
    return LedgerApplication(Settings(store=str(BENCH_DIR / f"{name}.sqlite")).eventsourcing_env())


def main() -> None:
    args = arguments(__doc__ or "", 200_000)
    history = history_file(args.events, args.seed)

    app = fresh_app("ingest-batched")
    summary, seconds = timed(
        lambda: ingest_records(
            app, read_file(history, RecordParser(app.registry)), RejectSink(None, echo=None), batch_size=2000
        )
    )
    batched = summary.accepted / seconds

    naive_events = min(10_000, summary.accepted)
    naive_app = fresh_app("ingest-naive")
    parser = RecordParser(naive_app.registry)
    records = [r.fact for r in itertools.islice(read_file(history, parser), naive_events) if r.fact]

    def one_by_one() -> int:
        for fact in records:
            naive_app.record([fact])
        return len(records)

    count, naive_seconds = timed(one_by_one)
    naive = count / naive_seconds
    report(
        "ingest",
        {
            "events": summary.accepted,
            "batched_events_per_s": round(batched),
            "naive_events_per_s": round(naive),
            "naive_sample_events": count,
            "speedup_vs_naive": round(batched / naive, 2),
            "goal_events_per_s": GOAL,
            "goal_ratio": round(batched / GOAL, 2),
        },
    )


if __name__ == "__main__":
    main()
