"""The DuckDB tracking recorder passes eventsourcing's own conformance test case."""

from __future__ import annotations

import duckdb
from eventsourcing.persistence import TrackingRecorder
from eventsourcing.tests.persistence import TrackingRecorderTestCase

from projections.tracking import DuckDBTrackingRecorder


class TestDuckDBTrackingRecorder(TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return DuckDBTrackingRecorder(duckdb.connect(":memory:"))
