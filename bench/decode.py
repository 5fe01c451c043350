"""Cold build of the decoded log from Kafka: decoder workers in a consumer group vs. one process.

1M events relayed to 6 partitions. Baseline, measured in the same run: the single-process
appender as it was before native decoding (KafkaSource reading headers, fastavro batched per
schema, JSON payload per record in Python). Then the same process with native decoding, and
`project --workers` with 1 and 2 decoder processes (log only: the read models are not built).
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from common import BENCH_DIR, arguments, kafka, prepared_ledger, report, timed

from crm_ledger.kafka import delete_topics
from ledger.relay import Relay, RelayConfig
from projections.append import LogAppender, PreparedBatch
from projections.columns import LogBatchBuilder
from projections.decoders import WorkerConfig
from projections.log import DecodedLog
from projections.scaleout import DecoderPool, supervise
from projections.sources import KafkaSource, RawBatch
from schemas.codec import AvroCodec

GOAL_TWO_WORKERS = 120_000
STRETCH = 250_000
GOAL_SCALING = 1.6


class FastavroAppender(LogAppender):
    """The appender as it was: fastavro batched per schema, records to Arrow through dicts."""

    def __init__(self, log: DecodedLog, source: KafkaSource, codec: AvroCodec) -> None:
        super().__init__(log, source, codec)
        self.old_builder = LogBatchBuilder(codec.registry)

    def prepare(self, batch: RawBatch) -> PreparedBatch:
        groups, errors = self.codec.decode_groups(batch.values)
        now = datetime.now(tz=UTC).replace(tzinfo=None)
        table = self.old_builder.build(batch, groups, errors, now)
        return PreparedBatch(table, list(batch.positions.values()), len(batch), len(errors))


def fresh_log(name: str) -> DecodedLog:
    path = BENCH_DIR / f"decode-{name}.log"
    shutil.rmtree(path, ignore_errors=True)
    return DecodedLog(path)


def single_process(appender: LogAppender) -> int:
    events = 0
    with appender.batches(follow=False) as batches:
        for prepared in batches:
            appender.commit(prepared)
            events += prepared.size
    appender.source.close()
    return events


TIMINGS: dict[str, float] = {}


def with_workers(bootstrap: str, topic: str, count: int) -> int:
    log = fresh_log(f"workers-{count}")
    config = WorkerConfig(bootstrap, topic, f"bench-{uuid.uuid4().hex[:8]}", Path(log.path))
    pool = DecoderPool(count, config)
    events, _, _ = supervise(pool, set(range(6)))
    TIMINGS.update({f"{count}_workers_{k}": round(v, 2) for k, v in pool.timings.items()})
    return events


def main() -> None:
    args = arguments(__doc__ or "", 1_000_000)
    load_before = os.getloadavg()[0]
    app = prepared_ledger(args.events, args.seed)
    with kafka() as bootstrap:
        topic = f"bench.decode.{uuid.uuid4().hex[:8]}"
        Relay(
            app, RelayConfig(bootstrap, topic, partitions=6, transactional_id=f"b-{topic}", batch_size=50_000)
        ).run()

        def source() -> KafkaSource:
            return KafkaSource(bootstrap, topic, group_id=f"bench-{uuid.uuid4().hex[:8]}", batch_size=50_000)

        baseline, baseline_s = timed(
            lambda: single_process(FastavroAppender(fresh_log("baseline"), source(), app.codec))
        )
        native, native_s = timed(
            lambda: single_process(LogAppender(fresh_log("native"), source(), app.codec))
        )
        one, one_s = timed(lambda: with_workers(bootstrap, topic, 1))
        two, two_s = timed(lambda: with_workers(bootstrap, topic, 2))
        delete_topics(bootstrap, [topic])
    for name in ("baseline", "native", "workers-1", "workers-2"):
        shutil.rmtree(BENCH_DIR / f"decode-{name}.log", ignore_errors=True)
    base_rate = baseline / baseline_s
    two_rate = two / two_s
    one_rate = one / one_s
    report(
        "decode",
        {
            "events": baseline,
            "partitions": 6,
            "cores": os.cpu_count(),
            # the machine is shared: what else ran while measuring (1-minute load average)
            "load_average_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "baseline_single_process_fastavro_events_per_s": round(base_rate),
            "single_process_native_events_per_s": round(native / native_s),
            "workers_1_events_per_s": round(one_rate),
            "workers_2_events_per_s": round(two_rate),
            "workers_2_vs_baseline": round(two_rate / base_rate, 2),
            "workers_2_vs_workers_1": round(two_rate / one_rate, 2),
            "native_vs_baseline": round(native / native_s / base_rate, 2),
            "goal_two_workers_events_per_s": GOAL_TWO_WORKERS,
            "goal_ratio": round(two_rate / GOAL_TWO_WORKERS, 2),
            "goal_scaling": GOAL_SCALING,
            "stretch_events_per_s": STRETCH,
            "all_equal_counts": baseline == native == one == two,
            "time_per_step_s": TIMINGS,
        },
    )


if __name__ == "__main__":
    main()
