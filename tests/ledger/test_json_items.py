"""Items of a JSON file read as a stream: arrays and JSON lines, at any chunk size, hostile input."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ledger.json_items as json_items_module
from ledger.json_items import json_items


def _items(data: bytes, limit: int = 10_000) -> list[Any]:
    return list(json_items("f.json", io.BytesIO(data), limit))


def test_items_are_found_across_chunk_boundaries_and_inside_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_items_module, "CHUNK_BYTES", 2)
    tricky = {"a": 'quote " and ] } [ { brackets', "b": "back\\slash\\", "c": [1, {"d": "\u00e9"}]}
    data = b"\xef\xbb\xbf " + json.dumps([tricky, 7, "s", tricky]).encode() + b"\n"
    items = _items(data)
    assert [i.location for i in items] == ["f.json[0]", "f.json[1]", "f.json[2]", "f.json[3]"]
    assert [json.loads(i.text) for i in items] == [tricky, 7, "s", tricky]


def test_json_lines_are_located_by_line_and_a_large_item_is_skipped_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(json_items_module, "CHUNK_BYTES", 16)
    big = json.dumps({"x": "y" * 200, "z": "multi\nline"}, indent=1)
    data = f'{{"n": 1}}\n\n{big}\n{{"n": 2}}\n'.encode()
    items = _items(data, limit=100)
    assert [(i.location, i.text is None) for i in items] == [("f.json:1", False), ("f.json:3", True), ("f.json:7", False)]
    assert items[1].error is not None and "larger than 100 bytes" in items[1].error.reason
    assert json.loads(items[2].text) == {"n": 2}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'[{"a": 1}, {"a": ', "ends inside this item"),
        (b'[{"a": 1}, {"a": 2}', "before the array is closed"),
        (b'[{"a": 1}] {"a": 2}', "text after the array"),
        (b'[{"a": 1}, "unterminated', "ends inside this item"),
    ],
)
def test_a_broken_structure_keeps_what_came_before(data: bytes, reason: str) -> None:
    *good, broken = _items(data)
    assert [json.loads(i.text) for i in good] in ([{"a": 1}], [{"a": 1}, {"a": 2}])
    assert broken.text is None and broken.error is not None and reason in broken.error.reason


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'[{"a": 1},]', [("f.json[0]", '{"a": 1}'), ("f.json[1]", "a comma before the array's closing ]")]),
        (b'[{"a": 1}, ,\n ,{"a": 2}]', [("f.json[0]", '{"a": 1}'), ("f.json[1]", "2 empty items"), ("f.json[3]", '{"a": 2}')]),
        (b'[,{"a": 1}, {"a": 2}]', [("f.json[0]", "an empty item"), ("f.json[1]", '{"a": 1}'), ("f.json[2]", '{"a": 2}')]),
        (b"[,]", [("f.json[0]", "a comma before the array's closing ]")]),
        (
            b'[{"a": 1} {"a": 2}, {"a": 3}]',
            [("f.json[0]", '{"a": 1}'), ("f.json[1]", "no comma between"), ("f.json[2]", '{"a": 3}')],
        ),
        (b'[{"a": 1}\n\n"x"]', [("f.json[0]", '{"a": 1}'), ("f.json[1]", "no comma between")]),
    ],
)
def test_a_comma_out_of_place_in_an_array_is_a_reject_and_the_items_around_it_are_read(
    data: bytes, expected: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(json_items_module, "CHUNK_BYTES", 3)  # commas split across reads are counted
    items = _items(data)
    shown = [(i.location, i.text.decode() if i.text is not None else i.error.reason) for i in items]
    assert [location for location, _ in shown] == [location for location, _ in expected]
    assert all(part in text for (_, text), (_, part) in zip(shown, expected, strict=True)), shown


def test_an_empty_file_has_no_items() -> None:
    assert _items(b"") == [] and _items(b" \n") == [] and _items(b"[]") == []


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(_VALUES, max_size=8),
    indent=st.sampled_from([None, 0, 2]),
    lines=st.booleans(),
    chunk=st.integers(min_value=1, max_value=64),
)
def test_any_json_values_come_back_as_they_were(values: list[Any], indent: int | None, lines: bool, chunk: int) -> None:
    if lines:  # JSON lines of objects (a file that starts with "[" is an array)
        values = [{"v": v} for v in values]
        data = "".join(json.dumps(v) + "\n" for v in values).encode()
    else:
        data = json.dumps(values, indent=indent).encode()
    original = json_items_module.CHUNK_BYTES
    json_items_module.CHUNK_BYTES = chunk
    try:
        items = _items(data, limit=1 << 20)
    finally:
        json_items_module.CHUNK_BYTES = original
    assert [json.loads(i.text) for i in items] == values
    if lines:
        assert [i.location for i in items] == [f"f.json:{n}" for n in range(1, len(values) + 1)]


def test_a_huge_item_is_skipped_in_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_items_module, "CHUNK_BYTES", 1 << 16)
    largest = 0
    more = json_items_module._Buffer.more

    def watched(buffer: Any) -> bool:
        nonlocal largest
        largest = max(largest, len(buffer.data))
        return bool(more(buffer))

    monkeypatch.setattr(json_items_module._Buffer, "more", watched)
    huge_string = b'{"a": "' + b"x\\\"" * 2_000_000 + b'"}'
    huge_bare = b"7" * 6_000_000
    data = b"[" + huge_string + b", " + huge_bare + b"," + b" " * 5_000_000 + b'{"n": 1}]'
    items = _items(data, limit=1000)
    assert [(i.location, i.size, i.text) for i in items] == [
        ("f.json[0]", len(huge_string), None),
        ("f.json[1]", len(huge_bare), None),
        ("f.json[2]", 8, b'{"n": 1}'),
    ]
    assert largest < 3 * (1 << 16)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), chunk=st.integers(min_value=1, max_value=16))
def test_any_bytes_give_items_or_rejects_never_a_crash(data: bytes, chunk: int) -> None:
    original = json_items_module.CHUNK_BYTES
    json_items_module.CHUNK_BYTES = chunk
    try:
        items = _items(data, limit=50)
    finally:
        json_items_module.CHUNK_BYTES = original
    assert all((i.text is None) == (i.error is not None) for i in items)
    assert sum(i.size for i in items) <= len(data)
