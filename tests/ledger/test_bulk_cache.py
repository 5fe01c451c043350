"""The bulk writer's aggregate cache keeps what recent batches used and evicts the rest first."""

from __future__ import annotations

from ledger.application import LedgerApplication
from ledger.bulk import BulkWriter
from ledger.records import RecordParser
from tests.factory import basics, rec


def test_the_least_recently_used_aggregates_are_evicted_first(
    app: LedgerApplication, parser: RecordParser
) -> None:
    writer = BulkWriter(app, cache_size=3)
    try:
        # e1, e2, e3, c1, c2 in that order: the first two make way.
        writer.record([parser.parse(r) for r in basics()])
        assert list(writer.cache) == [("employee", "e3"), ("customer", "c1"), ("customer", "c2")]
        # c1 and e3 used again (many times): now the most recent, c2 the least.
        touch = [
            rec(
                "InteractionRecorded", customer_id="c1", employee_id="e3", channel="chat", direction="inbound"
            )
            for _ in range(5)
        ]
        writer.record([parser.parse(r) for r in touch])
        writer.record([parser.parse(rec("CustomerRegistered", customer_id="c3", segment="smb", region="n"))])
        assert set(writer.cache) == {("employee", "e3"), ("customer", "c1"), ("customer", "c3")}
        # An evicted aggregate is read back from the store when needed.
        again = rec(
            "InteractionRecorded", customer_id="c2", employee_id="e1", channel="chat", direction="inbound"
        )
        assert [o.status for o in writer.record([parser.parse(again)])] == ["accepted"]
    finally:
        writer.close()
