"""Check the mirror's decoded columns against its own `value` bytes.

The read models and auditors use the decoded columns (`csat`, `employee_id`,
`occurred_at`, `payload`, ...), while the hash chain covers only `value`. This check
decodes every mirrored `value` again (batched per schema, as the projector does) and
compares each decoded column with the stored one, in an in-memory DuckDB so that the
comparison is set-based and NULL-aware (`IS DISTINCT FROM`). It reads Arrow batches from
`projections.mirror`, so it does not depend on where the mirror is stored.

Which column holds what: `event_type` and `schema_version` come from the schema id,
`payload` is the whole record as JSON, a column named like a record field holds that
field (timestamps as TIMESTAMP), and a known field column the event type does not have
must be NULL. Envelope columns (`notification_id`, positions, `value`, `chain`) are the
chain check's business; columns this check does not know are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from audit.verify import Finding
from projections.columns import record_struct
from schemas.codec import AvroCodec, DecodedGroup

MIRROR = "mirror"
ENVELOPE = frozenset({"notification_id", "source", "partition", "offset", "value", "chain"})
_ROW = "__row"


def _is_timestamp(avro_type: Any) -> bool:
    if isinstance(avro_type, list):
        return any(_is_timestamp(t) for t in avro_type)
    return isinstance(avro_type, dict) and avro_type.get("logicalType") == "timestamp-millis"


@dataclass
class DecodedCheckResult:
    """How many rows were checked, which columns, and the first finding per column."""

    rows: int = 0
    columns: set[str] = field(default_factory=set)
    differences: int = 0
    findings: list[Finding] = field(default_factory=list)


class DecodedColumnsCheck:
    """Re-decodes mirrored `value`s and compares every decoded column; see the module docstring."""

    def __init__(self, codec: AvroCodec) -> None:
        self.codec = codec
        registry = codec.registry
        self._con = duckdb.connect()
        self._structs: dict[str, pa.StructType] = {}
        self._fields: dict[str, dict[str, bool]] = {}  # event type -> field -> is a timestamp
        for event_type in registry.event_types:
            fields = list(registry.latest(event_type).raw["fields"])
            self._structs[event_type] = record_struct(fields)
            self._fields[event_type] = {f["name"]: _is_timestamp(f["type"]) for f in fields}
        self._known = {name for fields in self._fields.values() for name in fields}
        self._versions = {v.schema_id: v.version for v in registry.all_versions()}
        self.result = DecodedCheckResult()
        self._reported: set[str] = set()

    def watch(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Pass the batches through, checking each on the way."""
        for batch in batches:
            self.check(batch)
            yield batch

    def check(self, batch: pa.RecordBatch) -> None:
        """Compare one batch's decoded columns with its re-decoded `value`s."""
        if batch.num_rows == 0:
            return
        values = [bytes(v) if v is not None else b"" for v in batch.column("value").to_pylist()]
        groups, errors = self.codec.decode_groups(values)
        self.result.rows += batch.num_rows
        for index, error in errors:
            self._add(batch, index, "value", f"cannot be decoded: {error}")
        for group in groups:
            self._check_group(batch, group)

    def close(self) -> None:
        self._con.close()

    def _check_group(self, batch: pa.RecordBatch, group: DecodedGroup) -> None:
        if group.event_type not in self._structs:
            for index in group.indexes:
                self._add(batch, index, "value", f"decodes to {group.event_type}, not a ledger event type")
            return
        indexes = pa.array(group.indexes, type=pa.int64())
        stored = batch.take(indexes).append_column(_ROW, indexes)
        expected = pa.table(
            {_ROW: indexes, "rec": pa.array(group.records, type=self._structs[group.event_type])}
        )
        comparisons = self._comparisons(stored.schema.names, group)
        if not comparisons:
            return
        self.result.columns.update(name for name, _, _ in comparisons)
        differs = " OR ".join(condition for _, condition, _ in comparisons)
        details = ", ".join(
            f"{condition} AS d{i}, s.{_q(name)}::VARCHAR AS s{i}, ({value})::VARCHAR AS e{i}"
            for i, (name, condition, value) in enumerate(comparisons)
        )
        self._con.register("stored", stored)
        self._con.register("expected", expected)
        try:
            rows = self._con.execute(
                f"SELECT s.{_ROW}, {details} FROM stored s JOIN expected e USING ({_ROW}) "
                f"WHERE {differs} ORDER BY s.{_ROW}"
            ).fetchall()
        finally:
            self._con.unregister("stored")
            self._con.unregister("expected")
        for row in rows:
            for i, (name, _, _) in enumerate(comparisons):
                if row[1 + 3 * i]:
                    stored_value, decoded = row[2 + 3 * i], row[3 + 3 * i]
                    self._add(
                        batch, int(row[0]), name, f"stored {stored_value!r}, decoded from value {decoded!r}"
                    )

    def _comparisons(self, names: list[str], group: DecodedGroup) -> list[tuple[str, str, str]]:
        """(column, SQL that is true when it differs, SQL of the decoded value) per checked column."""
        fields = self._fields[group.event_type]
        found = []
        for name in names:
            if name in ENVELOPE or name == _ROW:
                continue
            if name == "event_type":
                value = f"'{group.event_type}'"
            elif name == "schema_version":
                value = str(self._versions[group.schema_id])
            elif name == "payload":
                value = "to_json(e.rec)"
                found.append((name, f"json(s.payload::VARCHAR) IS DISTINCT FROM json({value})", value))
                continue
            elif name in fields:
                value = f"epoch_ms(e.rec.{_q(name)})" if fields[name] else f"e.rec.{_q(name)}"
            elif name in self._known:
                value = "NULL"
            else:
                continue  # not a column this check knows how to derive
            found.append((name, f"s.{_q(name)} IS DISTINCT FROM {value}", value))
        return found

    def _add(self, batch: pa.RecordBatch, index: int, column: str, detail: str) -> None:
        self.result.differences += 1
        if column in self._reported:
            return
        self._reported.add(column)
        row = {name: batch.column(name)[index].as_py() for name in ("notification_id", "event_id")}
        where = _where(batch, index)
        self.result.findings.append(
            Finding(
                "decoded",
                MIRROR,
                row["notification_id"],
                row["event_id"],
                where,
                f"column {column}: {detail}",
                column=column,
            )
        )


def _where(batch: pa.RecordBatch, index: int) -> str:
    names = batch.schema.names
    source = batch.column("source")[index].as_py() if "source" in names else None
    partition = batch.column("partition")[index].as_py() if "partition" in names else None
    offset = batch.column("offset")[index].as_py() if "offset" in names else None
    return f"ledger_events ({source}" + (f"[{partition}]@{offset})" if partition is not None else ")")


def _q(name: str) -> str:
    return f'"{name}"'
