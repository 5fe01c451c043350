"""Cold build of the decoded log from Kafka: decoder workers in a consumer group vs. one process.

1M events relayed to 6 partitions. Baseline, measured in the same run: the single-process
appender as it was before native decoding (KafkaSource reading headers, fastavro batched per
schema, JSON payload per record in Python). Then the same process with native decoding, and
`project --workers` with 1 and 2 decoder processes (log only: the read models are not built).
Besides wall-clock rates it reports the CPU each variant took per event (this process, the
decoder processes, the broker), which depends much less on what else runs on the machine,
and where each worker run's time went: seconds per worker in consume, decode and commit,
and when each step ended (`*_at_s`, seconds after the workers were started: the process
runs, subscribed, imported, ready, assigned, last batch; every partition at its end; all
workers stopped). With `--old-design REV`, the decoder workers of that revision too, on
the same topic. With `--workers-only`, only the two worker runs (and their ratio): the part
that needs a quiet machine, ~30 s of it instead of a minute and a half.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from common import BENCH_DIR, ROOT, arguments, kafka, prepared_ledger, report, timed

from crm_cli import broker
from crm_ledger.kafka import delete_topics
from ledger.relay import Relay, RelayConfig
from projections.append import LogAppender, PreparedBatch
from projections.columns import LogBatchBuilder
from projections.decoder_process import WorkerConfig
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
#: CPU seconds per variant: of this process (the single-process paths, librdkafka's threads
#: included), of the decoder processes (workers), of the broker meanwhile. The machine is
#: shared: wall-clock rates follow the load of other jobs, CPU per event much less.
CPU: dict[str, float] = {}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _broker_cpu(bootstrap: str) -> float | None:
    """CPU seconds the bench's own broker has used so far (None for an outside broker)."""
    port = int(bootstrap.rsplit(":", 1)[1])
    pid_file = broker.BrokerConfig(data_dir=BENCH_DIR / f"kafka-{port}", port=port).pid_file
    try:
        fields = Path(f"/proc/{pid_file.read_text().split()[0]}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> tuple[float, float]:
    """CPU seconds the whole machine has been busy and in all, so far (from /proc/stat)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    idle = fields[3] + fields[4]  # idle and iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


def measured(name: str, bootstrap: str, work: Any) -> tuple[int, float]:
    """Run `work`; its events and wall seconds, with the CPU it took recorded in CPU.

    Also records how busy the machine's cores were meanwhile (`{name}_machine_busy`, the
    share of all cores' time) and the CPU seconds of everything else that ran on them
    (`{name}_others_s`: other jobs, this machine's own services), which tell a run that
    had the cores to itself from one that shared them.
    """
    own, children, broker_before = time.process_time(), _children_cpu(), _broker_cpu(bootstrap)
    busy_before, total_before = _machine_cpu()
    events, seconds = timed(work)
    busy_after, total_after = _machine_cpu()
    # Decoder processes that said they stopped are still exiting (their memory freed: not
    # waited for, as by `project --workers`); their CPU counts once they are reaped.
    for child in multiprocessing.active_children():
        child.join()
    CPU[f"{name}_process_s"] = round(time.process_time() - own, 2)
    CPU[f"{name}_workers_s"] = round(_children_cpu() - children, 2)
    broker_after = _broker_cpu(bootstrap)
    ours = CPU[f"{name}_process_s"] + CPU[f"{name}_workers_s"]
    if broker_before is not None and broker_after is not None:
        CPU[f"{name}_broker_s"] = round(broker_after - broker_before, 2)
        ours += CPU[f"{name}_broker_s"]
    CPU[f"{name}_machine_busy"] = round((busy_after - busy_before) / max(total_after - total_before, 1e-9), 2)
    CPU[f"{name}_others_s"] = round(max(0.0, busy_after - busy_before - ours), 2)
    return int(events), seconds


def _us_per_event(name: str, events: int) -> float:
    spent = CPU[f"{name}_process_s"] + CPU[f"{name}_workers_s"]
    return round(spent / events * 1e6, 2)


#: The partitions each worker held in the run with that many workers (see `held`).
HELD: dict[int, dict[int, list[int]]] = {}


def with_workers(bootstrap: str, topic: str, count: int) -> int:
    log = fresh_log(f"workers-{count}")
    config = WorkerConfig(bootstrap, topic, f"bench-{uuid.uuid4().hex[:8]}", Path(log.path))
    pool = DecoderPool(count, config)
    events, _, _ = supervise(pool, set(range(6)))
    TIMINGS.update({f"{count}_workers_{k}": round(v, 2) for k, v in pool.timings.items()})
    HELD[count] = {worker: sorted(partitions) for worker, partitions in pool.ended.items()}
    return events


def partition_sizes(log: DecodedLog) -> dict[int, tuple[int, int]]:
    """Events and value bytes per partition of a decoded log."""
    rows = log.dataset().to_table(columns=["partition", "value"])
    lengths = pa.table(
        {"partition": rows.column("partition"), "bytes": pc.binary_length(rows.column("value"))}
    )
    sizes = lengths.group_by("partition").aggregate([("bytes", "count"), ("bytes", "sum")]).to_pylist()
    return {int(row["partition"]): (int(row["bytes_count"]), int(row["bytes_sum"])) for row in sizes}


def held(count: int, sizes: dict[int, tuple[int, int]]) -> dict[str, Any]:
    """Which partitions each worker held, and their events and value bytes."""
    return {
        f"worker_{worker}": {
            "partitions": partitions,
            "events": sum(sizes[p][0] for p in partitions),
            "value_bytes": sum(sizes[p][1] for p in partitions),
        }
        for worker, partitions in sorted(HELD.get(count, {}).items())
    }


#: Run inside a clean export of an earlier revision: its decoder workers, 1 then 2, on the
#: same topic; prints "workers events seconds cpu_seconds" per run.
_OLD_WORKERS = """
import multiprocessing, resource, sys, time, uuid
from pathlib import Path
from projections.decoder_process import WorkerConfig
from projections.log import DecodedLog
from projections.scaleout import DecoderPool, supervise
bootstrap, topic, folder = sys.argv[1:4]
for count in (1, 2):
    path = Path(folder) / f"log-{count}"
    DecodedLog(path)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    config = WorkerConfig(bootstrap, topic, f"old-{uuid.uuid4().hex[:8]}", path)
    events, _, _ = supervise(DecoderPool(count, config), set(range(6)))
    seconds = time.perf_counter() - started
    for child in multiprocessing.active_children():
        child.join()  # a child's CPU counts once it is reaped
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(count, events, seconds, usage.ru_utime + usage.ru_stime - cpu, flush=True)
"""


def old_design_workers(rev: str, bootstrap: str, topic: str) -> dict[str, float]:
    """The decoder workers of `rev` (a clean export) on the same topic: rates and CPU per event."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / "tree"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        out = subprocess.run(
            [sys.executable, "-c", _OLD_WORKERS, bootstrap, topic, folder],
            check=True,
            capture_output=True,
            text=True,
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
        )
    for line in out.stdout.strip().splitlines():
        count, events, seconds, cpu = line.split()
        figures[f"old_design_workers_{count}_events_per_s"] = round(int(events) / float(seconds))
        figures[f"old_design_workers_{count}_cpu_us_per_event"] = round(float(cpu) / int(events) * 1e6, 2)
    return figures


def main() -> None:
    # The whole bench needs a quiet minute and a half; the two worker runs (and their ratio,
    # still measured in one run) ~30 s of it.
    args = arguments(
        __doc__ or "",
        1_000_000,
        {"--workers-only": "skip the single-process variants: time only 1 and 2 decoder workers"},
    )
    workers_only = bool(args.workers_only)
    load_before = os.getloadavg()[0]
    app = prepared_ledger(args.events, args.seed)
    with kafka() as bootstrap:
        topic = f"bench.decode.{uuid.uuid4().hex[:8]}"
        Relay(
            app, RelayConfig(bootstrap, topic, partitions=6, transactional_id=f"b-{topic}", batch_size=50_000)
        ).run()

        def source() -> KafkaSource:
            return KafkaSource(bootstrap, topic, group_id=f"bench-{uuid.uuid4().hex[:8]}", batch_size=50_000)

        baseline = native = 0
        baseline_s = native_s = 0.0
        if not workers_only:
            baseline, baseline_s = measured(
                "baseline",
                bootstrap,
                lambda: single_process(FastavroAppender(fresh_log("baseline"), source(), app.codec)),
            )
            native, native_s = measured(
                "native",
                bootstrap,
                lambda: single_process(LogAppender(fresh_log("native"), source(), app.codec)),
            )
        one, one_s = measured("workers_1", bootstrap, lambda: with_workers(bootstrap, topic, 1))
        two, two_s = measured("workers_2", bootstrap, lambda: with_workers(bootstrap, topic, 2))
        old = old_design_workers(args.old_design, bootstrap, topic) if args.old_design else {}
        delete_topics(bootstrap, [topic])
    sizes = partition_sizes(DecodedLog(BENCH_DIR / "decode-workers-1.log"))
    for name in ("baseline", "native", "workers-1", "workers-2"):
        shutil.rmtree(BENCH_DIR / f"decode-{name}.log", ignore_errors=True)
    two_rate = two / two_s
    one_rate = one / one_s
    if old:
        old["workers_2_vs_old_design"] = round(two_rate / old["old_design_workers_2_events_per_s"], 2)
        old["old_design_vs_workers_2_cpu_per_event"] = round(
            old["old_design_workers_2_cpu_us_per_event"] / _us_per_event("workers_2", two), 2
        )
    variants = [("workers_1", one), ("workers_2", two)]
    singles: dict[str, Any] = {}
    if not workers_only:
        base_rate = baseline / baseline_s
        variants = [("baseline", baseline), ("native", native), *variants]
        singles = {
            "baseline_single_process_fastavro_events_per_s": round(base_rate),
            "single_process_native_events_per_s": round(native / native_s),
            "workers_2_vs_baseline": round(two_rate / base_rate, 2),
            "native_vs_baseline": round(native / native_s / base_rate, 2),
        }
    report(
        "decode",
        {
            "events": two,
            "partitions": 6,
            "cores": os.cpu_count(),
            # the machine is shared: what else ran while measuring (1-minute load average)
            "load_average_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            **singles,
            "workers_1_events_per_s": round(one_rate),
            "workers_2_events_per_s": round(two_rate),
            "workers_2_vs_workers_1": round(two_rate / one_rate, 2),
            "goal_two_workers_events_per_s": GOAL_TWO_WORKERS,
            "goal_ratio": round(two_rate / GOAL_TWO_WORKERS, 2),
            "goal_scaling": GOAL_SCALING,
            "stretch_events_per_s": STRETCH,
            "all_equal_counts": len({events for _, events in variants}) == 1,
            # CPU per event (this process and the decoder processes; the broker's apart)
            "cpu_us_per_event": {name: _us_per_event(name, events) for name, events in variants},
            "cpu_s": CPU,
            # partitions as the relay's key hashing filled them, and the halves the group gave
            "partition_events_and_value_bytes": {str(p): list(v) for p, v in sorted(sizes.items())},
            "workers_2_held": held(2, sizes),
            **old,
            "time_per_step_s": TIMINGS,
        },
    )


if __name__ == "__main__":
    main()
