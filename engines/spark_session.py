"""A Spark session that reads Delta tables: local by default, or a cluster's master URL.

Spark comes from pyspark (the `spark` extra); Delta Lake's two jars are fetched with Maven
by scripts/fetch-spark-jars.sh and passed with `spark.jars` (Ivy's `spark.jars.packages`
would resolve them at every start, and needs a network).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engines.errors import SparkUnavailableError

#: Where scripts/fetch-spark-jars.sh puts the jars (overridden by CRM_LEDGER_SPARK_JARS).
DEFAULT_JARS = Path(__file__).resolve().parents[1] / ".spark" / "jars"
LOCAL_MASTER = "local[2]"
#: The settings every session gets (besides the master and the jars).
SETTINGS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    # The log's timestamps are UTC wall-clock times, as DuckDB reads them.
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # Small shuffles: the models' groups are per employee-month, not per event.
    "spark.sql.shuffle.partitions": "4",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.driver.memory": "2g",
    # Whole derived tables are collected to load them into DuckDB.
    "spark.driver.maxResultSize": "2g",
}


def jars_dir() -> Path:
    return Path(os.environ.get("CRM_LEDGER_SPARK_JARS", str(DEFAULT_JARS)))


def java_missing() -> str | None:
    """Why Spark cannot start here (None when Java is there)."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return None
    if shutil.which("java") is None:
        return "Java not found (Spark needs Java 17 or 21 on PATH or in JAVA_HOME)"
    return None


def delta_jars(directory: Path | None = None) -> list[Path]:
    """The Delta Lake jars for Spark; raises when they were not fetched."""
    directory = directory or jars_dir()
    jars = sorted(directory.glob("delta-*.jar"))
    if not any(j.name.startswith("delta-spark_") for j in jars):
        raise SparkUnavailableError(
            f"Delta Lake jars for Spark not found in {directory} (run `make spark-jars`)"
        )
    return jars


@contextmanager
def spark_session(master: str = LOCAL_MASTER, jars: Path | None = None) -> Iterator[Any]:
    """A Spark session with Delta Lake, stopped on exit."""
    reason = java_missing()
    if reason is not None:
        raise SparkUnavailableError(reason)
    try:
        # pyspark is an optional extra (`spark`): imported only when a session is wanted.
        from pyspark.sql import SparkSession  # noqa: PLC0415
    except ImportError as error:
        raise SparkUnavailableError("pyspark is not installed (pip install 'crm-ledger[spark]')") from error
    active = SparkSession.getActiveSession()
    if active is not None:
        # Inside an application (a notebook, a job) that already runs Spark: use its session
        # and leave stopping it to its owner.
        yield active
        return
    builder = SparkSession.builder.master(master).appName("crm-ledger")
    builder = builder.config("spark.jars", ",".join(str(j) for j in delta_jars(jars)))
    log4j = Path(__file__).with_name("log4j2.properties")
    builder = builder.config("spark.driver.extraJavaOptions", f"-Dlog4j.configurationFile={log4j}")
    for key, value in SETTINGS.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as error:  # the JVM's or py4j's own errors: one line for the user
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SparkUnavailableError(f"Spark did not start ({master}): {first}") from error
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
