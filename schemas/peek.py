"""Read a few named fields of framed Avro messages without decoding the whole record.

The relay needs only an event's id and its key fields, which every ledger schema puts near
the front. Avro binary has no index, but each value before them can be skipped by reading
its length or varint, which is far cheaper than building the whole record (and resolving
it to the newest schema version). Per schema id a plan is made once: which leading fields
to read or skip, up to the last field wanted, compiled into a reader function of its own.
A schema whose leading fields hold a type this module does not skip (a nested record, a
map) is decoded in full instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
    """A zigzag varint at `pos` of more than one byte (the readers inline the one-byte case)."""
    byte = data[pos]
    pos += 1
    value = byte & 0x7F
    shift = 7
    while byte >= 0x80:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
    return (value >> 1) ^ -(value & 1), pos


def _varint_lines(target: str) -> list[str]:
    # Nearly every varint of these messages (lengths, small ints, union branches) is one byte.
    return [
        "b = data[pos]",
        "if b < 0x80:",
        f"    {target} = (b >> 1) ^ -(b & 1)",
        "    pos += 1",
        "else:",
        f"    {target}, pos = _varint(data, pos)",
    ]


def _value_lines(kind: int, target: str | None) -> list[str]:
    """Lines that read (into `target`) or skip one value of `kind` at `pos`.

    A string running past the end is caught by the reader's last check (`pos` lies past
    the end then), so it is not checked here.
    """
    if kind == _STRING:
        lines = [*_varint_lines("n"), "if n < 0:", "    raise IndexError"]
        if target is not None:
            lines.append(f"{target} = data[pos:pos + n]")
        return [*lines, "pos += n"]
    if kind == _VARINT:
        if target is None:
            # Skipped (timestamps, counts): only where it ends matters.
            return ["while data[pos] >= 0x80:", "    pos += 1", "pos += 1"]
        return [*_varint_lines("n"), f"{target} = str(n).encode()"]
    if kind == _BOOLEAN:
        return [*([f"{target} = str(data[pos] != 0).encode()"] if target else ["data[pos]"]), "pos += 1"]
    # null, double, float: nothing to read (a wanted one is None, as before).
    skip = {_NULL: 0, _DOUBLE: 8, _FLOAT: 4}[kind]
    return [*([f"{target} = None"] if target else []), *([f"pos += {skip}"] if skip else [])]


def _reader_source(event_type: str, schema_id: int, plan: list[tuple[str | None, Kind]]) -> str:
    """The source of one schema's reader: its plan unrolled into straight-line code."""
    body: list[str] = []
    names: list[tuple[str, str]] = []
    for index, (name, kind) in enumerate(plan):
        target = None if name is None else f"v{index}"
        if target is not None and name is not None:
            names.append((name, target))
        if isinstance(kind, tuple):
            body += _varint_lines("branch")
            for branch, branch_kind in enumerate(kind):
                body.append(f"{'if' if branch == 0 else 'elif'} branch == {branch}:")
                body += [f"    {line}" for line in _value_lines(branch_kind, target) or ["pass"]]
            body += ["else:", f"    raise DecodeError(f'{event_type}: union branch {{branch}} out of range')"]
        else:
            body += _value_lines(kind, target)  # type: ignore[arg-type]
    truncated = f"raise DecodeError('{event_type} (schema id {schema_id}): body is truncated')"
    found = ", ".join(f"{name!r}: {target}" for name, target in names)
    return "\n".join(
        [
            "def read(data):",
            f"    pos = {HEADER.size}",
            "    try:",
            *(f"        {line}" for line in body or ["pass"]),
            "    except IndexError:",
            f"        {truncated} from None",
            "    if pos > len(data):",
            f"        {truncated}",
            f"    return {event_type!r}, {{{found}}}",
        ]
    )


Reader = Callable[[bytes], tuple[str, dict[str, bytes | None]]]


def _compiled_reader(event_type: str, schema_id: int, plan: list[tuple[str | None, Kind]]) -> Reader:
    """One schema's plan as a function of its own (as `dataclasses` makes methods): walking
    the plan in a loop cost ~7 µs a message in the relay, the unrolled code a fraction."""
    namespace: dict[str, Any] = {"_varint": _varint, "DecodeError": DecodeError}
    # The source is made above from the registry's schemas alone, never from a message.
    exec(_reader_source(event_type, schema_id, plan), namespace)
    reader: Reader = namespace["read"]
    return reader


class FieldPeek:
    """Reads chosen leading fields of framed messages: (event type, {field: text or None}).

    String values are returned as UTF-8 bytes (what Kafka keys and headers carry) and only
    for the wanted fields; the body after the last wanted field is not read at all.
    """

    def __init__(self, codec: AvroCodec, wanted: Iterable[str]) -> None:
        self._codec = codec
        wanted_names = frozenset(wanted)
        #: a message's 5-byte header (magic byte and schema id) -> its schema's reader
        self._readers: dict[bytes, Reader] = {}
        for version in codec.registry.all_versions():
            if version.kind != "event":
                continue
            fields = list(version.raw["fields"])
            last = max((i for i, f in enumerate(fields) if f["name"] in wanted_names), default=-1)
            plan: list[tuple[str | None, Kind]] = []
            try:
                for field in fields[: last + 1]:
                    name = field["name"] if field["name"] in wanted_names else None
                    plan.append((name, _kind(field["type"])))
                reader = _compiled_reader(version.event_type, version.schema_id, plan)
            except _UnsupportedError:
                reader = self._decoded
            self._readers[HEADER.pack(MAGIC_BYTE, version.schema_id)] = reader
        self._wanted = tuple(sorted(wanted_names))

    def peek(self, data: bytes) -> tuple[str, dict[str, bytes | None]]:
        """The event type and the wanted fields of one message (absent fields are None)."""
        reader = self._readers.get(data[: HEADER.size])
        if reader is not None:
            return reader(data)
        if len(data) < HEADER.size:
            raise DecodeError(f"message of {len(data)} bytes is shorter than the 5-byte header")
        magic, schema_id = HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise DecodeError(f"wrong magic byte {magic} (expected {MAGIC_BYTE})")
        raise DecodeError(f"unknown schema id {schema_id}")

    def _decoded(self, data: bytes) -> tuple[str, dict[str, bytes | None]]:
        event_type, record = self._codec.decode(data)
        return event_type, {name: _as_text(record.get(name)) for name in self._wanted}


def _as_text(value: Any) -> bytes | None:
    return None if value is None else str(value).encode()
