"""The read models on Spark against DuckDB, from the same decoded log, in the same run.

For the demo's data and for a generated log (`--events`, 1M by default; cached like the
other benchmarks), over one log version:
- baseline: DuckDB builds the default spec's version in full from the log
  (`replay --full`, the projection database's own engine);
- Spark: `replay --engine spark` (local[2]) builds the same version, including the
  session's start, and loads it into a copy of the projection database;
- every table of the two versions is compared (engines.compare): equal or not, and how
  many floats differ within the documented tolerance.
Prints JSON with both times and the ratio.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
from common import BENCH_DIR, arguments, prepared_ledger, report, timed

from crm_cli.demo import run_demo
from crm_ledger.settings import Settings, log_root
from engines.compare import compare_tables
from engines.replay import replay_on_spark
from importers.generator import GeneratorConfig
from projections.models import MODEL_TABLES
from projections.service import rebuild_log
from projections.spec import DEFAULT_SPEC
from replay.build import replay


def _both(settings: Settings, folder: Path) -> dict[str, Any]:
    """DuckDB's full build, then Spark's into a copy (same ledger, same log version)."""
    duck, duck_s = timed(lambda: replay(settings, DEFAULT_SPEC, "ledger", full=True))
    copy = folder / "spark.duckdb"
    shutil.copy(settings.projections_db, copy)
    shutil.copytree(log_root(settings.projections_db), log_root(copy))
    spark_settings = Settings(store=settings.store, projections_db=copy)
    started = time.perf_counter()
    spark = replay_on_spark(spark_settings, DEFAULT_SPEC, "ledger")
    spark_s = time.perf_counter() - started
    con = duckdb.connect(str(settings.projections_db), read_only=True)
    try:
        con.execute(f"ATTACH '{copy}' AS spark (READ_ONLY)")
        differences, inexact = compare_tables(con, duck.version, f"spark.{duck.version}", MODEL_TABLES)
        rows = sum(
            int(con.execute(f"SELECT count(*) FROM {duck.version}.{t}").fetchone()[0])  # type: ignore[index]
            for t in MODEL_TABLES
        )
    finally:
        con.close()
    return {
        "events": spark.events,
        "log_version": spark.log_version,
        "tables": len(MODEL_TABLES),
        "rows": rows,
        "duckdb_full_build_s": round(duck_s, 2),
        "spark_replay_s": round(spark_s, 2),
        "spark_build_s": round(spark.spark_seconds, 2),
        "spark_session_and_load_s": round(spark_s - spark.spark_seconds, 2),
        "spark_vs_duckdb": round(spark_s / duck_s, 1),
        "tables_equal": not differences,
        "differences": [f"{d.table}: {d.detail}" for d in differences],
        "floats_within_tolerance_not_bit_equal": inexact,
    }


def main() -> None:
    args = arguments(__doc__ or "", 1_000_000)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        # `crm-ledger demo`'s defaults.
        config = GeneratorConfig(customers=800, employees=30, months=3, seed=42)
        demo = run_demo(Path(folder) / "demo", config, lambda _: None)
        figures["demo"] = _both(demo, Path(folder))
    store = BENCH_DIR / f"ledger-{args.events}-{args.seed}.sqlite"
    app = prepared_ledger(args.events, args.seed)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as folder:
        settings = Settings(store=str(store), projections_db=Path(folder) / "duck.duckdb")
        _, decode_s = timed(lambda: rebuild_log(settings, "ledger", "ledger", app))
        generated = _both(settings, Path(folder))
        generated["decode_into_log_s"] = round(decode_s, 2)
        figures["generated"] = generated
    report("spark", figures)


if __name__ == "__main__":
    main()
