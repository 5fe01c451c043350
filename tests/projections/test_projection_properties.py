"""Property: projecting the same log twice, in any batch sizes, gives identical tables."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_ledger.settings import Settings
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from projections.engine import Projector
from projections.sources import LedgerSource
from projections.spec import DEFAULT_SPEC, load_spec
from projections.store import ProjectionDB
from tests.projections.test_projections import MODEL_TABLES, digest


def _project(app: LedgerApplication, path: Path, batch_size: int) -> dict[str, str]:
    db = ProjectionDB(path)
    version = db.ensure_version(load_spec(DEFAULT_SPEC), DEFAULT_SPEC.read_text(), "ledger")
    Projector(db, version, LedgerSource(app, batch_size=batch_size), app.codec).run()
    tables = {t: digest(db.connection, f"{version.schema}.{t}") for t in (*MODEL_TABLES, "events")}
    db.close()
    return tables


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    customers=st.integers(5, 60),
    employees=st.integers(2, 8),
    months=st.integers(1, 2),
    batches=st.tuples(st.integers(1, 400), st.integers(1, 400)),
)
def test_replaying_twice_gives_identical_tables(
    seed: int, customers: int, employees: int, months: int, batches: tuple[int, int]
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        history = root / "h.jsonl"
        with history.open("w") as handle:
            write_history(GeneratorConfig(customers, employees, months, seed, invalid_rate=0.02), handle)
        app = LedgerApplication(Settings(store=str(root / "l.sqlite")).eventsourcing_env())
        ingest_records(app, read_file(history, RecordParser(app.registry)), RejectSink(None, echo=None))
        first = _project(app, root / "a.duckdb", batches[0])
        second = _project(app, root / "b.duckdb", batches[1])
        assert first == second
        app.close()
