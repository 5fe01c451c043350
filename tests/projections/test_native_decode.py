"""The native decoder builds exactly the rows the fastavro decoder builds.

Every schema version in schemas/ is encoded with awkward values (non-ASCII, quotes and
control characters, extreme integers, floats Python prints specially, empty lists, nulls),
mixed into one batch with damaged messages, and the two decoders' tables are compared
row for row, dead letters and their error texts included.
"""

from __future__ import annotations

import random
import struct
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from projections.columns import LOG_SCHEMA, LogBatchBuilder
from projections.native import NativeBatchBuilder, _needs_escape
from projections.sources import Position, RawBatch
from schemas.codec import AvroCodec
from schemas.registry import SchemaRegistry

REGISTRY = SchemaRegistry.load()
CODEC = AvroCodec(REGISTRY, epoch_millis=True)
SEEN_AT = datetime(2026, 1, 2, 3, 4, 5)
STRINGS = [
    "",
    "plain",
    'quo"te',
    "back\\slash",
    "tab\tnew\nline",
    "héllo wörld",
    "日本",
    "😀 emoji",
    "\x7f",
    "x" * 300,
]
INTS = [0, 1, -1, 63, 64, -65, 2**31 - 1, -(2**31)]
LONGS = [*INTS, 2**62, -(2**63), 1_767_225_600_000]
DOUBLES = [0.0, 1.0, -0.0, 0.1, 2.5, 1e22, 1e-7, 123456789.125, -3.75]


def _value(avro_type: Any, rng: random.Random) -> Any:
    if isinstance(avro_type, list):
        branch = rng.choice(avro_type)
        return None if branch == "null" else _value(branch, rng)
    if isinstance(avro_type, dict):
        kind = avro_type["type"]
        if kind == "array":
            return [_value(avro_type["items"], rng) for _ in range(rng.choice([0, 0, 1, 3]))]
        if kind == "map":
            return {rng.choice(STRINGS): _value(avro_type["values"], rng) for _ in range(rng.randint(0, 3))}
        return _value(kind, rng)
    if avro_type == "boolean":
        return rng.random() < 0.5
    choices: dict[str, list[Any]] = {"string": STRINGS, "int": INTS, "long": LONGS, "double": DOUBLES}
    return rng.choice(choices[avro_type])


def _messages(rng: random.Random, per_version: int) -> list[bytes]:
    messages = []
    for version in REGISTRY.all_versions():
        if version.event_type not in REGISTRY.event_types:
            continue  # projection records never travel on the events topic
        for _ in range(per_version):
            record = {f["name"]: _value(f["type"], rng) for f in version.raw["fields"]}
            messages.append(CODEC.encode_with(version, record))
    rng.shuffle(messages)
    return messages


def _damaged(good: list[bytes], rng: random.Random) -> list[bytes]:
    bad = [b"", b"\x00", b"\x01\x00\x00\x00\x01abc", struct.pack(">bI", 0, 99_999) + b"\x02a"]
    for message in rng.sample(good, 40):
        bad.append(message[: rng.randint(5, len(message) - 1)])  # truncated
        bad.append(message + b"\x00\x02")  # trailing bytes
        flipped = bytearray(message)
        flipped[rng.randint(5, len(message) - 1)] ^= 0xFF
        bad.append(bytes(flipped))  # may or may not still decode: both decoders must agree
        bad.append(message[:5] + rng.randbytes(rng.randint(0, 60)))  # garbage body
    return bad


def _batch(messages: list[bytes]) -> RawBatch:
    batch = RawBatch()
    for offset, value in enumerate(messages):
        partition = offset % 3
        batch.values.append(value)
        batch.notification_ids.append(1000 + offset)
        batch.sources.append("crm.ledger.events")
        batch.partitions.append(partition)
        batch.offsets.append(offset)
        batch.chains.append(f"{offset:064x}")
        stream = f"crm.ledger.events:{partition}"
        batch.positions[stream] = Position(stream, offset)
    return batch


#: The native path for batches of every size (a small batch is decoded by fastavro anyway).
NATIVE = NativeBatchBuilder(CODEC, fastavro_below=0)


def _fastavro_rows(batch: RawBatch) -> pa.Table:
    groups, errors = CODEC.decode_groups(batch.values)
    return LogBatchBuilder(REGISTRY).build(batch, groups, errors, SEEN_AT)


def _rows(table: pa.Table) -> pa.Table:
    """The rows in position order (each decoder groups rows its own way)."""
    assert table.schema == LOG_SCHEMA
    table = table.sort_by("position").combine_chunks()
    # fastavro's error texts can name a buffer's memory address, different on each decode
    errors = pc.replace_substring_regex(table.column("dead_letter"), " at 0x[0-9a-f]+", " at 0x")
    return table.set_column(table.schema.get_field_index("dead_letter"), "dead_letter", errors)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_schema_version_decodes_natively_to_the_same_rows(seed: int) -> None:
    rng = random.Random(seed)
    batch = _batch(_messages(rng, 25))
    native, dead = NATIVE.build(batch, SEEN_AT)
    expected = _fastavro_rows(batch)
    assert dead == 0
    assert _rows(native).equals(_rows(expected))
    assert set(native.column("event_type").to_pylist()) == set(REGISTRY.event_types)


@pytest.mark.parametrize("seed", [4, 5])
def test_damaged_messages_become_the_same_dead_letters(seed: int) -> None:
    rng = random.Random(seed)
    good = _messages(rng, 8)
    messages = good + _damaged(good, rng)
    rng.shuffle(messages)
    batch = _batch(messages)
    native, dead = NATIVE.build(batch, SEEN_AT)
    expected = _fastavro_rows(batch)
    assert _rows(native).equals(_rows(expected))
    assert dead == expected.column("dead_letter").drop_null().length() > 100


def test_ledger_batches_keep_their_notification_positions() -> None:
    messages = _messages(random.Random(6), 2)
    batch = RawBatch()
    for nid, value in enumerate(messages, start=1):
        batch.values.append(value)
        batch.notification_ids.append(nid)
        batch.sources.append("ledger")
        batch.partitions.append(None)
        batch.offsets.append(None)
        batch.chains.append(f"{nid:064x}")
    native, _ = NATIVE.build(batch, SEEN_AT)
    assert _rows(native).equals(_rows(_fastavro_rows(batch)))


def _int_field_version() -> tuple[Any, str]:
    for version in REGISTRY.all_versions():
        if version.event_type in REGISTRY.event_types:
            for field in version.raw["fields"]:
                if field["type"] == "int":
                    return version, field["name"]
    raise AssertionError("no event schema has a plain int field")


def test_an_int_beyond_32_bits_is_a_dead_letter_not_a_crash() -> None:
    rng = random.Random(7)
    version, name = _int_field_version()
    record = {f["name"]: _value(f["type"], rng) for f in version.raw["fields"]}
    good = CODEC.encode_with(version, record)
    # A damaged varint can hold more than Avro's 32 bits; fastavro decodes it as is.
    bad = CODEC.encode_with(version, {**record, name: 2**40})
    batch = _batch([good, bad, good])
    expected = _fastavro_rows(batch)
    native, dead = NATIVE.build(batch, SEEN_AT)
    assert dead == 1
    assert _rows(native).equals(_rows(expected))
    letters = expected.column("dead_letter").drop_null().to_pylist()
    assert len(letters) == 1 and "does not fit" in letters[0]


def test_a_small_batch_is_decoded_by_fastavro_with_the_same_rows() -> None:
    rng = random.Random(8)
    good = _messages(rng, 2)
    batch = _batch(good + _damaged(good, rng)[:5])
    builder = NativeBatchBuilder(CODEC)
    assert len(batch) < builder.fastavro_below
    small, dead = builder.build(batch, SEEN_AT)
    native, native_dead = NATIVE.build(batch, SEEN_AT)
    assert (dead, _rows(small)) == (native_dead, _rows(native))
    assert dead > 0


def test_a_column_needs_escaping_when_any_string_holds_what_json_escapes() -> None:
    plain = ["", "plain", "a b", "x" * 300]
    assert not _needs_escape(pa.array(plain, pa.string()))
    assert not _needs_escape(pa.array([None, None], pa.string()))
    assert not _needs_escape(pa.array([], pa.string()))
    for special in ('quo"te', "back\\slash", "tab\t", "new\nline", "héllo", "日本", "😀", "\x7f", "\x00"):
        assert _needs_escape(pa.array([*plain, special, None], pa.string())), special
