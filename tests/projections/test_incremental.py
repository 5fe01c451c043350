"""Property: maintaining a version incrementally gives exactly the tables of a full rebuild.

The log is fed in random chunks and in a shuffled order, so events arrive late (dated
before events already applied) and out of order (a resolution before its case's opening,
a survey before the resolution it is attributed to, a team move before the join, a contract
started after the cases it covers, a goal revised before it was set). After
every chunk the version is updated incrementally; at the end each read model must equal a
full rebuild of the same log, row for row.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_cli.demo import set_demo_goals
from crm_ledger.settings import Settings
from importers.cfpb import read_cfpb
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from projections.engine import Projector
from projections.log import log_root, log_slug
from projections.maintain import Maintainer
from projections.models import MODEL_TABLES
from projections.sources import Position, RawBatch, kafka_stream
from projections.spec import DEFAULT_SPEC, load_spec
from projections.store import ProjectionDB
from tests.projections.test_projections import digest

DATA = Path(__file__).parent.parent / "data"
TOPIC = "shuffled"


class ShuffledSource:
    """The ledger's messages in a given order, as one Kafka-like partition, in given chunks."""

    name = TOPIC

    def __init__(self, messages: list[tuple[int, bytes]], chunks: list[int]) -> None:
        self.messages = messages
        self.chunks = chunks

    def streams(self) -> list[str]:
        return [kafka_stream(TOPIC, 0)]

    def batches(self, positions: Mapping[str, Position], *, follow: bool) -> Iterator[RawBatch]:
        known = positions.get(kafka_stream(TOPIC, 0))
        start = known.offset + 1 if known else 0
        for size in self.chunks:
            if start >= len(self.messages):
                return
            batch = RawBatch()
            for offset in range(start, min(start + size, len(self.messages))):
                nid, value = self.messages[offset]
                batch.values.append(value)
                batch.notification_ids.append(nid)
                batch.sources.append(TOPIC)
                batch.partitions.append(0)
                batch.offsets.append(offset)
                batch.chains.append(None)
                batch.positions[kafka_stream(TOPIC, 0)] = Position(kafka_stream(TOPIC, 0), offset)
            start += len(batch)
            yield batch
            return  # one chunk per run: the caller updates the version between chunks

    def lag(self, positions: Mapping[str, Position]) -> int:
        return 0

    def close(self) -> None:
        return None


def _ledger(root: Path, seed: int, customers: int, employees: int) -> LedgerApplication:
    """A generated history (with contracts, installs and field visits), CFPB complaints and team goals."""
    history = root / "h.jsonl"
    config = GeneratorConfig(customers, employees, 3, seed)
    with history.open("w") as handle:
        write_history(config, handle)
    ledger = Settings(store=str(root / "l.sqlite"), projections_db=root / "goals.duckdb")
    app = LedgerApplication(ledger.eventsourcing_env())
    parser = RecordParser(app.registry)
    for records in (
        read_file(history, parser),
        read_cfpb(DATA / "cfpb_current.csv", parser),
        read_cfpb(DATA / "cfpb_2014.csv", parser),
    ):
        ingest_records(app, records, RejectSink(None, echo=None))
    # Goals set, revised and closed (the goal and evidence read models are rebuilt whole).
    set_demo_goals(ledger, history, config)
    return app


def _shuffled(app: LedgerApplication, rng: random.Random, displaced: float) -> list[tuple[int, bytes]]:
    """Notification order, with a share of the messages moved to random later places."""
    messages = [(n.id, n.state) for n in app.read_notifications(1, 1_000_000)]
    moved = {i for i in range(len(messages)) if rng.random() < displaced}
    kept = [m for i, m in enumerate(messages) if i not in moved]
    for message in (messages[i] for i in sorted(moved)):
        kept.insert(rng.randrange(len(kept) + 1), message)
    return kept


DEFAULT_TEXT = DEFAULT_SPEC.read_text()
#: Other KPI definitions (shares the spec-independent tables) and other weights (shares the KPIs).
STRICT_TEXT = DEFAULT_TEXT.replace("csat_satisfied_min = 4", "csat_satisfied_min = 5").replace(
    "nps_promoter_min = 9", "nps_promoter_min = 10"
)
WEIGHTS_TEXT = DEFAULT_TEXT.replace("cap = 3", "cap = 2")


def _spec(root: Path, name: str, text: str) -> tuple[Path, str]:
    path = root / f"{name}.toml"
    path.write_text(text)
    return path, text


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    customers=st.integers(5, 40),
    employees=st.integers(2, 6),
    displaced=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    cuts=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=10),
    followed=st.lists(st.sampled_from([0, 1, 2]), min_size=10, max_size=10),
)
def test_incremental_updates_equal_a_full_rebuild(
    seed: int, customers: int, employees: int, displaced: float, cuts: list[float], followed: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        app = _ledger(root, seed, customers, employees)
        messages = _shuffled(app, random.Random(seed), displaced)
        spec = load_spec(DEFAULT_SPEC)
        live = ProjectionDB(root / "live.duckdb")
        version = live.ensure_version(spec, DEFAULT_SPEC.read_text(), TOPIC)
        # Random chunk boundaries (an update after each chunk), the last chunk ending the log.
        ends = sorted({int(c * len(messages)) for c in cuts} | {len(messages)})
        sizes = [b - a for a, b in zip([0, *ends], ends, strict=False) if b > a]
        specs = [
            (spec, DEFAULT_TEXT),
            *(
                (load_spec(p), t)
                for p, t in (_spec(root, "strict", STRICT_TEXT), _spec(root, "weights", WEIGHTS_TEXT))
            ),
        ]
        versions = [version]
        for step, size in enumerate(sizes):
            # Each chunk is followed through one of the versions (the others fall behind).
            target = versions[followed[step % len(followed)] % len(versions)]
            Projector(live, target, ShuffledSource(messages, [size]), app.codec).run()
            if step == 0:
                # Built from the first version: other KPI definitions, and other weights.
                versions += [
                    live.ensure_version(s, t, TOPIC, built_from=version.version) for s, t in specs[1:]
                ]
        for target in versions:
            Maintainer(live, live.find_version(target.version)).update()
        assert live.find_version(version.version).events == len(messages)
        # The same log, each spec rebuilt in one go and on its own in another database.
        rebuilt_path = root / "rebuilt.duckdb"
        shutil.copytree(log_root(live.path) / log_slug(TOPIC), log_root(rebuilt_path) / log_slug(TOPIC))
        rebuilt = ProjectionDB(rebuilt_path)
        for s, t in specs:
            Maintainer(rebuilt, rebuilt.ensure_version(s, t, TOPIC)).update(full=True)
        for target in versions:
            for table in MODEL_TABLES:
                name = f"{target.schema}.{table}"
                assert digest(live.connection, name) == digest(rebuilt.connection, name), (target.name, table)
        live.close()
        rebuilt.close()
        app.close()
