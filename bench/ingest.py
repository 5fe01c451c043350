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
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from common import BENCH_DIR, ROOT, history_file, report, timed

from crm_ledger.settings import Settings
from ledger.application import LedgerApplication
from ledger.ingest import DEFAULT_BATCH_SIZE, IngestSummary, RejectSink, ingest_records, read_jsonl
from ledger.records import RecordParser

GOAL = 30_000
#: The machine's 1-minute load average when the measurement began (other work shares it).
LOAD_AT_START = 0.0


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
    cpu_before = _cpu_seconds()
    batch = DEFAULT_BATCH_SIZE
    with _ChildrenCpu() as children:
        summary, seconds = timed(lambda: ingest_records(app, records, sink, batch_size=batch, bulk=bulk))
    main_cpu, children_cpu = (
        after - before for after, before in zip(_cpu_seconds(), cpu_before, strict=True)
    )
    main_cpu -= children.own_seconds  # the sampler's thread is no part of the ingest
    writer_cpu = children.writer_seconds()
    CPU[bulk] = (
        main_cpu / summary.accepted * 1e6,
        (children_cpu - writer_cpu) / summary.accepted * 1e6,
        writer_cpu / summary.accepted * 1e6,
    )
    return summary, seconds


class _ChildrenCpu:
    """Samples the CPU time of this process's children while a run lasts (from /proc), to tell
    the writing process's CPU from the parse workers' (getrusage sums all children).

    `parent`: sample that process's children instead (another revision's run).
    """

    def __init__(self, parent: int | None = None) -> None:
        self._parent = os.getpid() if parent is None else parent
        self._seen: dict[int, tuple[str, float]] = {}
        #: CPU seconds the sampling itself took (a scan of /proc every 0.2 s: ~3 ms each, about
        #: 1 µs per event of a 1M-event run), taken out of the measured process's figure.
        self.own_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _ChildrenCpu:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        ticks = os.sysconf("SC_CLK_TCK")
        while True:
            for pid in _children(self._parent):
                try:
                    command = (
                        Path(f"/proc/{pid}/cmdline")
                        .read_bytes()
                        .replace(b"\0", b" ")
                        .decode("utf-8", "replace")
                    )
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue  # ended meanwhile
                self._seen[pid] = (command, (int(fields[11]) + int(fields[12])) / ticks)
            self.own_seconds = time.thread_time()
            if self._stop.wait(0.2):
                return

    def writer_seconds(self) -> float:
        """CPU seconds of the writing process (as last seen: it ends with the run, within 0.2 s)."""
        return sum(cpu for command, cpu in self._seen.values() if "ledger.write_process" in command)


def _children(parent: int) -> list[int]:
    # /proc/<pid>/task/<tid>/children needs a kernel option some machines lack: look for
    # processes whose parent is `parent` instead.
    me = str(parent)
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        if fields[1] == me:
            pids.append(int(entry.name))
    return pids


#: Microseconds of CPU per accepted event (main process, parse worker processes, writing
#: process) of the last run of each path: on a machine shared with other work, what each path
#: needs of a core is steadier than its wall-clock rate.
CPU: dict[bool, tuple[float, float, float]] = {}


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds of this process and of its finished children (the parse workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


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


#: Run in a process of its own with another revision's source tree first on the path: its
#: bulk path, with its own default batch size, over the same file into a fresh SQLite store
#: (argv: history, store).
_OLD_DESIGN_RUN = """
import json, resource, sys, time
from pathlib import Path
from crm_ledger.settings import Settings
from ledger.application import LedgerApplication
from ledger.ingest import DEFAULT_BATCH_SIZE, RejectSink, ingest_records, read_jsonl
from ledger.records import RecordParser
app = LedgerApplication(Settings(store=sys.argv[2]).eventsourcing_env())
records = read_jsonl(Path(sys.argv[1]), RecordParser(app.registry))
before = resource.getrusage(resource.RUSAGE_SELF)
started = time.perf_counter()
summary = ingest_records(app, records, RejectSink(None, echo=None), batch_size=DEFAULT_BATCH_SIZE)
seconds = time.perf_counter() - started
own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
main_cpu = own.ru_utime + own.ru_stime - before.ru_utime - before.ru_stime
print(json.dumps({"events": summary.accepted, "seconds": seconds, "batch_size": DEFAULT_BATCH_SIZE,
    "main_cpu": main_cpu, "workers_cpu": kids.ru_utime + kids.ru_stime}))
"""


def old_design_run(history: Path, revision: str) -> dict[str, float]:
    """The bulk path of `revision` (a clean export of it) over the same file, in its own process."""
    folder = Path(tempfile.mkdtemp(prefix="crm-ledger-old-design-"))
    try:
        tree = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(folder)], input=tree.stdout, check=True)
        store = str(BENCH_DIR / "ingest-old-design.sqlite")
        for leftover in BENCH_DIR.glob("ingest-old-design.sqlite*"):
            leftover.unlink()
        env = {**os.environ, "PYTHONPATH": str(folder)}
        process = subprocess.Popen(
            [sys.executable, "-c", _OLD_DESIGN_RUN, str(history), store],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        with _ChildrenCpu(process.pid) as children:
            output, _ = process.communicate()
        if process.returncode != 0:
            raise subprocess.CalledProcessError(process.returncode, "old design run")
        result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
        # Its writing process, told apart from its parse workers (None where it has none).
        result["writer_cpu"] = children.writer_seconds()
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def first_lines(history: Path, lines: int) -> Path:
    """The first `lines` lines of a history (cached beside it)."""
    part = history.with_name(f"{history.stem}-first-{lines}.jsonl")
    if not part.exists():
        partial = part.with_suffix(".partial")
        with history.open("rb") as source, partial.open("wb") as out:
            out.writelines(itertools.islice(source, lines))
        partial.rename(part)
    return part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="approximate event count")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline-events", type=int, default=None, help="cap the baseline's input")
    parser.add_argument("--postgres", action="store_true", help="also run the bulk path into PostgreSQL")
    parser.add_argument(
        "--old-design", default=None, help="git revision whose bulk path runs over the same file too"
    )
    parser.add_argument(
        "--lines", type=int, default=None, help="only the first N lines of the history (a quicker A/B)"
    )
    args = parser.parse_args()
    history = history_file(args.events, args.seed)
    if args.lines:
        history = first_lines(history, args.lines)
    global LOAD_AT_START  # noqa: PLW0603 - read once, reported with the figures
    LOAD_AT_START = os.getloadavg()[0]

    app = fresh_app("ingest-bulk")
    summary, seconds = ingest(app, history, bulk=True)
    app.close()
    bulk = summary.accepted / seconds

    old = old_design_run(history, args.old_design) if args.old_design else None

    base_app = fresh_app("ingest-aggregates")
    base_summary, base_seconds = ingest(base_app, history, bulk=False, limit=args.baseline_events)
    base_app.close()
    baseline = base_summary.accepted / base_seconds

    (bulk_main, bulk_workers, bulk_writer), (base_main, _, _) = CPU[True], CPU[False]
    load = os.getloadavg()[0]
    figures = {
        "load_average_1min_at_start": round(LOAD_AT_START, 1),
        "load_average_1min_at_end": round(load, 1),
        "batch_size": DEFAULT_BATCH_SIZE,
        "events": summary.accepted,
        "rejected": summary.rejected,
        "seconds": round(seconds, 1),
        "bulk_events_per_s": round(bulk),
        "baseline_aggregate_path_events_per_s": round(baseline),
        "baseline_events": base_summary.accepted,
        "speedup_vs_aggregate_path": round(bulk / baseline, 2),
        "goal_events_per_s": GOAL,
        "goal_ratio": round(bulk / GOAL, 2),
        # The main process decides and writes alone; at 1 core for it, this is its rate.
        "bulk_main_cpu_us_per_event": round(bulk_main, 1),
        "bulk_workers_cpu_us_per_event": round(bulk_workers, 1),
        # The writing process (the store's work, and encoding what the workers could not).
        "bulk_writer_process_cpu_us_per_event": round(bulk_writer, 1),
        "bulk_all_processes_cpu_us_per_event": round(bulk_main + bulk_workers + bulk_writer, 1),
        "baseline_main_cpu_us_per_event": round(base_main, 1),
        "main_cpu_ratio_baseline_to_bulk": round(base_main / bulk_main, 2),
        "bulk_events_per_main_cpu_s": round(1e6 / bulk_main),
    }
    if old is not None:
        old_rate = old["events"] / old["seconds"]
        figures["old_design"] = args.old_design
        figures["old_design_batch_size"] = int(old["batch_size"])
        figures["old_design_bulk_events_per_s"] = round(old_rate)
        figures["old_design_main_cpu_us_per_event"] = round(old["main_cpu"] / old["events"] * 1e6, 1)
        old_writer = old["writer_cpu"]
        figures["old_design_workers_cpu_us_per_event"] = round(
            (old["workers_cpu"] - old_writer) / old["events"] * 1e6, 1
        )
        figures["old_design_writer_process_cpu_us_per_event"] = round(old_writer / old["events"] * 1e6, 1)
        figures["old_design_all_processes_cpu_us_per_event"] = round(
            (old["main_cpu"] + old["workers_cpu"]) / old["events"] * 1e6, 1
        )
        figures["speedup_vs_old_design"] = round(bulk / old_rate, 2)
    if args.postgres:
        rate = postgres_rate(history)
        figures["postgres_bulk_events_per_s"] = None if rate is None else round(rate)
    report("ingest", figures)


if __name__ == "__main__":
    main()
