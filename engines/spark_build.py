"""A version's read models computed by Spark from a snapshot of the decoded log.

The statements are those of a DuckDB full build (projections.models.all_model_sql, in the
same order), translated by engines.dialect. Each derived table becomes a temporary view,
materialised once (`localCheckpoint`) because later models read it several times; the
result is every read model as an Arrow table, in the row order its SQL gives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from crm_ledger.progress import Reporter, SilentReporter
from engines.dialect import SparkTranslator
from engines.errors import EngineError, SparkModelError
from projections.columns import LOG_SCHEMA
from projections.log import EVENT_COLUMNS
from projections.models import MODEL_TABLES, SPEC_INDEPENDENT_TABLES, all_model_sql
from projections.spec import MetricSpec

#: The schema name the model SQL is generated with; its tables are Spark temporary views.
PLACEHOLDER = "crm_spark"
#: The typed events the models read (the log's columns without the payload and bytes).
EV = "crm_ev"
_UNREAD = ("payload", "value", "chain", "source", "partition", "offset", "schema_version", "recorded_at")
LIST_COLUMNS = tuple(f.name for f in LOG_SCHEMA if pa.types.is_list(f.type))


@dataclass(frozen=True)
class SparkBuild:
    """Every read model of a version, computed by Spark from one log version."""

    log_version: int
    events: int
    tables: dict[str, pa.Table]
    seconds: float


def register_events(spark: Any, log_path: Path, log_version: int, as_of: datetime | None) -> int:
    """The snapshot's decoded events as the views `events` and `crm_ev`; returns their count."""
    log = spark.read.format("delta").option("versionAsOf", log_version).load(str(log_path))
    where = "dead_letter IS NULL"
    if as_of is not None:
        where += f" AND occurred_at <= TIMESTAMP_NTZ '{as_of.replace(tzinfo=None).isoformat(sep=' ')}'"
    events = log.where(where).select("stream", "position", *EVENT_COLUMNS)
    events.createOrReplaceTempView("events")
    typed = events.drop(*_UNREAD).localCheckpoint()
    typed.createOrReplaceTempView(EV)
    return int(typed.count())


def build_on_spark(
    spark: Any,
    log_path: Path,
    log_version: int,
    spec: MetricSpec,
    version: str,
    *,
    as_of: datetime | None = None,
    reporter: Reporter | None = None,
    log_tables_of: SparkBuild | None = None,
) -> SparkBuild:
    """Run every read model's statement of `spec` on Spark; collect the tables.

    `log_tables_of`, an earlier build in the same session over the same log version,
    lends its spec-independent tables (as a DuckDB replay of a KPI change shares them):
    only the spec's own tables are computed.
    """
    reporter = reporter or SilentReporter()
    started = time.monotonic()
    if log_tables_of is not None and log_tables_of.log_version != log_version:
        raise EngineError("the spec-independent tables of another log version cannot be shared")
    if log_tables_of is None:
        events = register_events(spark, log_path, log_version, as_of)
    else:
        events = log_tables_of.events
    statements = all_model_sql(PLACEHOLDER, spec, version, EV, f"{PLACEHOLDER}.events")
    reporter.total(len(statements) + len(MODEL_TABLES))
    translator = SparkTranslator(PLACEHOLDER, list_columns=LIST_COLUMNS)
    frames: dict[str, Any] = {}
    for statement in statements:
        if log_tables_of is not None and translator.target(statement) in SPEC_INDEPENDENT_TABLES:
            name = translator.target(statement)
            frames[name] = spark.table(name)  # the view the earlier build left in the session
            translator.columns[name] = list(frames[name].columns)
            continue
        kind, name, sql = translator.statement(statement)
        frame = _run(spark, name, sql)
        if kind == "insert":
            frame = frames[name].union(frame)
        frame = _materialise(name, frame)
        frame.createOrReplaceTempView(name)
        frames[name] = frame
        translator.columns[name] = list(frame.columns)
        reporter.advance(1, note=name)
    tables = {}
    for name in MODEL_TABLES:
        if log_tables_of is not None and name in SPEC_INDEPENDENT_TABLES:
            tables[name] = log_tables_of.tables[name]
            continue
        tables[name] = _to_arrow(name, frames[name])
        reporter.advance(1, events=0, note=f"collected {name}")
    return SparkBuild(log_version, events, tables, time.monotonic() - started)


def _run(spark: Any, name: str, sql: str) -> Any:
    try:
        return spark.sql(sql)
    except Exception as error:  # Spark's analysis errors come as py4j/pyspark exceptions
        raise SparkModelError(f"read model {name}: Spark refused it: {_first_line(error)}") from error


def _materialise(name: str, frame: Any) -> Any:
    try:
        return frame.localCheckpoint()
    except Exception as error:
        raise SparkModelError(f"read model {name}: Spark failed: {_first_line(error)}") from error


def _to_arrow(name: str, frame: Any) -> pa.Table:
    try:
        table = frame.toArrow()
    except Exception as error:
        raise SparkModelError(f"read model {name}: collecting failed: {_first_line(error)}") from error
    # Spark's TIMESTAMP is an instant (UTC here); the models' timestamps are UTC wall times.
    columns = [
        c.cast(pa.timestamp(c.type.unit)) if pa.types.is_timestamp(c.type) and c.type.tz else c
        for c in table.columns
    ]
    return pa.Table.from_arrays(columns, names=table.column_names)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


__all__ = ["PLACEHOLDER", "SparkBuild", "build_on_spark", "register_events"]
