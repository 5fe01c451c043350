"""Where a bulk ingest's CPU goes, process by process: cProfile of each, CPU per event.

Ingests a generated history (`--events`, or the first `--lines` lines of it) into a fresh
SQLite store through the bulk path, with the main process under cProfile, the writing
process started under cProfile of its own, and then a parse worker's function profiled in
this process over the same file's first blocks. Prints JSON: CPU per event of each process
and each one's top functions by own time (`--top`); the raw profiles are left in
`.crm-ledger/bench/profile-*.prof` for pstats. A profile, not a benchmark: profiling slows
every process (by about a third); bench/ingest.py measures the rates.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import pickle
import pstats
import resource
import time
from pathlib import Path
from typing import Any

from common import BENCH_DIR, history_file, report
from ingest import _ChildrenCpu, fresh_app

from ledger import parse_workers, write_process
from ledger.ingest import DEFAULT_MAX_RECORD_BYTES, RejectSink, ingest_records, read_jsonl
from ledger.inputs import open_input
from ledger.records import RecordParser

#: The writing process's launch line, under cProfile (its stats written when it stops).
_PROFILED_LAUNCH = (
    "import sys, cProfile; sys.path[:0] = {path!r}; from ledger.write_process import main; "
    f"cProfile.run('main()', {str(BENCH_DIR / 'profile-writer.prof')!r})"
)


def _top(stats_file: Path, count: int) -> list[dict[str, Any]]:
    stats = pstats.Stats(str(stats_file), stream=io.StringIO())
    rows = []
    for (path, line, name), (_, calls, own, total, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {"function": f"{Path(path).name}:{line}:{name}", "calls": calls, "own_s": own, "cum_s": total}
        )
    rows.sort(key=lambda r: -r["own_s"])
    return [{**r, "own_s": round(r["own_s"], 3), "cum_s": round(r["cum_s"], 3)} for r in rows[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lines", type=int, default=400_000, help="profile the first N lines only")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--worker-blocks", type=int, default=60)
    args = parser.parse_args()
    history = history_file(args.events, args.seed)
    if args.lines:
        part = BENCH_DIR / f"history-{args.events}-{args.seed}-first-{args.lines}.jsonl"
        if not part.exists():
            with history.open("rb") as source, part.open("wb") as out:
                out.writelines(itertools.islice(source, args.lines))
        history = part

    write_process._LAUNCH = _PROFILED_LAUNCH
    app = fresh_app("ingest-profile")
    records = read_jsonl(history, RecordParser(app.registry))
    main_prof = BENCH_DIR / "profile-main.prof"
    profile = cProfile.Profile()
    before = resource.getrusage(resource.RUSAGE_SELF)
    kids_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with _ChildrenCpu() as children:
        profile.enable()
        summary = ingest_records(app, records, RejectSink(None, echo=None))
        profile.disable()
    seconds = time.perf_counter() - started
    app.close()
    profile.dump_stats(main_prof)
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    main_cpu = own.ru_utime + own.ru_stime - before.ru_utime - before.ru_stime
    kids_cpu = kids.ru_utime + kids.ru_stime - kids_before.ru_utime - kids_before.ru_stime
    writer_cpu = children.writer_seconds()
    events = summary.accepted

    # A parse worker's work, in this process, over the file's first blocks.
    parse_workers._start_worker(RecordParser(app.registry), history.name, DEFAULT_MAX_RECORD_BYTES)
    with open_input(history) as handle:
        blocks = list(
            itertools.islice(parse_workers._blocks(handle, DEFAULT_MAX_RECORD_BYTES), args.worker_blocks)
        )
    worker_prof = BENCH_DIR / "profile-worker.prof"
    profile = cProfile.Profile()
    lines = 0
    cpu_before = time.process_time()
    profile.enable()
    for number, block, _ in blocks:
        out = parse_workers._parse_block((number, block))
        lines += block.count(b"\n")
        pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)  # what the pool sends back
    profile.disable()
    worker_cpu = time.process_time() - cpu_before
    profile.dump_stats(worker_prof)

    report(
        "ingest_profile",
        {
            "events": events,
            "seconds": round(seconds, 1),
            "profiled_main_cpu_us_per_event": round(main_cpu / events * 1e6, 1),
            "workers_cpu_us_per_event": round((kids_cpu - writer_cpu) / events * 1e6, 1),
            "profiled_writer_cpu_us_per_event": round(writer_cpu / events * 1e6, 1),
            "profiled_worker_in_process_cpu_us_per_line": round(worker_cpu / lines * 1e6, 1),
            "main": _top(main_prof, args.top),
            "writer": _top(BENCH_DIR / "profile-writer.prof", args.top),
            "worker": _top(worker_prof, args.top),
        },
    )


if __name__ == "__main__":
    main()
