"""The columns of a version's `events` table (also the auditors' `ledger_events` mirror).

Fields the read models join and filter on are real columns; the whole record is kept as
JSON in `payload`, and the exact bytes in `value`, so the hash chain can be recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from projections.sources import RawBatch

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

EVENT_SCHEMA = pa.schema(
    [
        ("notification_id", pa.int64()),
        ("source", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("event_type", pa.string()),
        ("event_id", pa.string()),
        ("schema_version", pa.int32()),
        ("occurred_at", pa.timestamp("ms")),
        ("recorded_at", pa.timestamp("ms")),
        *[(name, arrow) for name, _, arrow in RECORD_COLUMNS],
        ("payload", pa.string()),
        ("value", pa.binary()),
        ("chain", pa.string()),
    ]
)
_ENVELOPE = ("event_id", "occurred_at", "recorded_at")


def _json_default(value: Any) -> Any:
    return str(value)


def events_table(
    batch: RawBatch,
    chosen: Sequence[int],
    records: Sequence[tuple[str, dict[str, Any]]],
    schema_versions: Sequence[int],
) -> pa.Table:
    """An Arrow table of the `chosen` messages of a batch and their decoded records."""
    dumps = json.JSONEncoder(separators=(",", ":"), sort_keys=True, default=_json_default).encode
    columns: dict[str, list[Any]] = {
        "notification_id": [batch.notification_ids[i] for i in chosen],
        "source": [batch.sources[i] for i in chosen],
        "partition": [batch.partitions[i] for i in chosen],
        "offset": [batch.offsets[i] for i in chosen],
        "event_type": [t for t, _ in records],
        "event_id": [r["event_id"] for _, r in records],
        "schema_version": list(schema_versions),
        "occurred_at": [r["occurred_at"] for _, r in records],
        "recorded_at": [r.get("recorded_at") for _, r in records],
    }
    for name, _, _ in RECORD_COLUMNS:
        columns[name] = [r.get(name) for _, r in records]
    columns["payload"] = [dumps(r) for _, r in records]
    columns["value"] = [batch.values[i] for i in chosen]
    columns["chain"] = [batch.chains[i] for i in chosen]
    return pa.table(columns, schema=EVENT_SCHEMA)
