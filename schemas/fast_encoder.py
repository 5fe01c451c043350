"""Avro encoders compiled per schema version: the bytes fastavro writes, in less time.

`fastavro.schemaless_writer` walks the schema for every record and costs ~5-7 µs for a
ledger event, a fifth of a bulk import's parse workers' time. An encoder generated for one
schema is straight-line code with the field names, union branches and header as constants
(~2-3.5 µs). It covers the types the ledger's schemas use (string, long, int, double,
boolean, arrays and maps of them, unions of null and one of them, timestamp-millis longs)
and only values of exactly those Python types; for anything else it returns None and the
caller encodes with fastavro, so a record fastavro refuses is refused with fastavro's error,
and one it coerces (an int for a double, a tuple for an array) gets fastavro's bytes. A
schema using anything else gets no compiled encoder at all. tests/schemas/test_fast_encoder.py
checks the bytes against fastavro's for generated records of every schema.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

#: A compiled encoder: the framed message, or None when fastavro must encode the record.
Encoder = Callable[[Mapping[str, Any]], bytes | None]

_LONG = (-(1 << 63), (1 << 63) - 1)
_INT = (-(1 << 31), (1 << 31) - 1)
#: Each varint of one byte, by value: a length or count below 64 is zig-zag encoded in one.
_ONE_BYTE = tuple(bytes((n,)) for n in range(128))
#: Zig-zag varints of the non-negative numbers below 8192 (string lengths, item counts).
_SMALL = tuple(
    bytes((n,)) if n < 128 else bytes((n & 0x7F | 0x80, n >> 7)) for n in (i << 1 for i in range(8192))
)
#: The logical types whose values are written as their underlying type's unchanged.
_PLAIN_LOGICAL = {("long", "timestamp-millis")}


def zigzag_varint(value: int) -> bytes:
    """Avro's encoding of a long: zig-zag, then 7 bits per byte, low bits first."""
    number = (value << 1) ^ (value >> 63)
    if number < 128:
        return _ONE_BYTE[number]
    if number < 1 << 14:
        return bytes((number & 0x7F | 0x80, number >> 7))
    # Unrolled for the sizes of epoch milliseconds (6 bytes): a loop costs twice as much.
    if number < 1 << 42 and number >= 1 << 35:
        return bytes(
            (
                number & 0x7F | 0x80,
                number >> 7 & 0x7F | 0x80,
                number >> 14 & 0x7F | 0x80,
                number >> 21 & 0x7F | 0x80,
                number >> 28 & 0x7F | 0x80,
                number >> 35,
            )
        )
    out = bytearray()
    while number & ~0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


class _UnsupportedError(Exception):
    """The schema uses something the generated code does not cover."""


class _Source:
    """The generated function's lines and the constants they name."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self._names = 0

    def name(self, prefix: str) -> str:
        self._names += 1
        return f"{prefix}{self._names}"

    def constant(self, value: Any) -> str:
        name = self.name("C")
        self.constants[name] = value
        return name

    def add(self, indent: int, line: str) -> None:
        self.lines.append(" " * indent + line)


def _value(source: _Source, schema: Any, value: str, indent: int) -> None:
    """Lines appending the encoding of the local `value`, of type `schema`, or returning None."""
    add = source.add
    if isinstance(schema, list):
        if len(schema) != 2 or schema[0] != "null" or schema[1] == "null":
            raise _UnsupportedError(f"union {schema}")
        add(indent, f"if {value} is None:")
        add(indent + 4, "a(b'\\x00')")
        add(indent, "else:")
        add(indent + 4, "a(b'\\x02')")  # the branch index 1, zig-zag encoded
        _value(source, schema[1], value, indent + 4)
        return
    if isinstance(schema, dict):
        kind = schema.get("type")
        logical = schema.get("logicalType")
        if kind == "array":
            item = source.name("i")
            add(indent, f"if type({value}) is not list: return None")
            add(indent, f"if {value}:")
            add(indent + 4, f"a(zz(len({value})))")
            add(indent + 4, f"for {item} in {value}:")
            _value(source, schema["items"], item, indent + 8)
            add(indent, "a(b'\\x00')")
            return
        if kind == "map":
            key, item = source.name("k"), source.name("i")
            add(indent, f"if type({value}) is not dict: return None")
            add(indent, f"if {value}:")
            add(indent + 4, f"a(zz(len({value})))")
            add(indent + 4, f"for {key}, {item} in {value}.items():")
            _value(source, "string", key, indent + 8)
            _value(source, schema["values"], item, indent + 8)
            add(indent, "a(b'\\x00')")
            return
        if logical is not None and (kind, logical) not in _PLAIN_LOGICAL:
            raise _UnsupportedError(f"logical type {logical}")
        if not isinstance(kind, str) or kind in ("record", "enum", "fixed"):
            raise _UnsupportedError(f"type {kind}")
        schema = kind
    if schema == "string":
        add(indent, f"if type({value}) is not str: return None")
        add(indent, f"{value} = {value}.encode()")
        add(indent, f"n = len({value})")
        add(indent, "a(SMALL[n] if n < 8192 else zz(n))")
        add(indent, f"a({value})")
    elif schema in ("long", "int"):
        low, high = _LONG if schema == "long" else _INT
        add(indent, f"if type({value}) is not int or not {low} <= {value} <= {high}: return None")
        add(indent, f"a(zz({value}))")
    elif schema == "double":
        add(indent, f"if type({value}) is not float: return None")
        add(indent, f"a(DOUBLE({value}))")
    elif schema == "boolean":
        add(indent, f"if type({value}) is not bool: return None")
        add(indent, f"a(b'\\x01' if {value} else b'\\x00')")
    else:
        raise _UnsupportedError(f"type {schema}")


def compile_encoder(schema_id: int, raw: Mapping[str, Any]) -> Encoder | None:
    """The framed-message encoder of a record schema (Confluent header with `schema_id`), or
    None when the schema uses a type the generated code does not cover."""
    source = _Source()
    missing = source.constant(object())
    source.add(0, "def encode(r):")
    source.add(4, f"o = [{source.constant(struct.pack('>bI', 0, schema_id))}]")
    source.add(4, "a = o.append")
    try:
        if raw.get("type") != "record":
            raise _UnsupportedError("not a record")
        for field in raw["fields"]:
            name, schema = field["name"], field["type"]
            value = source.name("f")
            # What fastavro's write_record reads: the default when the field is missing, None
            # for a missing union with null, else an error (left to fastavro to word).
            if "default" in field:
                source.add(4, f"{value} = r.get({name!r}, {source.constant(field['default'])})")
            elif isinstance(schema, list) and "null" in schema:
                source.add(4, f"{value} = r.get({name!r})")
            else:
                source.add(4, f"{value} = r.get({name!r}, {missing})")
                source.add(4, f"if {value} is {missing}: return None")
            _value(source, schema, value, 4)
    except (_UnsupportedError, KeyError, TypeError):
        return None
    source.add(4, "return b''.join(o)")
    scope: dict[str, Any] = {
        **source.constants,
        "SMALL": _SMALL,
        "zz": zigzag_varint,
        "DOUBLE": struct.Struct("<d").pack,
    }
    code = compile("\n".join(source.lines), f"<avro encoder {raw.get('name')} {schema_id}>", "exec")
    # Our own generated code: field names enter it as repr()s, every value as a named constant.
    exec(code, scope)
    encoder: Encoder = scope["encode"]
    return encoder
