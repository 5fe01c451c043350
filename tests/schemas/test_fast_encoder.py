"""Compiled encoders write fastavro's bytes, and leave to fastavro every record they do not cover."""

from __future__ import annotations

import io
import math
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import HEADER, AvroCodec
from schemas.errors import EncodeError
from schemas.fast_encoder import compile_encoder, zigzag_varint
from schemas.registry import SchemaRegistry, SchemaVersion

REGISTRY = SchemaRegistry.load()
CODEC = AvroCodec(REGISTRY)
VERSIONS = REGISTRY.all_versions()
_TEXT = st.text(max_size=12)


def _fastavro(version: SchemaVersion, record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    buffer.write(HEADER.pack(0, version.schema_id))
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(dict(version.raw)), record)
    return buffer.getvalue()


def _valid(avro_type: Any) -> st.SearchStrategy[Any]:
    """Values of exactly the Python types the compiled code covers, edge values included."""
    if isinstance(avro_type, list):
        return st.one_of(*[_valid(t) for t in avro_type])
    if isinstance(avro_type, dict):
        if avro_type["type"] == "array":
            return st.lists(_valid(avro_type["items"]), max_size=3)
        if avro_type["type"] == "map":
            return st.dictionaries(_TEXT, _valid(avro_type["values"]), max_size=3)
        return _valid(avro_type["type"])
    return {
        "null": st.none(),
        "string": st.one_of(_TEXT, st.text(min_size=60, max_size=70), st.just("é" * 5000)),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**45), 2**45)),
        "boolean": st.booleans(),
        "double": st.floats(allow_nan=True),
    }[avro_type]


#: Values fastavro may take or refuse, which the compiled code hands back to it.
_ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    _TEXT,
    st.tuples(_TEXT),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(_TEXT, st.floats(), max_size=2),
    st.binary(max_size=3),
)


def _record(version: SchemaVersion, odd: bool) -> st.SearchStrategy[dict[str, Any]]:
    fields = version.raw["fields"]
    values = {f["name"]: (_ODD if odd else _valid(f["type"])) for f in fields}
    # Each field may be left out (a default, None, or an error) and strangers may be added.
    return st.fixed_dictionaries({}, optional=values).map(dict) | st.fixed_dictionaries(values).map(dict)


def _same_outcome(version: SchemaVersion, record: dict[str, Any]) -> None:
    try:
        expected: bytes | Exception = _fastavro(version, record)
    except Exception as error:  # noqa: BLE001 - any refusal must stay a refusal
        expected = error
    try:
        got: bytes | Exception = CODEC.encode_with(version, record)
    except EncodeError as error:
        got = error
    if isinstance(expected, Exception):
        assert isinstance(got, EncodeError), (record, got)
    else:
        assert got == expected, record


def test_every_ledger_schema_gets_a_compiled_encoder() -> None:
    assert all(compile_encoder(v.schema_id, v.raw) is not None for v in VERSIONS)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"{v.event_type}.v{v.version}")
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_the_bytes_are_fastavros(version: SchemaVersion, data: st.DataObject) -> None:
    record = data.draw(_record(version, odd=False))
    _same_outcome(version, record)
    compiled = compile_encoder(version.schema_id, version.raw)
    assert compiled is not None
    if all(f["name"] in record or "default" in f or isinstance(f["type"], list) for f in version.raw["fields"]):
        assert compiled(record) == _fastavro(version, record)  # covered, not handed back


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"{v.event_type}.v{v.version}")
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_odd_values_get_fastavros_bytes_or_its_refusal(version: SchemaVersion, data: st.DataObject) -> None:
    _same_outcome(version, data.draw(_record(version, odd=True)))


def test_a_nan_keeps_its_bits() -> None:
    version = next(v for v in VERSIONS if any(f["type"] == "double" for f in v.raw["fields"]))
    record: dict[str, Any] = {f["name"]: None for f in version.raw["fields"]}
    for f in version.raw["fields"]:
        if f["type"] == "double":
            record[f["name"]] = -math.nan
    _same_outcome(version, record)


def test_schemas_it_does_not_cover_get_none() -> None:
    assert compile_encoder(1, {"type": "record", "name": "R", "fields": [{"name": "b", "type": "bytes"}]}) is None
    union = {"type": "record", "name": "R", "fields": [{"name": "u", "type": ["string", "long"]}]}
    assert compile_encoder(1, union) is None
    decimal = {"type": "bytes", "logicalType": "decimal", "precision": 4}
    assert compile_encoder(1, {"type": "record", "name": "R", "fields": [{"name": "d", "type": decimal}]}) is None


@given(st.integers(-(2**63), 2**63 - 1))
def test_zigzag_varint_is_avros_long(value: int) -> None:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, "long", value)
    assert zigzag_varint(value) == buffer.getvalue()


def test_what_the_compiled_encoder_cannot_encode_is_refused_as_fastavro_refuses_it() -> None:
    """A lone surrogate raised UnicodeEncodeError from the compiled code, past the codec's
    EncodeError (which callers catch)."""
    record = {"event_id": "e", "occurred_at": 1, "recorded_at": 2, "customer_id": "\ud800"}
    with pytest.raises(EncodeError, match="surrogates not allowed"):
        CODEC.encode("CustomerForgotten", record)
