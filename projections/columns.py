"""The columns of a version's `events` table (also the auditors' `ledger_events` mirror).

Fields the read models join and filter on are real columns; the whole record is kept as
JSON in `payload`, and the exact bytes in `value`, so the hash chain can be recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from projections.sources import RawBatch
from schemas.codec import DecodedGroup
from schemas.registry import SchemaRegistry

#: (column, DuckDB type, Arrow type) of fields copied from the decoded record.
RECORD_COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    ("customer_id", "VARCHAR", pa.string()),
    ("employee_id", "VARCHAR", pa.string()),
    ("team_id", "VARCHAR", pa.string()),
    ("case_id", "VARCHAR", pa.string()),
    ("interaction_id", "VARCHAR", pa.string()),
    ("article_id", "VARCHAR", pa.string()),
    ("author_id", "VARCHAR", pa.string()),
    ("source_case_id", "VARCHAR", pa.string()),
    ("to_employee_id", "VARCHAR", pa.string()),
    ("channel", "VARCHAR", pa.string()),
    ("direction", "VARCHAR", pa.string()),
    ("topic", "VARCHAR", pa.string()),
    ("kind", "VARCHAR", pa.string()),
    ("severity", "VARCHAR", pa.string()),
    ("segment", "VARCHAR", pa.string()),
    ("region", "VARCHAR", pa.string()),
    ("resolution_code", "VARCHAR", pa.string()),
    ("recipient_kind", "VARCHAR", pa.string()),
    ("csat", "INTEGER", pa.int32()),
    ("nps", "INTEGER", pa.int32()),
    ("ces", "INTEGER", pa.int32()),
    ("first_contact", "BOOLEAN", pa.bool_()),
    ("timely", "BOOLEAN", pa.bool_()),
    ("article_ids", "VARCHAR[]", pa.list_(pa.string())),
    ("period", "VARCHAR", pa.string()),
    ("score", "DOUBLE", pa.float64()),
)

EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS {v}.events (
    notification_id BIGINT,
    source VARCHAR,
    "partition" INTEGER,
    "offset" BIGINT,
    event_type VARCHAR NOT NULL,
    event_id VARCHAR NOT NULL,
    schema_version INTEGER,
    occurred_at TIMESTAMP NOT NULL,
    recorded_at TIMESTAMP,
    {record_columns},
    payload JSON,
    value BLOB,
    chain VARCHAR
)""".replace("{record_columns}", ",\n    ".join(f"{name} {sql}" for name, sql, _ in RECORD_COLUMNS))

_ENVELOPE_COLUMNS = ("notification_id", "source", "partition", "offset", "schema_version", "value", "chain")
_ENVELOPE_TYPES = (pa.int64(), pa.string(), pa.int32(), pa.int64(), pa.int32(), pa.binary(), pa.string())
_AVRO_TO_ARROW: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int32(),
    "long": pa.int64(),
    "boolean": pa.bool_(),
    "double": pa.float64(),
    "float": pa.float32(),
    "bytes": pa.binary(),
}


def _arrow_type(avro_type: Any) -> pa.DataType:
    if isinstance(avro_type, list):
        return _arrow_type(next(t for t in avro_type if t != "null"))
    if isinstance(avro_type, dict):
        if avro_type.get("type") == "array":
            return pa.list_(_arrow_type(avro_type["items"]))
        return _arrow_type(avro_type["type"])
    return _AVRO_TO_ARROW[avro_type]


def record_struct(fields: Sequence[Mapping[str, Any]]) -> pa.StructType:
    """The Arrow struct of an Avro record (timestamps as epoch milliseconds)."""
    return pa.struct([pa.field(f["name"], _arrow_type(f["type"])) for f in fields])


class EventsWriter:
    """Appends decoded events to a version's `events` table, one Arrow insert per event type.

    Records become one Arrow struct column per event type (a single C++ pass over the
    dicts); DuckDB then extracts the columns and writes the JSON payload itself, so no
    per-event Python work remains beyond decoding.
    """

    def __init__(self, registry: SchemaRegistry) -> None:
        self._versions = {v.schema_id: v.version for v in registry.all_versions()}
        self._structs: dict[str, pa.StructType] = {}
        self._selects: dict[str, str] = {}
        for event_type in registry.event_types:
            fields = list(registry.latest(event_type).raw["fields"])
            names = {f["name"] for f in fields}
            self._structs[event_type] = record_struct(fields)
            columns = [
                f"rec.{name}::{sql}" if name in names else f"NULL::{sql}" for name, sql, _ in RECORD_COLUMNS
            ]
            recorded = "epoch_ms(rec.recorded_at)" if "recorded_at" in names else "NULL"
            self._selects[event_type] = (
                'SELECT notification_id, source, "partition", "offset", '
                f"'{event_type}', rec.event_id, schema_version, epoch_ms(rec.occurred_at), {recorded}, "
                + ", ".join(columns)
                + ", to_json(rec), value, chain FROM incoming_events"
            )

    def prepare(self, batch: RawBatch, groups: Sequence[DecodedGroup]) -> list[tuple[str, pa.Table]]:
        """One Arrow table per event type of a decoded batch (pure: safe on any thread)."""
        tables = []
        for group in groups:
            indexes = group.indexes
            envelope = [
                [batch.notification_ids[i] for i in indexes],
                [batch.sources[i] for i in indexes],
                [batch.partitions[i] for i in indexes],
                [batch.offsets[i] for i in indexes],
                [self._versions[group.schema_id]] * len(indexes),
                [batch.values[i] for i in indexes],
                [batch.chains[i] for i in indexes],
            ]
            arrays = [pa.array(v, type=t) for v, t in zip(envelope, _ENVELOPE_TYPES, strict=True)]
            arrays.append(pa.array(group.records, type=self._structs[group.event_type]))
            tables.append((group.event_type, pa.Table.from_arrays(arrays, names=[*_ENVELOPE_COLUMNS, "rec"])))
        return tables

    def write(
        self,
        connection: duckdb.DuckDBPyConnection,
        schema: str,
        tables: Sequence[tuple[str, pa.Table]],
        *,
        as_of_ms: int | None = None,
    ) -> int:
        """Insert prepared tables (events after `as_of_ms` are left out); returns rows inserted."""
        inserted = 0
        where = "" if as_of_ms is None else f" WHERE rec.occurred_at <= {int(as_of_ms)}"
        for event_type, table in tables:
            connection.register("incoming_events", table)
            try:
                result = connection.execute(
                    f"INSERT INTO {schema}.events {self._selects[event_type]}{where}"
                ).fetchone()
            finally:
                connection.unregister("incoming_events")
            inserted += int(result[0]) if result else 0
        return inserted
