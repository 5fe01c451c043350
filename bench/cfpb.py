"""`crm-ledger import cfpb` on multi-million-row exports: events/s and peak memory per size.

The export is made here (and cached in `.crm-ledger/bench/`) by repeating the valid rows of
the shipped CFPB sample with new complaint ids, about `--per-day` complaints a day from
December 2011 on (as the real database grows), each copy's dates shifted together so the
time from receipt to the company keeps its sample value. Each size is imported by the real
command line into a fresh SQLite store, in a process of its own: its wall time, the events
it accepted, and its peak resident memory (`wait4`'s rusage of that one process) are
reported. Constant memory means the peak does not grow with the row count. Each size's
import is its own baseline: the rate at the largest size over the rate at the smallest.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import BENCH_DIR, ROOT, report

SAMPLE = ROOT / "tests" / "data" / "cfpb_current.csv"
FIRST_DAY = datetime(2011, 12, 1, tzinfo=UTC)
CLI = ROOT / ".venv" / "bin" / "crm-ledger"


def _valid_samples() -> tuple[list[str], list[dict[str, str]]]:
    with SAMPLE.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        rows = [
            row
            for row in reader
            if row["Complaint ID"].strip() and row["Company"].strip() and _date(row["Date received"])
        ]
    return header, rows


def _date(text: str) -> datetime | None:
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None


def export_file(rows: int, per_day: int) -> Path:
    """A CFPB-shaped export of `rows` complaints (cached between runs)."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"cfpb-{rows}-{per_day}.csv"
    if path.exists():
        return path
    header, samples = _valid_samples()
    partial = path.with_suffix(".partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        for number in range(rows):
            sample = samples[number % len(samples)]
            received = _date(sample["Date received"])
            sent = _date(sample["Date sent to company"]) or received
            assert received is not None and sent is not None
            day = FIRST_DAY + timedelta(days=number // per_day)
            copy = dict(sample)
            copy["Complaint ID"] = str(10_000_000 + number)
            copy["Date received"] = day.strftime("%Y-%m-%d")
            copy["Date sent to company"] = (day + (sent - received)).strftime("%Y-%m-%d")
            writer.writerow(copy)
    partial.rename(path)
    return path


def import_once(export: Path, name: str) -> dict[str, float | int]:
    """Run the command line on a fresh store; its seconds, accepted events and peak RSS."""
    store = BENCH_DIR / f"{name}.sqlite"
    for leftover in BENCH_DIR.glob(f"{name}.sqlite*"):
        leftover.unlink()
    env = {**os.environ, "CRM_LEDGER_STORE": str(store)}
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(CLI), "import", "cfpb", "--rejects", str(BENCH_DIR / f"{name}.rejects.jsonl"), str(export)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    found = re.search(r"accepted (\d+)", output)
    if process.returncode != 0 or found is None:
        sys.exit(f"import of {export.name} failed ({process.returncode}): {output.strip()[-300:]}")
    accepted = int(found.group(1))
    for leftover in BENCH_DIR.glob(f"{name}.sqlite*"):
        leftover.unlink()
    return {
        "events": accepted,
        "seconds": round(seconds, 1),
        "events_per_s": round(accepted / seconds),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # kilobytes on Linux
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[1_000_000, 2_000_000], help="export sizes (complaints)"
    )
    parser.add_argument("--per-day", type=int, default=1000, help="complaints per day in the export")
    args = parser.parse_args()
    results = {}
    for rows in sorted(args.rows):
        export = export_file(rows, args.per_day)
        size_mb = round(export.stat().st_size / 2**20, 1)
        results[str(rows)] = {"file_mb": size_mb, **import_once(export, f"cfpb-{rows}")}
    sizes = sorted(args.rows)
    smallest, largest = results[str(sizes[0])], results[str(sizes[-1])]
    report(
        "cfpb_import",
        {
            "rows": results,
            "rate_ratio_largest_to_smallest": round(
                float(largest["events_per_s"]) / float(smallest["events_per_s"]), 2
            ),
            "peak_rss_ratio_largest_to_smallest": round(
                float(largest["peak_rss_mb"]) / float(smallest["peak_rss_mb"]), 2
            ),
        },
    )


if __name__ == "__main__":
    main()
