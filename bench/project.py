"""Kafka -> DuckDB read models: batched engine vs. one-event-at-a-time and decode-only rates."""

from __future__ import annotations

import shutil
import uuid

import duckdb
from common import BENCH_DIR, arguments, kafka, prepared_ledger, report, timed

from crm_ledger.kafka import delete_topics
from crm_ledger.settings import log_root
from ledger.relay import Relay, RelayConfig
from projections.engine import Projector
from projections.sources import KafkaSource, Position, RawBatch
from projections.spec import DEFAULT_SPEC, load_spec
from projections.store import ProjectionDB

GOAL = 250_000
NAIVE_SAMPLE = 5_000


def fresh_db(name: str) -> ProjectionDB:
    path = BENCH_DIR / f"{name}.duckdb"
    for leftover in BENCH_DIR.glob(f"{name}.duckdb*"):
        leftover.unlink()
    shutil.rmtree(log_root(path), ignore_errors=True)
    return ProjectionDB(path)


def main() -> None:
    args = arguments(__doc__ or "", 1_000_000)
    app = prepared_ledger(args.events, args.seed)
    spec = load_spec(DEFAULT_SPEC)
    states = [n.state for n in app.read_notifications(1, app.max_position())]
    _, decode_seconds = timed(
        lambda: [app.codec.decode_many(states[i : i + 20_000]) for i in range(0, len(states), 20_000)]
    )
    decode_rate = len(states) / decode_seconds
    _, single_decode_seconds = timed(lambda: [app.codec.decode(s) for s in states[:100_000]])
    single_decode_rate = min(len(states), 100_000) / single_decode_seconds

    with kafka() as bootstrap:
        topic = f"bench.project.{uuid.uuid4().hex[:8]}"
        Relay(
            app, RelayConfig(bootstrap, topic, partitions=6, transactional_id=f"b-{topic}", batch_size=50_000)
        ).run()

        db = fresh_db("project-batched")
        version = db.ensure_version(spec, DEFAULT_SPEC.read_text(), f"kafka:{topic}")
        source = KafkaSource(bootstrap, topic, group_id=f"bench-{topic}", batch_size=50_000)
        projector = Projector(db, version, source, app.codec)
        stats, seconds = timed(projector.run)
        source.close()
        _, refresh_seconds = timed(projector.refresh)
        rate = stats.applied / seconds
        db.close()

        naive_db = fresh_db("project-naive")
        naive_version = naive_db.ensure_version(spec, DEFAULT_SPEC.read_text(), "naive")
        naive = Projector(naive_db, naive_version, source, app.codec)
        sample = states[:NAIVE_SAMPLE]

        def one_at_a_time() -> None:
            for offset, value in enumerate(sample):
                batch = RawBatch([value], [offset + 1], ["naive"], [0], [offset], [None])
                batch.positions = {"naive:0": Position("naive:0", offset)}
                naive.apply(batch)
            naive.refresh()

        _, naive_seconds = timed(one_at_a_time)
        naive_rate = len(sample) / naive_seconds
        naive_db.close()
        delete_topics(bootstrap, [topic])

    report(
        "project",
        {
            "events": stats.applied,
            "end_to_end_events_per_s": round(rate),
            "of_which_refresh_s": round(refresh_seconds, 2),
            "naive_one_event_per_transaction_events_per_s": round(naive_rate),
            "speedup_vs_naive": round(rate / naive_rate, 1),
            "avro_decode_only_batched_events_per_s": round(decode_rate),
            "avro_decode_only_one_by_one_events_per_s": round(single_decode_rate),
            "end_to_end_vs_decode_only": round(rate / decode_rate, 2),
            "goal_events_per_s": GOAL,
            "goal_ratio": round(rate / GOAL, 2),
            "duckdb": duckdb.__version__,
        },
    )


if __name__ == "__main__":
    main()
