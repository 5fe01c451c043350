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
import atexit
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
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


def import_once(export: Path, name: str, code: Path | None = None) -> dict[str, float | int]:
    """Run the command line on a fresh store; its seconds, accepted events and peak RSS.

    `code`: the root of another revision's source tree, run instead of this one.
    """
    store = BENCH_DIR / f"{name}.sqlite"
    for leftover in BENCH_DIR.glob(f"{name}.sqlite*"):
        leftover.unlink()
    env = {**os.environ, "CRM_LEDGER_STORE": str(store)}
    command = [str(CLI)]
    if code is not None:
        # That tree's packages first on the path: its command line, same interpreter.
        env["PYTHONPATH"] = str(code)
        # Its entry point: the package's __main__ where the tree has one, else the CLI module.
        entry = "crm_cli" if (code / "crm_cli" / "__main__.py").exists() else "crm_cli.cli"
        command = [sys.executable, "-m", entry]
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, "import", "cfpb", "--rejects", str(BENCH_DIR / f"{name}.rejects.jsonl"), str(export)],
        cwd=code,
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
        # The command and its (reaped) worker processes.
        "cpu_us_per_event": round((usage.ru_utime + usage.ru_stime) / accepted * 1e6, 1),
    }


def old_design(revision: str) -> Path:
    """A clean export of `revision`'s source tree (deleted when the process ends)."""
    folder = Path(tempfile.mkdtemp(prefix="crm-ledger-old-design-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[1_000_000, 2_000_000], help="export sizes (complaints)"
    )
    parser.add_argument("--per-day", type=int, default=1000, help="complaints per day in the export")
    parser.add_argument(
        "--old-design", default=None, help="git revision to import each export with too, right after"
    )
    args = parser.parse_args()
    old = old_design(args.old_design) if args.old_design else None
    load_at_start = os.getloadavg()[0]
    results = {}
    for rows in sorted(args.rows):
        export = export_file(rows, args.per_day)
        size_mb = round(export.stat().st_size / 2**20, 1)
        results[str(rows)] = {"file_mb": size_mb, **import_once(export, f"cfpb-{rows}")}
        if old is not None:
            before = import_once(export, f"cfpb-{rows}-old", old)
            results[str(rows)]["old_design"] = before
            results[str(rows)]["rate_ratio_to_old_design"] = round(
                float(results[str(rows)]["events_per_s"]) / float(before["events_per_s"]), 2
            )
    sizes = sorted(args.rows)
    smallest, largest = results[str(sizes[0])], results[str(sizes[-1])]
    report(
        "cfpb_import",
        {
            "load_average_1min_at_start": round(load_at_start, 1),
            "load_average_1min_at_end": round(os.getloadavg()[0], 1),
            "old_design": args.old_design,
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
