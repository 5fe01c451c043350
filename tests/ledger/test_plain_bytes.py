"""Plain data packed for another process of the same import reads back equal, whatever it holds."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ledger.plain_bytes import from_bytes, to_bytes

_PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=3)
    | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


def _typed(value: Any) -> Any:
    """`value` with every type made visible (True == 1 and 0.0 == -0.0 otherwise)."""
    if isinstance(value, dict):
        return ("dict", [(k, _typed(v)) for k, v in value.items()])
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_typed(v) for v in value])
    return (type(value).__name__, repr(value))


@given(_PLAIN)
def test_plain_data_reads_back_with_its_types_and_order(value: Any) -> None:
    assert _typed(from_bytes(to_bytes(value))) == _typed(value)


def test_what_marshal_refuses_travels_pickled() -> None:
    value = ("e1", {"amount": Decimal("1.25"), "n": 1})
    data = to_bytes(value)
    assert data[0] == 0x80
    assert from_bytes(data) == value
    assert from_bytes(memoryview(data)) == value


def test_a_nan_keeps_its_bits() -> None:
    back = from_bytes(to_bytes([-math.nan]))
    assert math.isnan(back[0]) and math.copysign(1, back[0]) == -1
