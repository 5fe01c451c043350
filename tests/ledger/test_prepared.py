"""A message prepared before judgement, finished with `recorded_at`, is the encoded record."""

from __future__ import annotations

import json
from pathlib import Path

from importers.generator import GeneratorConfig, write_history
from ledger.application import _references, encoded_size_bound
from ledger.prepared import Preparer, finish, zigzag_varint
from ledger.records import RecordParser
from schemas.codec import AvroCodec
from schemas.registry import SchemaRegistry


def test_prepared_messages_are_the_encoded_records(tmp_path: Path, registry: SchemaRegistry) -> None:
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=40, employees=6, months=2, seed=11), handle)
    codec = AvroCodec(registry)
    preparer = Preparer(codec)
    parser = RecordParser(registry, now_ms=1_900_000_000_000)
    prepared_types, left_to_the_ledger = set(), set()
    for line in history.read_text().splitlines():
        fact = parser.parse(json.loads(line), strict=True)
        head, tail, bound, named = preparer.prepare(fact)
        assert bound == encoded_size_bound(fact)
        assert [("occurrence", fact.event_id), *named] == _references(fact)
        assert Preparer(codec, named=False).prepare(fact) == (head, tail, bound, None)
        if head is None or tail is None:
            left_to_the_ledger.add(fact.event_type)
            continue
        prepared_types.add(fact.event_type)
        for recorded_at in (0, 1, 63, 64, 1_764_290_000_123, -5):
            record = {**fact.data, "event_id": fact.event_id, "occurred_at": fact.occurred_at}
            record["recorded_at"] = recorded_at
            assert finish(head, tail, zigzag_varint(recorded_at)) == codec.encode(fact.event_type, record)
    # Facts whose customer the ledger fills in are encoded by the writer.
    assert {"InteractionRecorded", "CustomerRegistered", "CaseOpened"} <= prepared_types
    assert "CaseAccepted" in left_to_the_ledger
