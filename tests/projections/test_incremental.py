"""Property: maintaining a version incrementally gives exactly the tables of a full rebuild.

The log is fed in random chunks and in a shuffled order, so events arrive late (dated
before events already applied) and out of order (a resolution before its case's opening,
a survey before the resolution it is attributed to, a team move before the join, a contract
started after the cases it covers, a goal revised before it was set). After
every chunk the version is updated incrementally; at the end each read model must equal a
full rebuild of the same log, row for row.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_cli.demo import set_demo_goals
from crm_ledger.settings import Settings, log_root
from importers.cfpb import read_cfpb
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from projections.engine import Projector
from projections.kpi_days import DAYS
from projections.log import log_slug
from projections.maintain import Maintainer
from projections.models import MODEL_TABLES
from projections.profile_state import CASES, PARTIALS
from projections.sources import Position, RawBatch, kafka_stream
from projections.spec import DEFAULT_SPEC, load_spec
from projections.store import ProjectionDB, VersionInfo
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
            # A version built from another keeps the profile's partial aggregates in that one's
            # schema; one with its own KPIs keeps its per-day aggregates once it has followed
            # the log (a replay makes none).
            own = (PARTIALS, CASES, DAYS) if target.built_from is None else ()
            if target.built_from is not None and _has_table(live, target.schema, DAYS):
                own = (DAYS,)
            for table in (*MODEL_TABLES, *own):
                name = f"{target.schema}.{table}"
                assert digest(live.connection, name) == digest(rebuilt.connection, name), (target.name, table)
        live.close()
        rebuilt.close()
        app.close()


def _has_table(db: ProjectionDB, schema: str, table: str) -> bool:
    row = db.connection.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?", [schema, table]
    ).fetchone()
    return row == (1,)


_CONTRACT_TOPICS = {f"crm.ledger.{t}" for t in ("ContractStarted", "ContractRenewed", "ContractEnded")}


def _move_team_midway(
    app: LedgerApplication, tmp_path: Path, history: list[dict[str, Any]], employee: str, event_id: str
) -> None:
    """Record, late, that `employee` moved to another team halfway through their events."""
    teams = {r["employee_id"]: r["team_id"] for r in history if r["type"] == "EmployeeJoined"}
    moments = sorted(r["occurred_at"] for r in history if r.get("employee_id") == employee)
    other = next((t for t in sorted(set(teams.values())) if t != teams[employee]), "team-moved")
    late = tmp_path / "move.jsonl"
    move = {
        "type": "EmployeeMovedTeam",
        "event_id": event_id,
        "occurred_at": moments[len(moments) // 2],
        "employee_id": employee,
        "team_id": other,
    }
    late.write_text(json.dumps(move) + "\n")
    summary = ingest_records(
        app, read_file(late, RecordParser(app.registry)), RejectSink(None, echo=sys.stderr)
    )
    assert summary.accepted == 1


def _follower(
    root: Path, app: LedgerApplication, messages: list[tuple[int, bytes]], size: int
) -> tuple[ProjectionDB, VersionInfo, Projector]:
    """A live database with the default version, and one Projector following `messages` in
    chunks of `size`, as `project --follow` keeps one."""
    live = ProjectionDB(root / "live.duckdb")
    version = live.ensure_version(load_spec(DEFAULT_SPEC), DEFAULT_TEXT, TOPIC)
    return live, version, Projector(live, version, ShuffledSource(messages, [size]), app.codec)


def _assert_equals_a_full_rebuild(
    live: ProjectionDB, version: VersionInfo, rebuilt_path: Path, step: int
) -> None:
    """Every read model of `live`'s default version equals a full rebuild from a copy of its log."""
    shutil.copytree(log_root(live.path) / log_slug(TOPIC), log_root(rebuilt_path) / log_slug(TOPIC))
    rebuilt = ProjectionDB(rebuilt_path)
    Maintainer(rebuilt, rebuilt.ensure_version(load_spec(DEFAULT_SPEC), DEFAULT_TEXT, TOPIC)).update(
        full=True
    )
    # The profile's partial aggregates and the per-day KPI aggregates too: kept by customer
    # and by day, they must be the full build's rows.
    for table in (*MODEL_TABLES, PARTIALS, CASES, DAYS):
        name = f"{version.schema}.{table}"
        assert digest(live.connection, name) == digest(rebuilt.connection, name), (step, table)
    rebuilt.close()


def test_contracts_started_later_and_now_moving_equal_a_full_rebuild(tmp_path: Path) -> None:
    """Contracts arrive after the cases they cover, then the log's end moves on past SLAs and terms.

    Compared with a full rebuild after every chunk: the service tables and the profile's
    service columns are kept by key, and "now" (the log's last event) changes breaches of
    unresolved cases, coverage and next renewals without any event naming them.
    """
    app = _ledger(tmp_path, 5, 60, 4)
    notes = [(n.id, n.state, n.topic in _CONTRACT_TOPICS) for n in app.read_notifications(1, 1_000_000)]
    contracts = [(nid, value) for nid, value, is_contract in notes if is_contract]
    others = [(nid, value) for nid, value, is_contract in notes if not is_contract]
    assert contracts
    # One interaction long after the history (of one customer): it moves "now" past every
    # open case's SLA and past contract ends, and names none of those cases or customers.
    history = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    customer = next(r["customer_id"] for r in history if r["type"] == "CustomerRegistered")
    employee = next(r["employee_id"] for r in reversed(history) if r["type"] == "InteractionRecorded")
    late = tmp_path / "late.jsonl"
    late.write_text(
        json.dumps(
            {
                "type": "InteractionRecorded",
                "event_id": "00000000-0000-4000-8000-000000000001",
                "occurred_at": "2026-06-01T00:00:00.000Z",
                "customer_id": customer,
                "employee_id": employee,
                "channel": "email",
                "direction": "inbound",
                "topic": "setup",
                "duration_s": 60,
            }
        )
        + "\n"
    )
    ingest_records(app, read_file(late, RecordParser(app.registry)), RejectSink(None, echo=sys.stderr))
    last = [(n.id, n.state) for n in app.read_notifications(notes[-1][0] + 1, 10)]
    assert len(last) == 1
    # In time order (notification order mixes in complaints imported from other files).
    others.sort(key=lambda message: app.codec.decode(message[1])[1]["occurred_at"])
    cut = len(others) * 3 // 5

    # The last case opened by a customer with a contract: the log is cut right after its
    # opening, so it is open and within its SLA when the late event moves "now" past it.
    def at(message: tuple[int, bytes]) -> Any:
        return app.codec.decode(message[1])[1]["occurred_at"]

    terms = [
        record
        for event_type, record in (app.codec.decode(value) for _, value in contracts)
        if event_type == "ContractStarted" and record.get("sla_hours_medium") is not None
    ]

    def covered(record: dict[str, Any]) -> bool:
        return any(
            t["customer_id"] == record["customer_id"]
            and t["occurred_at"] <= record["occurred_at"]
            and t["starts_on"] <= record["occurred_at"] < t["ends_on"]
            for t in terms
        )

    opened = max(
        i
        for i, (_, value) in enumerate(others)
        if i > cut and (event := app.codec.decode(value))[0] == "CaseOpened" and covered(event[1])
    )
    early = [c for c in contracts if at(c) <= at(others[opened])]
    later = [c for c in contracts if at(c) > at(others[opened])]
    # The first three fifths without any contract; then the contracts started by the time of
    # that opening (covering earlier cases); the log in time order up to the opening (the end
    # moves on); the late event; the rest; the later contracts.
    messages = others[:cut] + early + others[cut : opened + 1] + last + others[opened + 1 :] + later
    middle = opened + 1 - cut
    sizes = [cut // 2, cut - cut // 2, len(early) // 2, len(early) - len(early) // 2]
    sizes += [middle // 2, middle - middle // 2, 1, len(others) - opened - 1, len(later)]
    spec = load_spec(DEFAULT_SPEC)
    live = ProjectionDB(tmp_path / "live.duckdb")
    version = live.ensure_version(spec, DEFAULT_TEXT, TOPIC)
    breached_open = 0
    for step, size in enumerate(s for s in sizes if s):
        Projector(live, version, ShuffledSource(messages, [size]), app.codec).run()
        _assert_equals_a_full_rebuild(live, version, tmp_path / f"rebuilt-{step}.duckdb", step)
        row = live.connection.execute(
            f"SELECT count(*) FROM {version.schema}.sla_case WHERE breached AND resolved_at IS NULL"
        ).fetchone()
        breached_open = max(breached_open, int(row[0]) if row else 0)
    # Some open case ran past its SLA with no event of its own: only "now" moved.
    assert breached_open > 0
    live.close()
    app.close()


_LATE_TOPICS = {
    f"crm.ledger.{t}"
    for t in ("CustomerDetailsChanged", "ContractRenewed", "ContractEnded", "SurveyAnswered", "CaseReopened")
}


def test_late_details_contracts_and_old_months_equal_a_full_rebuild(tmp_path: Path) -> None:
    """Details changes, renewals and ends, survey answers and reopenings of every month arrive last.

    Compared with a full rebuild after every chunk: the retention months are replaced by
    the terms and customers they hold (a segment changing moves a customer's terms between
    rows), and the KPI tables of old months are summed again from their days, with the
    quantiles and distinct counts recomputed from the measure rows.
    """
    app = _ledger(tmp_path, 11, 80, 4)
    # A contract ends, replaced by another customer's contract (the retained value of its
    # term is the replacement's start value), and that other customer changes segment.
    history = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    started = [r for r in history if r["type"] == "ContractStarted"]
    first, other = started[0], next(r for r in started if r["customer_id"] != started[0]["customer_id"])
    segments = {r["segment"] for r in history if r["type"] == "CustomerRegistered"}
    segment = next(
        s
        for s in sorted(segments | {"enterprise", "smb"})
        if s != next(r["segment"] for r in history if r.get("customer_id") == other["customer_id"])
    )
    late_file = tmp_path / "late.jsonl"
    late_file.write_text(
        json.dumps(
            {
                "type": "CustomerDetailsChanged",
                "event_id": "00000000-0000-4000-8000-000000000002",
                "occurred_at": "2025-04-10T00:00:00.000Z",
                "customer_id": other["customer_id"],
                "segment": segment,
            }
        )
        + "\n"
        + json.dumps(
            {
                "type": "ContractEnded",
                "event_id": "00000000-0000-4000-8000-000000000003",
                "occurred_at": "2025-04-11T00:00:00.000Z",
                "contract_id": first["contract_id"],
                "customer_id": first["customer_id"],
                "reason": "replaced",
                "replaced_by": other["contract_id"],
            }
        )
        + "\n"
    )
    ingest_records(app, read_file(late_file, RecordParser(app.registry)), RejectSink(None, echo=sys.stderr))
    notes = [(n.id, n.state, n.topic) for n in app.read_notifications(1, 1_000_000)]
    early = [(nid, value) for nid, value, topic in notes if topic not in _LATE_TOPICS]
    late = [(nid, value) for nid, value, topic in notes if topic in _LATE_TOPICS]
    late_types = {app.codec.decode(value)[0] for _, value in late}
    assert {"CustomerDetailsChanged", "ContractEnded", "SurveyAnswered"} <= late_types
    random.Random(11).shuffle(late)
    # The segment change comes alone, last: only it can move that customer's terms.
    late.sort(key=lambda m: app.codec.decode(m[1])[0] == "CustomerDetailsChanged" and m[0] == notes[-2][0])
    messages = early + late
    chunk = max(1, (len(late) - 1) // 4)
    sizes = [len(early), *(min(chunk, len(late) - 1 - i) for i in range(0, len(late) - 1, chunk)), 1]
    spec = load_spec(DEFAULT_SPEC)
    live = ProjectionDB(tmp_path / "live.duckdb")
    version = live.ensure_version(spec, DEFAULT_TEXT, TOPIC)
    retention: set[str] = set()
    for step, size in enumerate(sizes):
        Projector(live, version, ShuffledSource(messages, [size]), app.codec).run()
        _assert_equals_a_full_rebuild(live, version, tmp_path / f"rebuilt-{step}.duckdb", step)
        retention.add(digest(live.connection, f"{version.schema}.retention_month"))
    # The late chunks did change the retention rows (not only leave them as they were).
    assert len(retention) > 2
    live.close()
    app.close()


def test_one_follower_over_many_chunks_equals_a_full_rebuild(tmp_path: Path) -> None:
    """One Projector for every chunk, as `project --follow` keeps one, compared after each.

    Between its updates the follower keeps its log handle and the index's last positions;
    another projector updating the same database in between must make it find them again.
    A database from before the index kept its payload events apart, the profile kept
    partial aggregates and the KPIs kept per-day aggregates (the three tables dropped) is
    brought up to date exactly as well.
    """
    app = _ledger(tmp_path, 3, 40, 4)
    messages = _shuffled(app, random.Random(3), 0.2)
    size = len(messages) // 7 + 1
    live, version, follower = _follower(tmp_path, app, messages, size)
    step = 0
    while live.find_version(version.version).events < len(messages):
        if step == 2:
            Projector(live, version, ShuffledSource(messages, [size]), app.codec).run()
        if step == 4:
            for table in (
                "main.crm_index_shuffled_payloads",
                f"{version.schema}.profile_partials",
                f"{version.schema}.{DAYS}",
            ):
                live.connection.execute(f"DROP TABLE {table}")
        follower.run()
        _assert_equals_a_full_rebuild(live, version, tmp_path / f"rebuilt-{step}.duckdb", step)
        live.release()  # as an idle follower does
        step += 1
    assert step >= 5
    live.close()
    app.close()


def test_a_late_team_move_and_other_thresholds_equal_a_full_rebuild(tmp_path: Path) -> None:
    """A team move dated in the middle of the history arrives last, and a version with other
    thresholds follows every chunk beside the default one.

    The move re-attributes the employee's later measures: their old team's days from then
    on are left without any (their per-day aggregates must go), the new team's gain them.
    Both versions are compared with full rebuilds after every chunk, their per-day KPI
    aggregates included (the other thresholds' version makes its own on its first refresh
    after the replay that built it).
    """
    app = _ledger(tmp_path, 7, 40, 4)
    history = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    teams = {r["employee_id"]: r["team_id"] for r in history if r["type"] == "EmployeeJoined"}
    resolved = [r for r in history if r["type"] == "CaseResolved" and r.get("employee_id") in teams]
    employee = max(sorted(teams), key=lambda e: sum(r["employee_id"] == e for r in resolved))
    _move_team_midway(app, tmp_path, history, employee, "00000000-0000-4000-8000-000000000004")
    messages = [(n.id, n.state) for n in app.read_notifications(1, 1_000_000)]
    third = (len(messages) - 1) // 3
    sizes = [third, third, len(messages) - 1 - 2 * third, 1]
    specs = {"default": (load_spec(DEFAULT_SPEC), DEFAULT_TEXT)}
    path, text = _spec(tmp_path, "strict", STRICT_TEXT)
    specs["strict"] = (load_spec(path), text)
    live = ProjectionDB(tmp_path / "live.duckdb")
    version = live.ensure_version(*specs["default"], TOPIC)
    versions = {"default": version}
    team_days: set[int] = set()
    for step, size in enumerate(sizes):
        # Followed through the default version, then (after the replay that builds the other
        # thresholds' version) through that one, which keeps both current.
        followed = versions["strict"] if step > 0 else version
        Projector(live, followed, ShuffledSource(messages, [size]), app.codec).run()
        if step == 0:
            versions["strict"] = live.ensure_version(*specs["strict"], TOPIC, built_from=version.version)
            Maintainer(live, versions["strict"]).update()
        rebuilt_path = tmp_path / f"rebuilt-{step}.duckdb"
        shutil.copytree(log_root(live.path) / log_slug(TOPIC), log_root(rebuilt_path) / log_slug(TOPIC))
        rebuilt = ProjectionDB(rebuilt_path)
        for name, target in versions.items():
            alone = rebuilt.ensure_version(*specs[name], TOPIC)
            Maintainer(rebuilt, alone).update(full=True)
            own = (PARTIALS, CASES, DAYS) if target.built_from is None else ()
            if step > 0 and target.built_from is not None:
                own = (DAYS,)
            for table in (*MODEL_TABLES, *own):
                assert digest(live.connection, f"{target.schema}.{table}") == digest(
                    rebuilt.connection, f"{alone.schema}.{table}"
                ), (step, name, table)
        rebuilt.close()
        row = live.connection.execute(
            f"SELECT count(*) FROM {version.schema}.{DAYS} WHERE employee_id = ? AND team_id = ?",
            [employee, teams[employee]],
        ).fetchone()
        team_days.add(int(row[0]) if row else 0)
    # The move took days away from the employee's first team (not only added some elsewhere).
    assert len(team_days) > 1
    live.close()
    app.close()


def test_an_update_failing_after_the_index_sync_is_made_good_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log index is synced and committed before the update's own transaction: an update
    that fails after that leaves the index ahead of the version's tables. The next update
    finds the new events by the version's positions and equals a full rebuild.

    The failure is injected (a fault inside the update cannot be produced otherwise); the
    chunks between the failures are applied normally.
    """
    app = _ledger(tmp_path, 13, 40, 4)
    messages = _shuffled(app, random.Random(13), 0.3)
    size = len(messages) // 5 + 1
    live, version, follower = _follower(tmp_path, app, messages, size)
    failing = Maintainer._log_tables

    def fail(self: Maintainer, s: str) -> int:
        failing(self, s)
        raise RuntimeError("injected")

    step = 0
    while live.find_version(version.version).events < len(messages):
        if step in (1, 3):
            # The chunk is appended to the log and indexed; the version's update fails.
            monkeypatch.setattr(Maintainer, "_log_tables", fail)
            with pytest.raises(RuntimeError, match="injected"):
                follower.run()
            monkeypatch.setattr(Maintainer, "_log_tables", failing)
            index = live.connection.execute(
                "SELECT count(*) FROM main.crm_index_shuffled WHERE dead_letter IS NULL"
            ).fetchone()
            assert index is not None and index[0] > live.find_version(version.version).events
        follower.run()
        _assert_equals_a_full_rebuild(live, version, tmp_path / f"rebuilt-{step}.duckdb", step)
        step += 1
    assert step >= 4
    live.close()
    app.close()


def test_a_follower_holding_the_file_equals_a_full_rebuild(tmp_path: Path) -> None:
    """One follower updating the same connection again and again, the file never let go of.

    An incremental update leaves its temp tables to the next update on the same connection
    (a follower that lets go of the file drops them by closing it): each update must make
    anew every temp table it reads. A team move on the way makes an update read the whole
    snapshot (its temp tables are dropped at once).
    """
    app = _ledger(tmp_path, 17, 40, 4)
    history = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    teams = {r["employee_id"]: r["team_id"] for r in history if r["type"] == "EmployeeJoined"}
    employee = sorted(teams)[0]
    _move_team_midway(app, tmp_path, history, employee, "00000000-0000-4000-8000-000000000005")
    messages = _shuffled(app, random.Random(17), 0.1)
    size = len(messages) // 6 + 1
    live, version, follower = _follower(tmp_path, app, messages, size)
    connection = live.connection
    step = 0
    while live.find_version(version.version).events < len(messages):
        follower.run()
        _assert_equals_a_full_rebuild(live, version, tmp_path / f"rebuilt-{step}.duckdb", step)
        assert live.connection is connection  # never let go of
        step += 1
    assert step >= 5
    live.close()
    app.close()


def test_a_statement_that_fails_in_an_incremental_update_is_told_as_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The looped ASOF joins' setting was put back inside the update's transaction: after a
    failed statement that reset failed too ("Current transaction is aborted") and hid the
    statement's own error (a full disk's, Ctrl-C's), and the setting stayed raised."""
    app = _ledger(tmp_path, 5, 12, 3)
    messages = [(n.id, n.state) for n in app.read_notifications(1, 1_000_000)]
    live = ProjectionDB(tmp_path / "live.duckdb")
    version = live.ensure_version(load_spec(DEFAULT_SPEC), DEFAULT_TEXT, TOPIC)
    half = len(messages) // 2
    Projector(live, version, ShuffledSource(messages, [half]), app.codec).run()

    def failing(self: Maintainer, s: str) -> int:
        self.db.connection.execute("SELECT * FROM crm_no_such_table")
        return 0

    monkeypatch.setattr(Maintainer, "_log_tables", failing)
    with pytest.raises(Exception, match="crm_no_such_table"):
        Projector(live, version, ShuffledSource(messages, [len(messages)]), app.codec).run()
    setting = live.connection.execute("SELECT current_setting('asof_loop_join_threshold')").fetchone()
    assert setting == (64,)
    live.close()
    app.close()
