"""The columns of the decoded log (also the auditors' `ledger_events` mirror).

Fields the read models join and filter on are real columns; the whole record is kept as
JSON in `payload`, and the exact bytes in `value`, so the hash chain can be recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from projections.sources import LEDGER_STREAM, RawBatch, kafka_stream
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

#: The decoded log's columns (see projections.log): where a row came from, the envelope,
#: the typed record columns, the whole record as JSON, the exact bytes and the chain; and
#: for messages that could not be decoded, the error (`dead_letter`) and when it was seen.
LOG_SCHEMA = pa.schema(
    [
        ("stream", pa.string()),
        ("position", pa.int64()),
        ("notification_id", pa.int64()),
        ("source", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("event_type", pa.string()),
        ("event_id", pa.string()),
        ("schema_version", pa.int32()),
        ("occurred_at", pa.timestamp("us")),
        ("recorded_at", pa.timestamp("us")),
        *((name, arrow) for name, _, arrow in RECORD_COLUMNS),
        ("payload", pa.string()),
        ("value", pa.binary()),
        ("chain", pa.string()),
        ("dead_letter", pa.string()),
        ("seen_at", pa.timestamp("us")),
    ]
)
#: The Arrow type of each Avro primitive the event schemas use (the native decoder reads it too).
AVRO_TO_ARROW: dict[str, pa.DataType] = {
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
    return AVRO_TO_ARROW[avro_type]


def record_struct(fields: Sequence[Mapping[str, Any]]) -> pa.StructType:
    """The Arrow struct of an Avro record (timestamps as epoch milliseconds)."""
    return pa.struct([pa.field(f["name"], _arrow_type(f["type"])) for f in fields])


def _millis_to_timestamp(array: pa.Array) -> pa.Array:
    return pc.multiply(array.cast(pa.int64()), 1000).cast(pa.timestamp("us"))


def stream_of(source: str, partition: int | None) -> str:
    """The application-transaction id of a message's stream: `ledger` or `<topic>:<partition>`."""
    return LEDGER_STREAM if partition is None else kafka_stream(source, partition)


class LogBatchBuilder:
    """Turns a decoded batch into one flat Arrow table in the log's schema.

    Records become one Arrow struct array per schema (a single C++ pass over the dicts)
    whose fields are then taken as columns; only the JSON payload is built per record.
    """

    def __init__(self, registry: SchemaRegistry) -> None:
        self._versions = {v.schema_id: v.version for v in registry.all_versions()}
        self._structs = {
            t: record_struct(list(registry.latest(t).raw["fields"])) for t in registry.event_types
        }

    def build(
        self,
        batch: RawBatch,
        groups: Sequence[DecodedGroup],
        errors: Sequence[tuple[int, Exception]],
        seen_at: datetime,
    ) -> pa.Table:
        """The batch's rows (decoded events, then dead letters) as one table.

        A record that decodes but does not fit its column (an Avro `int` whose varint holds
        more than 32 bits, say) becomes a dead letter like any undecodable message.
        """
        tables = []
        errors = list(errors)
        for group in groups:
            try:
                tables.append(self._group(batch, group))
            except (pa.ArrowException, OverflowError, ValueError, TypeError):
                tables.extend(self._group_per_record(batch, group, errors))
        if errors:
            errors.sort(key=lambda e: e[0])
            tables.append(self._dead(batch, errors, seen_at))
        if not tables:
            return LOG_SCHEMA.empty_table()
        return pa.concat_tables(tables)

    @staticmethod
    def _envelope(batch: RawBatch, indexes: Sequence[int]) -> dict[str, pa.Array]:
        streams = [stream_of(batch.sources[i], batch.partitions[i]) for i in indexes]
        positions = [
            batch.notification_ids[i] if batch.partitions[i] is None else batch.offsets[i] for i in indexes
        ]
        return {
            "stream": pa.array(streams, pa.string()),
            "position": pa.array(positions, pa.int64()),
            "notification_id": pa.array([batch.notification_ids[i] for i in indexes], pa.int64()),
            "source": pa.array([batch.sources[i] for i in indexes], pa.string()),
            "partition": pa.array([batch.partitions[i] for i in indexes], pa.int32()),
            "offset": pa.array([batch.offsets[i] for i in indexes], pa.int64()),
            "value": pa.array([batch.values[i] for i in indexes], pa.binary()),
            "chain": pa.array([batch.chains[i] for i in indexes], pa.string()),
        }

    def _group(self, batch: RawBatch, group: DecodedGroup) -> pa.Table:
        n = len(group.indexes)
        struct = pa.array(group.records, type=self._structs[group.event_type])
        names = {f.name for f in struct.type}
        columns = self._envelope(batch, group.indexes)
        columns["event_type"] = pa.array([group.event_type] * n, pa.string())
        columns["event_id"] = struct.field("event_id")
        columns["schema_version"] = pa.array([self._versions[group.schema_id]] * n, pa.int32())
        columns["occurred_at"] = _millis_to_timestamp(struct.field("occurred_at"))
        columns["recorded_at"] = (
            _millis_to_timestamp(struct.field("recorded_at"))
            if "recorded_at" in names
            else pa.nulls(n, pa.timestamp("us"))
        )
        for name, _, arrow in RECORD_COLUMNS:
            columns[name] = struct.field(name).cast(arrow) if name in names else pa.nulls(n, arrow)
        columns["payload"] = pa.array(
            [json.dumps(r, separators=(",", ":"), default=str) for r in group.records], pa.string()
        )
        columns["dead_letter"] = pa.nulls(n, pa.string())
        columns["seen_at"] = pa.nulls(n, pa.timestamp("us"))
        return pa.Table.from_arrays([columns[f.name] for f in LOG_SCHEMA], schema=LOG_SCHEMA)

    def _group_per_record(
        self, batch: RawBatch, group: DecodedGroup, errors: list[tuple[int, Exception]]
    ) -> list[pa.Table]:
        """The group's records that fit their columns; the others are added to `errors`."""
        kept: list[int] = []
        records: list[dict[str, Any]] = []
        for index, record in zip(group.indexes, group.records, strict=True):
            try:
                self._group(batch, DecodedGroup(group.schema_id, group.event_type, [index], [record]))
            except (pa.ArrowException, OverflowError, ValueError, TypeError) as error:
                errors.append(
                    (index, ValueError(f"{group.event_type}: a value does not fit its type: {error}"))
                )
            else:
                kept.append(index)
                records.append(record)
        if not kept:
            return []
        return [self._group(batch, DecodedGroup(group.schema_id, group.event_type, kept, records))]

    def _dead(self, batch: RawBatch, errors: Sequence[tuple[int, Exception]], seen_at: datetime) -> pa.Table:
        indexes = [i for i, _ in errors]
        n = len(indexes)
        columns = self._envelope(batch, indexes)
        columns["dead_letter"] = pa.array([str(e) for _, e in errors], pa.string())
        columns["seen_at"] = pa.array([seen_at] * n, pa.timestamp("us"))
        return pa.Table.from_arrays(
            [columns.get(f.name, pa.nulls(n, f.type)) for f in LOG_SCHEMA], schema=LOG_SCHEMA
        )
