"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary body.

Decoding always resolves the writer's version to the reader's (the newest version of the
event type), so a record written with v1 is read as v2 with v2's defaults filled in.
"""

from __future__ import annotations

import copy
import io
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fastavro
from fastavro.types import Schema
from fastavro.validation import validate

from schemas.errors import DecodeError, EncodeError
from schemas.fast_encoder import Encoder, compile_encoder, zigzag_varint
from schemas.registry import SchemaRegistry, SchemaVersion

MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")


def _strip_timestamp_logical_types(raw: Any) -> Any:
    """The same schema with timestamp-millis read as plain epoch milliseconds."""
    if isinstance(raw, dict):
        if raw.get("logicalType") == "timestamp-millis":
            return {k: v for k, v in raw.items() if k != "logicalType"}
        return {k: _strip_timestamp_logical_types(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_strip_timestamp_logical_types(v) for v in raw]
    return raw


@dataclass(frozen=True)
class DecodedGroup:
    """Records of one schema version from a batch, with their positions in the batch."""

    schema_id: int
    event_type: str
    indexes: list[int]
    records: list[dict[str, Any]]


class AvroCodec:
    """Encode and decode ledger events in the Confluent wire format.

    With `epoch_millis=True` timestamps are read as integer milliseconds instead of
    `datetime` objects: the bytes are the same, decoding is markedly faster, and the
    projection engine wants integers anyway.
    """

    def __init__(self, registry: SchemaRegistry, *, epoch_millis: bool = False) -> None:
        self.registry = registry
        self._readers: dict[int, tuple[str, Schema, Schema | None]] = {}
        self._array_readers: dict[int, tuple[Schema, Schema | None]] = {}
        # Parsed with fastavro's write hint, so `schemaless_writer` does not parse the schema
        # again on every call (about half of the encoding time otherwise; same bytes).
        self._writers: dict[int, Schema] = {
            version.schema_id: fastavro.parse_schema(copy.deepcopy(dict(version.raw)))
            for version in registry.all_versions()
        }
        #: Each version's compiled encoder (`schemas.fast_encoder`), or None where it has none;
        #: compiled at its first use (~0.4 ms a version: most commands encode few types or none).
        self._compiled: dict[int, Encoder | None] = {}
        for version in registry.all_versions():
            writer_raw = self._reader_form(version, epoch_millis)
            latest = registry.latest(version.event_type)
            reader_raw = (
                None if latest.schema_id == version.schema_id else self._reader_form(latest, epoch_millis)
            )
            self._readers[version.schema_id] = (
                version.event_type,
                fastavro.parse_schema(writer_raw, _write_hint=False),
                None if reader_raw is None else fastavro.parse_schema(reader_raw, _write_hint=False),
            )
            self._array_readers[version.schema_id] = (
                fastavro.parse_schema({"type": "array", "items": writer_raw}, _write_hint=False),
                None
                if reader_raw is None
                else fastavro.parse_schema({"type": "array", "items": reader_raw}, _write_hint=False),
            )

    @staticmethod
    def _reader_form(version: SchemaVersion, epoch_millis: bool) -> dict[str, Any]:
        raw = copy.deepcopy(dict(version.raw))
        return _strip_timestamp_logical_types(raw) if epoch_millis else raw

    def encode(self, event_type: str, record: Mapping[str, Any]) -> bytes:
        """Frame and encode a record with the newest schema version of its type."""
        return self.encode_with(self.registry.latest(event_type), record)

    def encode_with(self, version: SchemaVersion, record: Mapping[str, Any]) -> bytes:
        """Frame and encode a record with one specific schema version."""
        try:
            compiled = self._compiled[version.schema_id]
        except KeyError:
            compiled = self._compiled[version.schema_id] = compile_encoder(version.schema_id, version.raw)
        if compiled is not None:
            try:
                message = compiled(record)
            except Exception:  # noqa: BLE001 - fastavro below encodes it, or words the refusal
                message = None
            if message is not None:
                return message
        buffer = io.BytesIO()
        buffer.write(HEADER.pack(MAGIC_BYTE, version.schema_id))
        try:
            fastavro.schemaless_writer(buffer, self._writers.get(version.schema_id, version.parsed), record)
        except Exception as error:  # fastavro raises ValueError, TypeError, AttributeError...
            raise self._explain(version, record, error) from error
        return buffer.getvalue()

    @staticmethod
    def _explain(version: SchemaVersion, record: Mapping[str, Any], error: Exception) -> EncodeError:
        for field in version.raw["fields"]:
            name = field["name"]
            if name not in record and "default" not in field:
                return EncodeError(version.event_type, name, "is required")
            if name in record:
                try:
                    validate(record[name], field["type"], raise_errors=True)
                except Exception as field_error:  # noqa: BLE001 - only used for the message
                    return EncodeError(version.event_type, name, f"invalid value: {field_error}")
        return EncodeError(version.event_type, "?", str(error))

    def schema_id(self, data: bytes) -> int:
        """The schema id in a framed message's header."""
        if len(data) < HEADER.size:
            raise DecodeError(f"message of {len(data)} bytes is shorter than the 5-byte header")
        magic, schema_id = HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise DecodeError(f"wrong magic byte {magic} (expected {MAGIC_BYTE})")
        return int(schema_id)

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """(event type, record) of a framed message, resolved to the newest version."""
        schema_id = self.schema_id(data)
        try:
            event_type, writer, reader = self._readers[schema_id]
        except KeyError:
            raise DecodeError(f"unknown schema id {schema_id}") from None
        buffer = io.BytesIO(data)
        buffer.seek(HEADER.size)
        try:
            record = fastavro.schemaless_reader(buffer, writer, reader)
        except Exception as error:  # truncated or corrupt bodies surface as many types
            raise DecodeError(
                f"{event_type} (schema id {schema_id}): body cannot be decoded: "
                f"{type(error).__name__}: {error}"
            ) from error
        if buffer.tell() != len(data):
            raise DecodeError(
                f"{event_type} (schema id {schema_id}): {len(data) - buffer.tell()} "
                "trailing bytes after the record"
            )
        if not isinstance(record, dict):
            raise DecodeError(f"{event_type} (schema id {schema_id}): not a record")
        return event_type, record

    def decode_groups(
        self, messages: Sequence[bytes]
    ) -> tuple[list[DecodedGroup], list[tuple[int, DecodeError]]]:
        """Decode a batch into groups of one schema each, plus (index, error) per bad message.

        Bodies sharing a schema id are decoded in one call, framed as one Avro array:
        the per-call overhead of fastavro, not the bytes, dominates for small records.
        Should a group fail, its messages are decoded one by one so that only the bad
        ones are reported.
        """
        errors: list[tuple[int, DecodeError]] = []
        by_schema: dict[int, list[int]] = {}
        for index, message in enumerate(messages):
            try:
                schema_id = self.schema_id(message)
            except DecodeError as error:
                errors.append((index, error))
                continue
            if schema_id not in self._readers:
                errors.append((index, DecodeError(f"unknown schema id {schema_id}")))
                continue
            by_schema.setdefault(schema_id, []).append(index)
        groups = []
        for schema_id, indexes in by_schema.items():
            event_type = self._readers[schema_id][0]
            records = self._decode_group(schema_id, [messages[i] for i in indexes])
            kept = indexes
            if records is None:
                kept, records = [], []
                for index in indexes:
                    try:
                        records.append(self.decode(messages[index])[1])
                        kept.append(index)
                    except DecodeError as error:
                        errors.append((index, error))
            if kept:
                groups.append(DecodedGroup(schema_id, event_type, kept, records))
        return groups, errors

    def decode_many(self, messages: Sequence[bytes]) -> list[tuple[str, dict[str, Any]] | DecodeError]:
        """Decode a batch: per message, in order, a (type, record) or its DecodeError."""
        results: list[tuple[str, dict[str, Any]] | DecodeError | None] = [None] * len(messages)
        groups, errors = self.decode_groups(messages)
        for group in groups:
            for index, record in zip(group.indexes, group.records, strict=True):
                results[index] = (group.event_type, record)
        for index, error in errors:
            results[index] = error
        return results  # type: ignore[return-value]

    def _decode_group(self, schema_id: int, messages: list[bytes]) -> list[dict[str, Any]] | None:
        writer, reader = self._array_readers[schema_id]
        body = b"".join(memoryview(m)[HEADER.size :] for m in messages)
        buffer = io.BytesIO(zigzag_varint(len(messages)) + body + b"\x00")
        try:
            records = fastavro.schemaless_reader(buffer, writer, reader)
        except Exception:  # noqa: BLE001 - any failure: fall back to one by one
            return None
        if buffer.tell() != len(buffer.getbuffer()) or not isinstance(records, list):
            return None
        if len(records) != len(messages):
            return None
        return records
