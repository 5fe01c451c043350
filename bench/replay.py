"""Replay: new versions from the decoded log vs. decoding the source again, in the same run.

Baseline: a cold replay that decodes the whole ledger into the log and builds every table
(`replay --from-source`); optionally also the design before the decoded log, checked out
from git at `--old-design REV` (it re-decoded into a private copy of the log per version).
Figures: a full build of a version from the log at hand (`--full`), a KPI-definition
change sharing the spec-independent tables (thresholds recounted from the shared
measures), a weights-only change, and the storage a second version adds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import BENCH_DIR, ROOT, arguments, prepared_ledger, report, timed

from crm_ledger.settings import Settings, log_root
from projections.service import rebuild_log
from projections.spec import DEFAULT_SPEC
from projections.store import ProjectionDB
from replay.build import replay

GOAL_KPI_CHANGE = 300_000
GOAL_THRESHOLD = 1_000_000

_OLD_DESIGN = """
import sys, time
from pathlib import Path
from crm_ledger.settings import Settings
from projections.spec import DEFAULT_SPEC
from projections.store import ProjectionDB
from replay.build import replay
settings = Settings(store=sys.argv[1], projections_db=Path(sys.argv[2]))
started = time.perf_counter()
result = replay(settings, DEFAULT_SPEC, "ledger", full=True)
print(result.applied, time.perf_counter() - started)
"""


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _own_tables_bytes(db: Path, version: str) -> int:
    """The bytes of a version's own tables (not the views it shares), copied alone into a file."""
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "own.duckdb"
        with ProjectionDB(db) as source:
            con = source.connection
            tables = [
                r[0]
                for r in con.execute(
                    "SELECT table_name FROM duckdb_tables() WHERE schema_name = ? AND NOT temporary",
                    [version],
                ).fetchall()
            ]
            con.execute(f"ATTACH '{copy}' AS own")
            for table in tables:
                con.execute(f"CREATE TABLE own.{table} AS SELECT * FROM {version}.{table}")
            con.execute("DETACH own")
        return copy.stat().st_size


def _old_design(rev: str, store: Path) -> dict[str, float]:
    """The pre-log design's full replay, from a clean export of `rev`."""
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / "tree"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        db = Path(folder) / "old.duckdb"
        out = subprocess.run(
            [sys.executable, "-c", _OLD_DESIGN, str(store), str(db)],
            check=True,
            capture_output=True,
            text=True,
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
        )
        applied, seconds = out.stdout.strip().splitlines()[-1].split()
        return {"events": int(applied), "seconds": float(seconds)}


def main() -> None:
    parser_args = arguments(__doc__ or "", 1_000_000)
    app = prepared_ledger(parser_args.events, parser_args.seed)
    store = BENCH_DIR / f"ledger-{parser_args.events}-{parser_args.seed}.sqlite"
    db = BENCH_DIR / "replay.duckdb"
    for leftover in BENCH_DIR.glob("replay.duckdb*"):
        leftover.unlink()
    shutil.rmtree(log_root(db), ignore_errors=True)
    settings = Settings(store=str(store), projections_db=db)

    old = _old_design(parser_args.old_design, store) if parser_args.old_design else None
    # Cold: decode the whole source into a fresh log, then build every table from it.
    decoded, decode_s = timed(lambda: rebuild_log(settings, "ledger", "ledger", app))
    first, build_s = timed(lambda: replay(settings, DEFAULT_SPEC, "ledger"))
    assert first.mode == "full", first.message()
    cold_s = decode_s + build_s
    events = first.applied
    strict = BENCH_DIR / "strict.toml"
    strict.write_text(DEFAULT_SPEC.read_text().replace("csat_satisfied_min = 4", "csat_satisfied_min = 5"))
    shared, shared_s = timed(lambda: replay(settings, strict, "ledger"))
    assert shared.mode == "kpi-change", shared.message()
    stricter = BENCH_DIR / "stricter.toml"
    stricter.write_text(DEFAULT_SPEC.read_text().replace("nps_promoter_min = 9", "nps_promoter_min = 10"))
    own, own_s = timed(lambda: replay(settings, stricter, "ledger", full=True))
    assert own.mode == "full", own.message()
    weights = BENCH_DIR / "weights.toml"
    weights.write_text(
        DEFAULT_SPEC.read_text()
        .replace("cap = 10\n", "cap = 6\n")
        .replace("weight = 0.25", "weight = 0.30", 1)
        .replace("weight = 0.05", "weight = 0.00")
    )
    scores_only, weights_s = timed(lambda: replay(settings, weights, "ledger"))
    assert scores_only.mode == "scores-only", scores_only.message()
    log_bytes = _size(log_root(db))
    figures = {
        "events": events,
        "ledger_events": app.max_position(),
        "cold_decode_into_log_s": round(decode_s, 2),
        "cold_decode_events_per_s": round(decoded / decode_s),
        "first_build_from_log_s": round(build_s, 2),
        "baseline_cold_replay_from_source_s": round(cold_s, 2),
        "baseline_cold_replay_events_per_s": round(events / cold_s),
        "kpi_change_full_build_from_log_s": round(own_s, 2),
        "kpi_change_full_build_events_per_s": round(events / own_s),
        "kpi_change_shared_s": round(shared_s, 2),
        "kpi_change_shared_events_per_s": round(events / shared_s),
        "weights_only_s": round(weights_s, 3),
        "full_build_vs_cold_replay": round(cold_s / own_s, 1),
        "shared_vs_cold_replay": round(cold_s / shared_s, 1),
        "goal_kpi_change_events_per_s": GOAL_KPI_CHANGE,
        "goal_threshold_change_events_per_s": GOAL_THRESHOLD,
        "log_bytes": log_bytes,
        "first_version_own_tables_bytes": _own_tables_bytes(db, first.version),
        "second_version_own_tables_bytes": _own_tables_bytes(db, shared.version),
        "second_version_share_of_log": round(_own_tables_bytes(db, shared.version) / log_bytes, 4),
    }
    if old is not None:
        figures["baseline_old_design_full_replay_s"] = round(old["seconds"], 2)
        figures["baseline_old_design_events_per_s"] = round(old["events"] / old["seconds"])
        figures["full_build_vs_old_design"] = round(old["seconds"] / own_s, 1)
        figures["shared_vs_old_design"] = round(old["seconds"] / shared_s, 1)
    report("replay", figures)


if __name__ == "__main__":
    main()
