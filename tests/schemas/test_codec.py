"""Wire-format codec: round trips for every event type, typed errors for bad bytes."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import HEADER, AvroCodec
from schemas.errors import DecodeError, EncodeError
from schemas.registry import SchemaRegistry

REGISTRY = SchemaRegistry.load()
CODEC = AvroCodec(REGISTRY, epoch_millis=True)
_MILLIS = st.integers(min_value=0, max_value=4_102_444_800_000)
_TEXT = st.text(max_size=20)


def _strategy(avro_type: Any) -> st.SearchStrategy[Any]:
    if isinstance(avro_type, list):
        return st.one_of(*[_strategy(t) for t in avro_type])
    if isinstance(avro_type, dict):
        if avro_type.get("logicalType") == "timestamp-millis":
            return _MILLIS
        if avro_type["type"] == "array":
            return st.lists(_strategy(avro_type["items"]), max_size=4)
        if avro_type["type"] == "map":
            return st.dictionaries(_TEXT, _strategy(avro_type["values"]), max_size=4)
        return _strategy(avro_type["type"])
    return {
        "null": st.none(),
        "string": _TEXT,
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "boolean": st.booleans(),
        "double": st.floats(allow_nan=False),
    }[avro_type]


def _record_strategy(event_type: str) -> st.SearchStrategy[dict[str, Any]]:
    fields = REGISTRY.latest(event_type).raw["fields"]
    return st.fixed_dictionaries({f["name"]: _strategy(f["type"]) for f in fields})


@pytest.mark.parametrize("event_type", REGISTRY.all_types)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_round_trip_every_event_type(event_type: str, data: st.DataObject) -> None:
    record = data.draw(_record_strategy(event_type))
    encoded = CODEC.encode(event_type, record)
    assert encoded[0] == 0
    assert CODEC.decode(encoded) == (event_type, record)
    assert CODEC.decode_many([encoded, encoded]) == [(event_type, record)] * 2


def test_datetime_mode_returns_aware_datetimes() -> None:
    codec = AvroCodec(REGISTRY)
    record = {
        "event_id": "x",
        "occurred_at": 1_700_000_000_000,
        "recorded_at": 1_700_000_000_000,
        "customer_id": "c",
    }
    _, decoded = codec.decode(codec.encode("CustomerForgotten", record))
    assert decoded["occurred_at"].tzinfo is not None


def _sample() -> bytes:
    return CODEC.encode(
        "CustomerForgotten",
        {"event_id": "e", "occurred_at": 1, "recorded_at": 2, "customer_id": "c"},
    )


def test_wrong_magic_byte() -> None:
    with pytest.raises(DecodeError, match="magic byte"):
        CODEC.decode(b"\x01" + _sample()[1:])


def test_unknown_schema_id() -> None:
    with pytest.raises(DecodeError, match="unknown schema id 9999"):
        CODEC.decode(HEADER.pack(0, 9999) + _sample()[5:])


@pytest.mark.parametrize("keep", [0, 3, 5, 7, 9, 11])
def test_truncated_message(keep: int) -> None:
    data = _sample()
    assert keep < len(data)
    with pytest.raises(DecodeError):
        CODEC.decode(data[:keep])


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(DecodeError, match="trailing"):
        CODEC.decode(_sample() + b"\x00")


def test_decode_many_isolates_bad_messages() -> None:
    good = _sample()
    results = CODEC.decode_many([good, b"\x01bad", good[:-3], good, HEADER.pack(0, 4242) + b"x"])
    assert results[0] == results[3]
    assert not isinstance(results[0], DecodeError)
    assert all(isinstance(results[i], DecodeError) for i in (1, 2, 4))


def test_encode_error_names_the_field() -> None:
    with pytest.raises(EncodeError, match="'customer_id'"):
        CODEC.encode(
            "CustomerForgotten",
            {"event_id": "e", "occurred_at": 1, "recorded_at": 2, "customer_id": 5},
        )


def test_v1_survey_is_read_as_v2_with_defaults() -> None:
    v1 = REGISTRY.versions("SurveyAnswered")[0]
    assert v1.version == 1
    record = {
        "event_id": "e",
        "occurred_at": 1,
        "recorded_at": 2,
        "customer_id": "c",
        "case_id": "k",
        "interaction_id": None,
        "employee_id": "e1",
        "csat": 5,
        "nps": None,
        "ces": None,
    }
    buffer = io.BytesIO()
    buffer.write(HEADER.pack(0, v1.schema_id))
    fastavro.schemaless_writer(buffer, v1.parsed, record)
    event_type, decoded = CODEC.decode(buffer.getvalue())
    assert event_type == "SurveyAnswered"
    assert decoded["csat"] == 5
    assert decoded["comment"] is None
    assert decoded["survey_channel"] == "unknown"
    assert CODEC.decode_many([buffer.getvalue()]) == [(event_type, decoded)]
