"""A message prepared before judgement, finished with `recorded_at`, is the encoded record."""

from __future__ import annotations

import json
from pathlib import Path

from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication, _references, encoded_size_bound
from ledger.bulk import BulkWriter
from ledger.prepared import Preparer, finish
from ledger.records import RecordParser
from schemas.codec import AvroCodec
from schemas.fast_encoder import zigzag_varint
from schemas.registry import SchemaRegistry
from tests.factory import basics, chat


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
        # With a message, an upper estimate of the bound (negated), else the bound itself.
        if head is None:
            assert bound == encoded_size_bound(fact)
        else:
            assert -bound >= encoded_size_bound(fact)
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


def test_near_the_size_limit_the_bound_itself_decides(app: LedgerApplication, parser: RecordParser) -> None:
    """A prepared fact carries an estimate of its size bound; near the limit the bulk writer
    judges by the bound itself: the same rejects, with the same size, as without the estimate."""
    preparer = Preparer(AvroCodec(app.registry))
    setup = [parser.parse(r) for r in basics()]
    app.record(setup)
    topic = "t" * 300
    facts = [parser.parse(chat(topic=topic, duration_s=60)) for _ in range(2)]
    exact = encoded_size_bound(facts[0])
    estimate = -preparer.prepare(facts[0])[2]
    assert estimate > exact
    writer = BulkWriter(app)
    try:
        # The estimate over the limit, the bound under it: accepted.
        app.max_event_bytes = exact
        assert [o.status for o in writer.record(facts[:1], [preparer.prepare(facts[0])])] == ["accepted"]
        # Both over it: rejected, naming the bound, as when nothing was prepared.
        app.max_event_bytes = exact - 1
        outcome = writer.record(facts[1:], [preparer.prepare(facts[1])])[0]
    finally:
        writer.close()
    assert outcome.status == "rejected" and outcome.error is not None
    assert outcome.error.reason == f"too large: up to {exact} bytes encoded, the limit is {exact - 1}"
