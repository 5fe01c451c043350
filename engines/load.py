"""Derived tables computed elsewhere, loaded into a version of the projection database.

A Spark-built version is an ordinary version: the same tables with the same DuckDB column
types (taken from the DuckDB statements run over an empty log, so a Spark `BIGINT` sum
becomes the `HUGEINT` DuckDB gives), the same row order, and the log version and stream
positions recorded beside them in the same transaction, exactly as a DuckDB build records
them. `diff`, `promote`, `query`, `explain`, statements and the web pages read it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import duckdb
import pyarrow as pa

from engines.errors import EngineError
from projections.columns import LOG_SCHEMA
from projections.log import DecodedLog, relation_name
from projections.models import MODEL_TABLES, all_model_sql
from projections.sources import Position
from projections.spec import MetricSpec
from projections.store import LOG_STREAM, ProjectionDB, VersionInfo, events_view_sql
from projections.transaction import transaction

_SHAPE = "crm_shape"


def model_columns(
    spec: MetricSpec, version: str, source: str, as_of: datetime | None = None
) -> dict[str, list[tuple[str, str]]]:
    """(name, DuckDB type) of every read model's columns, from a build over an empty log."""
    con = duckdb.connect()
    try:
        con.register(relation_name(source), LOG_SCHEMA.empty_table())
        con.execute(f"CREATE SCHEMA {_SHAPE}")
        con.execute(events_view_sql(_SHAPE, source, as_of))
        con.execute(f"CREATE TEMP TABLE crm_ev AS SELECT * FROM {_SHAPE}.events")
        for statement in all_model_sql(_SHAPE, spec, version, "crm_ev", f"{_SHAPE}.events"):
            con.execute(statement)
        return {
            table: [
                (str(name), str(kind))
                for name, kind in con.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
                    [_SHAPE, table],
                ).fetchall()
            ]
            for table in MODEL_TABLES
        }
    finally:
        con.close()


def load_version(
    db: ProjectionDB,
    version: VersionInfo,
    tables: Mapping[str, pa.Table],
    *,
    log: DecodedLog,
    log_version: int,
    events: int,
) -> None:
    """Replace the version's read models by `tables` and record the log version they reflect."""
    if version.built_from is not None:
        raise EngineError(
            f"{version.version} shares the tables of {version.built_from}; build a version of its own"
        )
    con = db.connection
    s = version.schema
    shapes = model_columns(version.spec(), version.version, version.source, version.as_of)
    con.complete()
    con.register("crm_loaded_log", log.dataset(log_version))
    try:
        with transaction(con):
            for table in MODEL_TABLES:
                _load_table(con, s, table, shapes[table], tables[table])
            _record(db, version, log_version)
            db.mark_built(version, log_version, events)
    finally:
        con.unregister("crm_loaded_log")


def _load_table(
    con: duckdb.DuckDBPyConnection, schema: str, table: str, columns: list[tuple[str, str]], rows: pa.Table
) -> None:
    names = [name.lower() for name in rows.column_names]
    if names != [name.lower() for name, _ in columns]:
        raise EngineError(
            f"read model {table}: columns {names} differ from DuckDB's {[n for n, _ in columns]}"
        )
    con.execute(
        f"CREATE OR REPLACE TABLE {schema}.{table} ({', '.join(f'{_quote(n)} {t}' for n, t in columns)})"
    )
    # Positional names: Spark may spell a column as its expression, DuckDB as its alias.
    renamed = rows.rename_columns([f"c{i}" for i in range(rows.num_columns)])
    con.register("crm_loaded_rows", renamed)
    try:
        casts = ", ".join(f"CAST(c{i} AS {t})" for i, (_, t) in enumerate(columns))
        con.execute(f"INSERT INTO {schema}.{table} SELECT {casts} FROM crm_loaded_rows")
    finally:
        con.unregister("crm_loaded_rows")


def _record(db: ProjectionDB, version: VersionInfo, log_version: int) -> None:
    """The snapshot's last position per stream and its log version, as a DuckDB full build records them."""
    con = db.connection
    con.execute(f"DELETE FROM {version.schema}.tracking")
    rows = con.execute("SELECT stream, max(position) FROM crm_loaded_log GROUP BY stream").fetchall()
    positions = [Position(str(stream), int(last)) for stream, last in rows]
    db.tracking(version).record_positions([*positions, Position(LOG_STREAM, log_version)])


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
