"""One conformance suite for every log source (eventsourcing's recorder test cases are the model).

Whatever a source reads from (the ledger's notification log, a Kafka topic), it must hand
the projector every stored event exactly once, with positions that resume exactly where
they stopped, and report its lag truthfully.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from crm_ledger.settings import Settings
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from ledger.relay import Relay, RelayConfig
from projections.errors import LogMismatchError
from projections.sources import KafkaSource, LedgerSource, LogSource, Position


def _values(source: LogSource, positions: dict[str, Position], limit: int | None = None) -> list[bytes]:
    """Read without following, merging positions; stop after `limit` batches if given."""
    values: list[bytes] = []
    for count, batch in enumerate(source.batches(positions, follow=False), start=1):
        values.extend(batch.values)
        positions.update(batch.positions)
        if limit is not None and count >= limit:
            break
    return values


class LogSourceConformance:
    """Subclasses provide `make_source` (a fresh source over `app`'s ledger, small batches)."""

    #: Kafka's end offsets count transaction markers too, so its lag is an upper bound.
    exact_lag: ClassVar[bool] = True

    @pytest.fixture
    def ledger(self, tmp_path: Path) -> Iterator[LedgerApplication]:
        history = tmp_path / "h.jsonl"
        with history.open("w") as handle:
            write_history(GeneratorConfig(customers=60, employees=6, months=1, seed=12), handle)
        app = LedgerApplication(Settings(store=str(tmp_path / "l.sqlite")).eventsourcing_env())
        ingest_records(app, read_file(history, RecordParser(app.registry)), RejectSink(None, echo=None))
        yield app
        app.close()

    def make_source(self, app: LedgerApplication, request: pytest.FixtureRequest) -> LogSource:
        raise NotImplementedError

    @staticmethod
    def _stored(app: LedgerApplication) -> list[bytes]:
        return [n.state for n in app.read_notifications(1, 1_000_000)]

    def test_reads_every_stored_event_exactly_once(
        self, ledger: LedgerApplication, request: pytest.FixtureRequest
    ) -> None:
        source = self.make_source(ledger, request)
        try:
            values = _values(source, {})
        finally:
            source.close()
        assert sorted(values) == sorted(self._stored(ledger))

    def test_refuses_to_go_on_from_a_position_it_does_not_hold(
        self, ledger: LedgerApplication, request: pytest.FixtureRequest
    ) -> None:
        """A log built from another ledger or topic (one made anew) is never read on from."""
        positions: dict[str, Position] = {}
        source = self.make_source(ledger, request)
        try:
            _values(source, positions)
            beyond = {s: Position(s, p.offset + 1000, p.chain, b"another ledger's") for s, p in positions.items()}
            with pytest.raises(LogMismatchError, match="the decoded log was built from another"):
                _values(source, beyond)
        finally:
            source.close()

    def test_positions_resume_exactly_where_reading_stopped(
        self, ledger: LedgerApplication, request: pytest.FixtureRequest
    ) -> None:
        positions: dict[str, Position] = {}
        first = self.make_source(ledger, request)
        try:
            head = _values(first, positions, limit=2)
        finally:
            first.close()
        second = self.make_source(ledger, request)
        try:
            remaining = len(self._stored(ledger)) - len(head)
            lag = second.lag(positions)
            assert lag == remaining if self.exact_lag else lag >= remaining
            rest = _values(second, positions)
            assert _values(second, positions) == []  # nothing is handed out twice
        finally:
            second.close()
        assert head and rest
        assert sorted(head + rest) == sorted(self._stored(ledger))

    def test_order_within_a_stream_is_the_ledger_order(
        self, ledger: LedgerApplication, request: pytest.FixtureRequest
    ) -> None:
        source = self.make_source(ledger, request)
        try:
            ids: dict[str, list[int]] = {}
            for batch in source.batches({}, follow=False):
                for stream_partition, nid in zip(batch.partitions, batch.notification_ids, strict=True):
                    ids.setdefault(str(stream_partition), []).append(int(nid or 0))
        finally:
            source.close()
        assert all(values == sorted(values) for values in ids.values())


class TestLedgerSource(LogSourceConformance):
    def make_source(self, app: LedgerApplication, request: pytest.FixtureRequest) -> LogSource:
        return LedgerSource(app, batch_size=97)


@pytest.mark.kafka
class TestKafkaSource(LogSourceConformance):
    exact_lag = False

    def make_source(self, app: LedgerApplication, request: pytest.FixtureRequest) -> LogSource:
        bootstrap: str = request.getfixturevalue("kafka_bootstrap")
        topic: str = request.getfixturevalue("topic")
        config = RelayConfig(
            bootstrap=bootstrap, topic=topic, partitions=3, transactional_id=f"{topic}-relay"
        )
        Relay(app, config).run()
        return KafkaSource(bootstrap, topic, group_id=f"{topic}-conformance", batch_size=97)
