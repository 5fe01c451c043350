"""Projections: an independent oracle, determinism, both sources equal, dead letters, crashes."""

from __future__ import annotations

import contextlib
import json
import math
import signal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from confluent_kafka import Producer

from crm_ledger.settings import Settings, log_root
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from ledger.relay import Relay, RelayConfig
from projections.engine import Projector
from projections.log import DecodedLog, log_slug
from projections.readonly import reader
from projections.service import project_promoted
from projections.sources import KafkaSource, LedgerSource
from projections.spec import DEFAULT_SPEC, load_spec
from projections.store import ProjectionDB
from tests.helpers import kill_hard, run_cli, start_cli, wait_for
from tests.oracle import Oracle

MODEL_TABLES = (
    "customer_profile",
    "kpi_employee_month",
    "kpi_team_month",
    "kpi_employee_week",
    "kpi_team_day",
    "reward_score",
    "reward_components",
)


def make_history(path: Path, **overrides: Any) -> list[dict[str, Any]]:
    config = GeneratorConfig(**{"customers": 400, "employees": 14, "months": 3, "seed": 21, **overrides})
    with path.open("w") as handle:
        write_history(config, handle)
    return [json.loads(line) for line in path.read_text().splitlines()]


def load(app: LedgerApplication, path: Path) -> None:
    summary = ingest_records(
        app,
        read_file(path, RecordParser(app.registry)),
        RejectSink(None, echo=None),
        batch_size=1000,
    )
    assert summary.rejected == 0


def build(settings: Settings, source: Any, app: LedgerApplication) -> ProjectionDB:
    db = ProjectionDB(settings.projections_db)
    spec = load_spec(DEFAULT_SPEC)
    version = db.ensure_version(spec, DEFAULT_SPEC.read_text(), source.name)
    Projector(db, version, source, app.codec).run()
    db.promote(db.find_version(version.version))
    return db


def digest(con: duckdb.DuckDBPyConnection, table: str, exclude: tuple[str, ...] = ()) -> str:
    """An ordered hash of a table's content; `spec_version` only names the version, so it never counts."""
    skipped = {*exclude, "spec_version"}
    columns = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall() if r[0] not in skipped]
    select = ", ".join(f'"{c}"' for c in columns)
    row = con.execute(
        f"SELECT md5(coalesce(string_agg(t::VARCHAR, '\n' ORDER BY t::VARCHAR), '')) FROM (SELECT {select} FROM {table}) t"
    ).fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    path = tmp_path / "h.jsonl"
    return path, make_history(path)


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


def test_kpis_and_scores_match_an_independent_oracle(
    history: tuple[Path, list[dict[str, Any]]], app: LedgerApplication, settings: Settings
) -> None:
    path, records = history
    load(app, path)
    db = build(settings, LedgerSource(app), app)
    oracle = Oracle(records)

    con = db.connection
    columns = [
        "csat_n",
        "csat_pct",
        "nps_n",
        "nps",
        "problems_solved",
        "fcr_rate",
        "ttr_median_h",
        "ttr_p90_h",
        "escalations",
        "reopen_rate",
        "relationship_attempts",
        "compliments",
        "articles_created",
        "citations",
        "links_made",
        "shares",
        "participation_rate",
    ]
    rows = con.execute(
        f"SELECT employee_id, team_id, period, {', '.join(columns)} FROM kpi_employee_month"
    ).fetchall()
    expected = oracle.employee_month()
    assert {(r[0], r[1], r[2]) for r in rows} == set(expected)
    for row in rows:
        want = expected[(row[0], row[1], row[2])]
        for name, value in zip(columns, row[3:], strict=True):
            assert _close(value, want[name]), (row[:3], name, value, want[name])

    team_rows = con.execute(f"SELECT team_id, period, {', '.join(columns)} FROM kpi_team_month").fetchall()
    expected_team = oracle.team_month()
    assert {(r[0], r[1]) for r in team_rows} == set(expected_team)
    for row in team_rows:
        for name, value in zip(columns, row[2:], strict=True):
            assert _close(value, expected_team[(row[0], row[1])][name]), (row[:2], name)

    spec = load_spec(DEFAULT_SPEC)
    caps = {c.kpi: c.cap for c in spec.components if c.kind == "count"}
    weights = {("fcr" if c.kpi == "fcr_rate" else c.kpi): c.weight for c in spec.components}
    scores = oracle.reward_scores(caps, weights)  # type: ignore[arg-type]
    got = {
        (e, p): s for e, p, s in con.execute("SELECT employee_id, period, score FROM reward_score").fetchall()
    }
    assert set(got) == set(scores)
    for key, score in scores.items():
        assert _close(got[key], score), (key, got[key], score)
    db.close()


def test_projecting_twice_gives_identical_tables(
    history: tuple[Path, list[dict[str, Any]]], app: LedgerApplication, tmp_path: Path
) -> None:
    load(app, history[0])
    digests = []
    for name in ("a", "b"):
        settings = Settings(store="unused", projections_db=tmp_path / f"{name}.duckdb")
        db = build(settings, LedgerSource(app, batch_size=700 if name == "a" else 5000), app)
        digests.append({t: digest(db.connection, t) for t in (*MODEL_TABLES, "ledger_events")})
        db.close()
    assert digests[0] == digests[1]


def test_incremental_equals_one_shot(
    history: tuple[Path, list[dict[str, Any]]], settings: Settings, tmp_path: Path
) -> None:
    path, records = history
    app = LedgerApplication(settings.eventsourcing_env())
    half = tmp_path / "half.jsonl"
    half.write_text("\n".join(json.dumps(r) for r in records[: len(records) // 2]) + "\n")
    load(app, half)
    db = build(settings, LedgerSource(app, batch_size=999), app)
    db.close()
    load(app, path)
    db = build(settings, LedgerSource(app, batch_size=999), app)
    incremental = {t: digest(db.connection, t) for t in MODEL_TABLES}
    db.close()
    fresh = build(Settings(store="unused", projections_db=tmp_path / "fresh.duckdb"), LedgerSource(app), app)
    assert incremental == {t: digest(fresh.connection, t) for t in MODEL_TABLES}


@pytest.mark.kafka
def test_kafka_and_ledger_sources_give_identical_read_models(
    history: tuple[Path, list[dict[str, Any]]],
    app: LedgerApplication,
    tmp_path: Path,
    kafka_bootstrap: str,
    topic: str,
) -> None:
    load(app, history[0])
    Relay(app, RelayConfig(kafka_bootstrap, topic, partitions=4, transactional_id=f"r-{topic}")).run()
    from_ledger = build(
        Settings(store="unused", projections_db=tmp_path / "l.duckdb"), LedgerSource(app), app
    )
    source = KafkaSource(kafka_bootstrap, topic, batch_size=1000)
    from_kafka = build(Settings(store="unused", projections_db=tmp_path / "k.duckdb"), source, app)
    source.close()
    for table in MODEL_TABLES:
        assert digest(from_ledger.connection, table) == digest(from_kafka.connection, table), table
    positions = ("source", "partition", "offset")
    assert digest(from_ledger.connection, "ledger_events", positions) == digest(
        from_kafka.connection, "ledger_events", positions
    )


@pytest.mark.kafka
def test_undecodable_records_go_to_dead_letters(
    app: LedgerApplication, tmp_path: Path, kafka_bootstrap: str, topic: str
) -> None:
    path = tmp_path / "h.jsonl"
    make_history(path, customers=60, months=1)
    load(app, path)
    config = RelayConfig(kafka_bootstrap, topic, partitions=1, transactional_id=f"r-{topic}")
    Relay(app, config).run()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, b"\x07garbage")
    producer.produce(topic, b"\x00\x00\x00\x27\x10" + b"x" * 8)
    producer.flush(30)
    settings = Settings(store="unused", projections_db=tmp_path / "p.duckdb")
    source = KafkaSource(kafka_bootstrap, topic)
    db = build(settings, source, app)
    source.close()
    dead = db.connection.execute('SELECT "offset", error FROM dead_letters ORDER BY "offset"').fetchall()
    assert len(dead) == 2
    assert "magic byte" in dead[0][1] and "unknown schema id 10000" in dead[1][1]
    assert db.connection.execute("SELECT count(*) FROM ledger_events").fetchone()[0] == app.max_position()


@pytest.mark.kafka
@pytest.mark.slow
def test_kill_9_at_random_points_neither_loses_nor_double_counts(
    app: LedgerApplication, settings: Settings, tmp_path: Path, kafka_bootstrap: str, topic: str
) -> None:
    path = tmp_path / "h.jsonl"
    make_history(path, customers=2500, months=3)
    load(app, path)
    Relay(app, RelayConfig(kafka_bootstrap, topic, partitions=3, transactional_id=f"r-{topic}")).run()
    total = app.max_position()
    db_path = tmp_path / "crash.duckdb"
    env = {
        "CRM_LEDGER_STORE": settings.store,
        "CRM_LEDGER_DB": str(db_path),
        "CRM_LEDGER_BOOTSTRAP": kafka_bootstrap,
        "CRM_LEDGER_TOPIC": topic,
    }
    kills = 0
    for threshold in (1, 2, 3):
        goal = threshold * total // 5
        process = start_cli("project", "--source", "kafka", env=env)
        with contextlib.suppress(AssertionError):  # a fast projector may finish first
            wait_for(
                lambda: _events_in(db_path) >= goal,  # noqa: B023 - used at once
                timeout_s=60,
                what="projector progress",
            )
        if process.poll() is None:
            kill_hard(process)
            kills += 1
    assert kills >= 1
    finished = run_cli("project", "--source", "kafka", env=env)
    assert finished.returncode == 0, finished.stderr
    stack = contextlib.ExitStack()
    crashed = stack.enter_context(reader(db_path))
    clean = build(Settings(store="unused", projections_db=tmp_path / "clean.duckdb"), LedgerSource(app), app)
    assert crashed.execute(
        "SELECT count(*), count(DISTINCT notification_id) FROM ledger_events"
    ).fetchone() == (total, total)
    for table in MODEL_TABLES:
        assert digest(crashed, table) == digest(clean.connection, table), table
    stack.close()


def _events_in(db_path: Path) -> int:
    """Rows committed to the decoded logs so far (readable while the projector appends)."""
    root = log_root(db_path)
    if not root.exists():
        return 0
    return sum(
        DecodedLog(path).dataset().count_rows() for path in root.iterdir() if (path / "_delta_log").exists()
    )


def test_project_service_creates_and_promotes_default(
    settings: Settings, history: tuple[Path, list[dict[str, Any]]]
) -> None:
    app = LedgerApplication(settings.eventsourcing_env())
    load(app, history[0])
    message = project_promoted(settings, "ledger", None, follow=False)
    assert "applied" in message
    with reader(settings.projections_db) as con:
        assert con.execute("SELECT count(*) FROM reward_score").fetchone()[0] > 0
        assert con.execute("SELECT count(*) FROM ledger_events").fetchone()[0] == app.max_position()


def test_a_one_shot_project_cut_short_by_ctrl_c_says_so_and_exits_130(tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=1500, employees=20, months=4, seed=4), handle)
    env = {"CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    run_cli("ingest", str(history), env=env, check=True)
    process = start_cli("project", env=env)
    # Once it works (the database is made under the stop handler; a Ctrl-C in the interpreter's
    # first moments, while it imports, is another matter).
    wait_for((tmp_path / "p.duckdb").exists, what="project to start")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    again = run_cli("project", env=env)
    assert again.returncode == 0, again.stderr
    count = run_cli("query", "SELECT count(*) AS n FROM ledger_events", "--format", "csv", env=env)
    assert count.stdout.split() == ["n", str(len(history.read_text().splitlines()))]
    # A replay that re-decodes the ledger, cut short: the note goes to stderr, stdout stays empty.
    process = start_cli("replay", "--from-source", "--metrics", str(DEFAULT_SPEC), "--name", "again", env=env)
    rebuilding = log_root(tmp_path / "p.duckdb") / f"{log_slug('ledger')}.rebuild"
    wait_for(rebuilding.exists, what="the log's rebuild to start")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stdout + stderr
    assert stdout == "" and "Traceback" not in stderr and "interrupted" in stderr, (stdout, stderr)
