"""Read a few named fields of framed Avro messages without decoding the whole record.

The relay needs only an event's id and its key fields, which every ledger schema puts near
the front. Avro binary has no index, but each value before them can be skipped by reading
its length or varint, which is far cheaper than building the whole record (and resolving
it to the newest schema version). Per schema id a plan is made once: which leading fields
to read or skip, up to the last field wanted. A schema whose leading fields hold a type
this module does not skip (a nested record, a map) is decoded in full instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from schemas.codec import HEADER, MAGIC_BYTE, AvroCodec
from schemas.errors import DecodeError

# Value kinds a plan knows how to read or skip.
_NULL, _BOOLEAN, _VARINT, _FLOAT, _DOUBLE, _STRING = range(6)
_PRIMITIVE = {
    "null": _NULL,
    "boolean": _BOOLEAN,
    "int": _VARINT,
    "long": _VARINT,
    "float": _FLOAT,
    "double": _DOUBLE,
    "string": _STRING,
    "bytes": _STRING,
}
#: A union: the kinds of its branches, in order (a tuple marks a union in a plan).
Kind = int | tuple[int, ...] | None


class _UnsupportedError(Exception):
    """A schema type before the wanted fields that a plan cannot skip."""


def _kind(avro_type: Any) -> Kind:
    if isinstance(avro_type, str):
        if avro_type in _PRIMITIVE:
            return _PRIMITIVE[avro_type]
        raise _UnsupportedError(avro_type)
    if isinstance(avro_type, list):
        branches = tuple(_kind(branch) for branch in avro_type)
        if any(isinstance(b, tuple) or b is None for b in branches):
            raise _UnsupportedError("nested union")
        return branches  # type: ignore[return-value]
    if isinstance(avro_type, dict):
        kind = avro_type.get("type")
        if kind == "enum":
            return _VARINT
        if isinstance(kind, str) and kind in _PRIMITIVE:  # with a logical type
            return _PRIMITIVE[kind]
    raise _UnsupportedError(str(avro_type))


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    byte = data[pos]
    pos += 1
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), pos
    value = byte & 0x7F
    shift = 7
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (value >> 1) ^ -(value & 1), pos
        shift += 7


def _read(data: bytes, pos: int, kind: int) -> tuple[Any, int]:
    if kind == _STRING:
        size, pos = _varint(data, pos)
        end = pos + size
        if size < 0 or end > len(data):
            raise IndexError("string runs past the end")
        return data[pos:end], end
    if kind == _VARINT:
        return _varint(data, pos)
    if kind == _NULL:
        return None, pos
    if kind == _BOOLEAN:
        return data[pos] != 0, pos + 1
    if kind == _DOUBLE:
        return None, pos + 8
    return None, pos + 4  # float


class FieldPeek:
    """Reads chosen leading fields of framed messages: (event type, {field: text or None}).

    String values are returned as UTF-8 bytes (what Kafka keys and headers carry) and only
    for the wanted fields; the body after the last wanted field is not read at all.
    """

    def __init__(self, codec: AvroCodec, wanted: Iterable[str]) -> None:
        self._codec = codec
        wanted_names = frozenset(wanted)
        #: schema id -> (event type, plan or None for a full decode)
        self._plans: dict[int, tuple[str, list[tuple[str | None, Kind]] | None]] = {}
        for version in codec.registry.all_versions():
            if version.kind != "event":
                continue
            fields = list(version.raw["fields"])
            last = max((i for i, f in enumerate(fields) if f["name"] in wanted_names), default=-1)
            plan: list[tuple[str | None, Kind]] | None = []
            try:
                for field in fields[: last + 1]:
                    name = field["name"] if field["name"] in wanted_names else None
                    plan.append((name, _kind(field["type"])))  # type: ignore[union-attr]
            except _UnsupportedError:
                plan = None
            self._plans[version.schema_id] = (version.event_type, plan)
        self._wanted = tuple(sorted(wanted_names))

    def peek(self, data: bytes) -> tuple[str, dict[str, bytes | None]]:
        """The event type and the wanted fields of one message (absent fields are None)."""
        if len(data) < HEADER.size:
            raise DecodeError(f"message of {len(data)} bytes is shorter than the 5-byte header")
        magic, schema_id = HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise DecodeError(f"wrong magic byte {magic} (expected {MAGIC_BYTE})")
        try:
            event_type, plan = self._plans[schema_id]
        except KeyError:
            raise DecodeError(f"unknown schema id {schema_id}") from None
        if plan is None:
            return self._decoded(data)
        found: dict[str, bytes | None] = {}
        pos = HEADER.size
        try:
            for name, kind in plan:
                if isinstance(kind, tuple):
                    branch, pos = _varint(data, pos)
                    if not 0 <= branch < len(kind):
                        raise DecodeError(f"{event_type}: union branch {branch} out of range")
                    value, pos = _read(data, pos, kind[branch])
                else:
                    value, pos = _read(data, pos, kind)  # type: ignore[arg-type]
                if name is not None:
                    found[name] = value if isinstance(value, bytes) else _as_text(value)
        except IndexError:
            raise DecodeError(f"{event_type} (schema id {schema_id}): body is truncated") from None
        if pos > len(data):
            raise DecodeError(f"{event_type} (schema id {schema_id}): body is truncated")
        return event_type, found

    def _decoded(self, data: bytes) -> tuple[str, dict[str, bytes | None]]:
        event_type, record = self._codec.decode(data)
        return event_type, {name: _as_text(record.get(name)) for name in self._wanted}


def _as_text(value: Any) -> bytes | None:
    return None if value is None else str(value).encode()
