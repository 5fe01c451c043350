"""Replay: versions side by side, weights-only recompute, as-of, diff, promote and rollback."""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import duckdb
import pytest

from crm_ledger.settings import Settings, log_root
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser, parse_timestamp
from projections.errors import SpecError
from projections.readonly import reader
from projections.service import project_promoted
from projections.spec import DEFAULT_SPEC, load_spec, parse_spec
from projections.store import ProjectionDB
from replay.build import replay
from replay.diff import diff_versions
from tests.factory import basics, rec
from tests.helpers import assert_gives_up_on_a_missing_broker, kill_hard, run_cli, start_cli, wait_for
from tests.projections.test_projections import MODEL_TABLES, digest

DEFAULT_TEXT = DEFAULT_SPEC.read_text()


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def weights_only(tmp_path: Path) -> Path:
    text = DEFAULT_TEXT.replace("weight = 0.25", "weight = 0.05", 1).replace(
        'kpi = "problems_solved"\nweight = 0.20', 'kpi = "problems_solved"\nweight = 0.40'
    )
    return write_spec(tmp_path / "weights.toml", text)


def strict_csat(tmp_path: Path) -> Path:
    return write_spec(
        tmp_path / "strict.toml", DEFAULT_TEXT.replace("csat_satisfied_min = 4", "csat_satisfied_min = 5")
    )


def load(settings: Settings, path: Path) -> LedgerApplication:
    app = LedgerApplication(settings.eventsourcing_env())
    summary = ingest_records(
        app, read_file(path, RecordParser(app.registry)), RejectSink(None, echo=None), batch_size=1000
    )
    assert summary.rejected == 0
    return app


@pytest.fixture
def ledger(settings: Settings, tmp_path: Path) -> LedgerApplication:
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=300, employees=12, months=3, seed=8), handle)
    app = load(settings, history)
    project_promoted(settings, "ledger", None, follow=False)
    return app


def test_weights_only_change_recomputes_scores_without_the_log(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    result = replay(settings, weights_only(tmp_path), "ledger")
    assert result.mode == "scores-only" and result.applied == 0
    forced = replay(settings, weights_only(tmp_path), "ledger")
    assert forced.mode == "caught-up"
    with ProjectionDB(settings.projections_db) as db:
        derived = db.find_version(result.version)
        base = db.find_version(db.promoted_version() or "")
        assert derived.built_from == base.version
        report = diff_versions(db.connection, base, derived)
        assert report.rows_changed > 0 and report.kpi_changes == {}
        # A full replay of the same spec in a fresh DB gives the same scores.
    other = Settings(store=settings.store, projections_db=tmp_path / "other.duckdb")
    full = replay(other, weights_only(tmp_path), "ledger", full=True)
    assert full.mode == "full" and full.version == result.version
    with (
        duckdb.connect(str(settings.projections_db), read_only=True) as a,
        duckdb.connect(str(other.projections_db), read_only=True) as b,
    ):
        assert digest(a, f"{result.version}.reward_score") == digest(b, f"{full.version}.reward_score")


def test_replay_is_deterministic_and_detects_kpi_changes(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    # Beside the promoted default: shares its spec-independent tables, recounts the thresholds.
    first = replay(settings, strict_csat(tmp_path), "ledger", name="strict")
    assert first.mode == "kpi-change"
    # Alone in a fresh database: every table built from the log.
    again = Settings(store=settings.store, projections_db=tmp_path / "again.duckdb")
    second = replay(again, strict_csat(tmp_path), "ledger", name="strict")
    assert second.mode == "full"
    assert first.version == second.version
    with (
        duckdb.connect(str(settings.projections_db), read_only=True) as a,
        duckdb.connect(str(again.projections_db), read_only=True) as b,
    ):
        for table in MODEL_TABLES:
            assert digest(a, f"{first.version}.{table}") == digest(b, f"{second.version}.{table}"), table
    with ProjectionDB(settings.projections_db) as db:
        report = diff_versions(
            db.connection, db.find_version(db.promoted_version() or ""), db.find_version("strict")
        )
        assert report.kpi_changes.get("csat_pct", 0) > 0
        assert report.spearman is not None and report.spearman < 1


def test_spec_change_moves_a_known_employee_in_the_ranking(settings: Settings, tmp_path: Path) -> None:
    events = basics()
    # e3 (team t2): delighted customers, one case; e2 (team t1): many solved cases, unhappy customers.
    for i in range(12):
        case = f"k{i}"
        who = "e3" if i == 0 else "e2"
        day = f"2026-01-{10 + i:02d}"
        events += [
            rec(
                "CaseOpened",
                f"{day}T08:00:00Z",
                case_id=case,
                customer_id="c1",
                kind="complaint",
                channel="phone",
            ),
            rec("CaseAccepted", f"{day}T08:10:00Z", case_id=case, employee_id=who),
            rec(
                "CaseResolved",
                f"{day}T09:00:00Z",
                case_id=case,
                employee_id=who,
                resolution_code="fixed",
                first_contact=True,
            ),
            rec(
                "SurveyAnswered",
                f"{day}T10:00:00Z",
                customer_id="c1",
                case_id=case,
                csat=5 if who == "e3" else 2,
            ),
        ]
    history = tmp_path / "ranking.jsonl"
    history.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    load(settings, history)
    project_promoted(settings, "ledger", None, follow=False)
    solving = DEFAULT_TEXT.replace("weight = 0.25", "weight = 0.0", 1).replace(
        'kpi = "problems_solved"\nweight = 0.20', 'kpi = "problems_solved"\nweight = 0.45'
    )
    result = replay(settings, write_spec(tmp_path / "solving.toml", solving), "ledger", name="solving")
    with ProjectionDB(settings.projections_db) as db:
        report = diff_versions(
            db.connection, db.find_version(db.promoted_version() or ""), db.find_version(result.version)
        )
    ranks = {(r.employee_id, r.period): (r.old_rank, r.new_rank) for r in report.rows}
    assert ranks[("e3", "2026-01")] == (1, 2)
    assert ranks[("e2", "2026-01")] == (2, 1)


def test_as_of_equals_a_log_truncated_at_that_moment(settings: Settings, tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=250, employees=10, months=3, seed=12), handle)
    load(settings, history)
    cut = "2025-02-15T12:00:00Z"
    result = replay(
        settings, DEFAULT_SPEC, "ledger", as_of=__import__("projections.engine").engine.parse_as_of(cut)
    )
    kept = [
        line
        for line in history.read_text().splitlines()
        if parse_timestamp(json.loads(line)["occurred_at"]) <= parse_timestamp(cut)
    ]
    truncated_file = tmp_path / "truncated.jsonl"
    truncated_file.write_text("\n".join(kept) + "\n")
    truncated = Settings(store=str(tmp_path / "t.sqlite"), projections_db=tmp_path / "t.duckdb")
    load(truncated, truncated_file)
    project_promoted(truncated, "ledger", None, follow=False)
    with (
        duckdb.connect(str(settings.projections_db), read_only=True) as a,
        duckdb.connect(str(truncated.projections_db), read_only=True) as b,
    ):
        for table in MODEL_TABLES:
            if table == "reward_score":
                continue  # spec_version differs (the as-of version has its own id)
            assert digest(a, f"{result.version}.{table}") == digest(b, table), table
        assert digest(a, f"{result.version}.reward_score", ("spec_version",)) == digest(
            b, "reward_score", ("spec_version",)
        )


def test_promote_and_rollback_while_a_reader_holds_a_connection(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    new = replay(settings, weights_only(tmp_path), "ledger")
    with ProjectionDB(settings.projections_db) as db:
        old = db.promoted_version()
        reader = db.connection.cursor()
        before = reader.execute("SELECT sum(score) FROM reward_score").fetchone()
        db.promote(db.find_version(new.version))
        after = reader.execute("SELECT sum(score) FROM reward_score").fetchone()
        assert before != after
        assert reader.execute("SELECT DISTINCT spec_version FROM reward_score").fetchall() == [(new.version,)]
        db.promote(db.find_version(old or ""))  # the rollback
        assert reader.execute("SELECT sum(score) FROM reward_score").fetchone() == before


@pytest.mark.slow
def test_replay_killed_and_resumed_equals_uninterrupted(settings: Settings, tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=4000, employees=30, months=3, seed=5), handle)
    load(settings, history)
    spec = strict_csat(tmp_path)
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    # Killed while decoding the source into the shared log (the long part of a first replay).
    commits = log_root(settings.projections_db) / "ledger" / "_delta_log"
    process = start_cli("replay", "--metrics", str(spec), env=env)
    wait_for(lambda: any(commits.glob("*.json")) or process.poll() is not None, what="a log commit")
    kill_hard(process)
    resumed = run_cli("replay", "--metrics", str(spec), env=env)
    assert resumed.returncode == 0, resumed.stderr
    clean = Settings(store=settings.store, projections_db=tmp_path / "clean" / "clean.duckdb")
    expected = replay(clean, spec, "ledger")
    with reader(settings.projections_db) as a, reader(clean.projections_db) as b:
        for table in (*MODEL_TABLES, "events"):
            assert digest(a, f"{expected.version}.{table}") == digest(b, f"{expected.version}.{table}"), table
        # Appended exactly once despite the kill: every event once, nothing lost.
        assert (
            a.execute(
                f"SELECT count(*), count(DISTINCT notification_id) FROM {expected.version}.events"
            ).fetchone()
            == b.execute(f"SELECT count(*), count(*) FROM {expected.version}.events").fetchone()
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            DEFAULT_TEXT.replace('kpi = "citations"', 'kpi = "happiness"'),
            ":32: components.citations.kpi: unknown KPI 'happiness'",
        ),
        (
            DEFAULT_TEXT.replace("weight = 0.05", "weight = -0.05"),
            ":51: components.shares.weight: must not be negative",
        ),
        (DEFAULT_TEXT.replace("weight = 0.05", "weight = 0.5"), "weights must sum to 1"),
        (DEFAULT_TEXT.replace("cap = 3", "cap = 0"), ":46: components.compliments.cap"),
        (DEFAULT_TEXT + "\n[broken\n", "invalid TOML"),
        # Values of the wrong type: each one line naming the key (a list or text was a traceback).
        (re.sub(r"\n\[kpis\]\n[^[]*", '\nkpis = "strict"\n\n', DEFAULT_TEXT), ":7: kpis: must be a table"),
        (re.sub(r"\n\[kpis\]\n[^[]*", "\nkpis = []\n\n", DEFAULT_TEXT), ":7: kpis: must be a table"),
        (DEFAULT_TEXT.replace('kind = "bayesian"', 'kind = ["bayesian"]'), ":13: components.csat.kind: must be one of"),
        (DEFAULT_TEXT.replace('kpi = "csat"', 'kpi = ["csat"]'), ":14: components.csat.kpi: unknown KPI"),
        (DEFAULT_TEXT.replace("description = ", "description = 3 #"), ":5: description: must be text"),
        (DEFAULT_TEXT.replace('name = "default"', 'name = "de\\u001b[2Jfault"'), "name: 'de\\x1b[2Jfault' holds control"),
        # Numbers the scores' SQL cannot hold, and more components than it can nest.
        (DEFAULT_TEXT.replace("prior_strength = 20", "prior_strength = nan", 1), "prior_strength: must be a number"),
        (DEFAULT_TEXT.replace("prior_strength = 20", "prior_strength = inf", 1), "prior_strength: must be a number"),
        (DEFAULT_TEXT.replace("min_sample = 5", "min_sample = 99999999999999999", 1), "min_sample: must be"),
        (
            DEFAULT_TEXT
            + "".join(f'\n[components.c{i}]\nkind = "count"\nkpi = "shares"\nweight = 0\ncap = 1\n' for i in range(60)),
            "components: at most 50 components",
        ),
    ],
)
def test_bad_specs_fail_before_any_work(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path, text: str, expected: str
) -> None:
    spec = write_spec(tmp_path / "bad.toml", text)
    with ProjectionDB(settings.projections_db) as db:
        before = [(v.version, v.state, v.promoted) for v in db.versions()]
    with pytest.raises(SpecError) as caught:
        replay(settings, spec, "ledger")
    assert "bad.toml" in str(caught.value) and expected in str(caught.value)
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    cli = run_cli("replay", "--metrics", str(spec), env=env)
    assert cli.returncode == 1 and "Traceback" not in cli.stderr and "bad.toml" in cli.stderr
    with ProjectionDB(settings.projections_db) as db:
        assert [(v.version, v.state, v.promoted) for v in db.versions()] == before


def test_a_spec_stored_with_an_older_version_is_read_as_it_was_accepted() -> None:
    """A number as description (accepted then, refused in a spec file now) and a tab in the
    name: the version's stored spec is re-read on every refresh and must keep working."""
    text = DEFAULT_TEXT.replace("description = ", "description = 2026 #").replace(
        'name = "default"', 'name = "old\tname"'
    )
    stored = parse_spec(text, "<spec of v_x>")
    assert stored.description == "2026" and stored.name == "old\tname"


def test_a_replay_from_kafka_without_a_broker_is_one_line(ledger: LedgerApplication, settings: Settings) -> None:
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    spec = str(DEFAULT_SPEC)
    for extra in ([], ["--from-source"]):
        assert_gives_up_on_a_missing_broker(
            "replay", "--source", "kafka", "--metrics", spec, "--name", "k", *extra,
            env=env, what="reading 'crm.ledger.events'",
        )


def test_reading_kafka_needs_no_event_store(tmp_path: Path) -> None:
    """A Kafka consumer on another host has no ledger: `replay` and `project` from Kafka never
    make an event store (they made an empty one, or failed on an unreachable PostgreSQL)."""
    store = tmp_path / "nowhere" / "ledger.sqlite"
    env = {"CRM_LEDGER_STORE": str(store), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    what = "reading 'crm.ledger.events'"
    assert_gives_up_on_a_missing_broker("replay", "--source", "kafka", "--metrics", str(DEFAULT_SPEC), env=env, what=what)
    assert_gives_up_on_a_missing_broker("project", "--source", "kafka", env=env, what=what)
    assert not store.parent.exists()


def test_a_build_from_kafka_without_a_broker_leaves_nothing_behind(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    """Each left an empty decoded log (a valid Delta table of no events, read as a complete
    log) and `project` a new projection database; what was there before stays as it was."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    spec = str(DEFAULT_SPEC)
    what = "reading 'crm.ledger.events'"
    builds = (["project"], ["project", "--workers", "2"], ["replay", "--metrics", spec],
              ["replay", "--metrics", spec, "--from-source"])
    for db in (fresh / "p.duckdb", settings.projections_db):
        env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(db)}
        before = sorted(db.parent.rglob("*"))
        for command, *extra in builds:
            if db.exists() and command == "project":
                continue  # the promoted version reads the ledger: refused before any reading
            assert_gives_up_on_a_missing_broker(command, "--source", "kafka", *extra, env=env, what=what)
            assert sorted(db.parent.rglob("*")) == before, (command, extra)
    assert not any(fresh.iterdir())


def test_unknown_versions_are_clear_errors(ledger: LedgerApplication, settings: Settings) -> None:
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    for args in (["promote", "v_nope"], ["diff", "v_nope", "default"], ["drop", "v_nope"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 1, args
        assert "unknown version 'v_nope'" in result.stderr
    for args in (["promote", ""], ["drop", " "], ["diff", "", "default"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 1 and "no version named" in result.stderr, args
    promoted = run_cli("versions", "--format", "json", env=env)
    current = next(v["version"] for v in json.loads(promoted.stdout) if v["promoted"])
    refused = run_cli("drop", current, env=env)
    assert refused.returncode == 1 and "is promoted" in refused.stderr


def test_version_names_are_given_printable_and_shown_escaped(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    """A name with an escape sequence reached the terminal as a command ("\\x1b[2J" cleared it)."""
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    spec = str(strict_csat(tmp_path))
    for name, why in (("", "is empty"), ("  ", "is empty"), ("a\x1b[2Jb", "control characters"), ("a\nb", "control")):
        refused = run_cli("replay", "--metrics", spec, "--name", name, env=env)
        assert refused.returncode == 2 and why in refused.stderr and "\x1b" not in refused.stderr, (name, refused)
    with ProjectionDB(settings.projections_db) as db:
        assert [v.name for v in db.versions()] == ["default"]
    # A name planted in the database (a copy from elsewhere) is shown, not obeyed.
    with duckdb.connect(str(settings.projections_db)) as connection:
        connection.execute("UPDATE main.crm_versions SET name = 'x' || chr(27) || '[2J'")
    for args in (["promote", "x\x1b[2J"], ["promote", "nope"], ["project"]):
        shown = run_cli(*args, env=env)
        assert "\x1b" not in shown.stdout + shown.stderr and "x\\x1b[2J" in shown.stdout + shown.stderr, shown


def test_a_spec_built_before_keeps_its_version_name_and_is_built_anew_when_asked_in_full(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    spec = str(strict_csat(tmp_path))
    first = run_cli("replay", "--metrics", spec, "--name", "strict", env=env)
    assert first.returncode == 0 and "not applied" not in first.stdout, first.stderr
    with ProjectionDB(settings.projections_db) as db:
        shared = next(v for v in db.versions() if v.name == "strict")
    again = run_cli("replay", "--metrics", spec, "--name", "v2", "--full", env=env)
    assert again.returncode == 0 and "caught up" in again.stdout
    assert f"--name 'v2' not applied: this spec is version {shared.version} already, named 'strict'" in again.stdout
    # Built from the promoted version, it shares that one's tables: --full cannot make it its own.
    assert f"--full not applied: it shares the tables of {shared.built_from}" in again.stdout
    # A version of its own is made anew from the log when asked again in full.
    own = str(weights_only(tmp_path))
    assert run_cli("replay", "--metrics", own, "--full", "--name", "own", env=env).returncode == 0
    with ProjectionDB(settings.projections_db) as db:
        built = next(v for v in db.versions() if v.name == "own")
        before = _version_digests(db, built.schema)
    full = run_cli("replay", "--metrics", own, "--full", env=env)
    assert full.returncode == 0 and f"{built.version} (own): replayed {ledger.max_position()} events" in full.stdout
    with ProjectionDB(settings.projections_db) as db:
        assert sorted(v.name for v in db.versions()) == ["default", "own", "strict"]
        assert _version_digests(db, built.schema) == before


def _version_digests(db: ProjectionDB, schema: str) -> dict[str, str]:
    """Each table of a version's schema (its own read models) by its content."""
    tables = db.connection.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = ? AND NOT temporary", [schema]
    ).fetchall()
    assert tables
    return {name: digest(db.connection, f"{schema}.{name}") for (name,) in tables}


def test_a_version_id_planted_in_the_catalog_is_refused_not_run_as_sql(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    """Version ids name schemas in the SQL of promote, project, drop...: one planted in the
    catalog ran as statements of the writer's connection (a COPY wrote any file)."""
    written = tmp_path / "written.csv"
    with duckdb.connect(str(settings.projections_db)) as connection:
        real = connection.execute("SELECT version FROM main.crm_versions").fetchone()[0]  # type: ignore[index]
        evil = f"{real}.reward_score; COPY (SELECT 42) TO '{written}'; SELECT * FROM {real}"
        columns = [r[0] for r in connection.execute("DESCRIBE main.crm_versions").fetchall()]
        values = ", ".join({"version": "?", "name": "'evil'"}.get(c, c) for c in columns)
        connection.execute(f"INSERT INTO main.crm_versions SELECT {values} FROM main.crm_versions", [evil])
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    for args in (["promote", "evil"], ["project"], ["versions"], ["diff", "evil", real], ["query", "SELECT 1"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 1 and "which is no version id" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not written.exists()


def test_a_version_still_building_is_refused_by_diff_as_by_promote(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    """A replay cut short: diff blamed the projection database ("Table ... does not exist")."""
    built = replay(settings, strict_csat(tmp_path), "ledger", name="strict")
    with duckdb.connect(str(settings.projections_db)) as connection:
        connection.execute(
            "UPDATE main.crm_versions SET built_at = NULL, state = 'building' WHERE version = ?", [built.version]
        )
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    for args in (["diff", "default", "strict"], ["diff", "strict", "default"], ["promote", "strict"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 1 and f"version {built.version} is still building" in result.stderr, result


def test_versions_and_diff_read_without_writing(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    """`versions` and `diff` are auditors' commands: they neither change a database nor create one."""
    db = settings.projections_db
    before = db.read_bytes()
    listed = run_cli("versions", "--format", "json", env={"CRM_LEDGER_DB": str(db)})
    assert listed.returncode == 0 and json.loads(listed.stdout)
    current = next(v["version"] for v in json.loads(listed.stdout) if v["promoted"])
    compared = run_cli("diff", current, current, "--format", "json", env={"CRM_LEDGER_DB": str(db)})
    assert compared.returncode == 0 and json.loads(compared.stdout)["summary"]["rows_changed"] == 0
    assert db.read_bytes() == before
    missing = tmp_path / "elsewhere" / "none.duckdb"
    for args in (["versions"], ["diff", "a", "b"]):
        refused = run_cli(*args, env={"CRM_LEDGER_DB": str(missing)})
        assert refused.returncode == 1 and "no projection database yet" in refused.stderr, args
        assert not missing.parent.exists(), args


@pytest.mark.kafka
def test_v1_events_replay_under_the_v2_reader(
    kafka_bootstrap: str, topic: str, settings: Settings, tmp_path: Path, registry: Any
) -> None:
    import io

    import fastavro
    from confluent_kafka import Producer

    from crm_ledger.kafka import ensure_topic
    from ledger.relay import Relay, RelayConfig
    from projections.engine import Projector
    from projections.sources import KafkaSource
    from projections.spec import load_spec
    from schemas.codec import HEADER

    app = LedgerApplication(settings.eventsourcing_env())
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=80, employees=6, months=1, seed=2), handle)
    ingest_records(app, read_file(history, RecordParser(app.registry)), RejectSink(None, echo=None))
    ensure_topic(kafka_bootstrap, topic, 1)
    Relay(app, RelayConfig(kafka_bootstrap, topic, partitions=1, transactional_id=f"r-{topic}")).run()
    v1 = registry.versions("SurveyAnswered")[0]
    v1_topic = f"{topic}-v1"
    ensure_topic(kafka_bootstrap, v1_topic, 1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    rewritten = 0
    for notification in app.read_notifications(1, 100_000):
        value = notification.state
        event_type, record = app.codec.decode(value)
        if event_type == "SurveyAnswered":
            buffer = io.BytesIO()
            buffer.write(HEADER.pack(0, v1.schema_id))
            fastavro.schemaless_writer(buffer, v1.parsed, {k: record[k] for k in v1.field_names})
            value = buffer.getvalue()
            rewritten += 1
        producer.produce(v1_topic, value, headers=[("notification_id", str(notification.id))])
    producer.flush(30)
    assert rewritten > 0
    spec = load_spec(DEFAULT_SPEC)
    tables = {}
    for name, source_topic in (("v2", topic), ("v1", v1_topic)):
        db = ProjectionDB(tmp_path / f"{name}.duckdb")
        version = db.ensure_version(spec, DEFAULT_TEXT, source_topic)
        source = KafkaSource(kafka_bootstrap, source_topic)
        Projector(db, version, source, app.codec).run()
        source.close()
        # spec_version names the version, which differs by source; everything else must match.
        tables[name] = {
            t: digest(db.connection, f"{version.schema}.{t}", ("spec_version",)) for t in MODEL_TABLES
        }
        versions = db.connection.execute(
            f"SELECT DISTINCT schema_version FROM {version.schema}.events WHERE event_type = 'SurveyAnswered'"
        ).fetchall()
        assert versions == [(1 if name == "v1" else 2,)]
        db.close()
    assert tables["v1"] == tables["v2"]
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)


@pytest.mark.slow
def test_a_follower_moves_on_to_a_newly_promoted_version(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    new = replay(settings, strict_csat(tmp_path), "ledger", name="strict")
    follower = start_cli("project", "--follow", "--refresh-interval", "0.2", env=env)
    try:
        assert run_cli("promote", "strict", env=env).returncode == 0
        extra = tmp_path / "extra.jsonl"
        extra.write_text(
            json.dumps(
                rec(
                    "RelationshipAttemptMade",
                    "2025-03-20T10:00:00Z",
                    customer_id="cust-000001",
                    employee_id="emp-0001",
                    channel="phone",
                )
            )
            + "\n"
        )
        assert run_cli("ingest", str(extra), env=env).returncode == 0

        def strict_has_it() -> bool:
            result = run_cli(
                "query", f"SELECT count(*) FROM {new.version}.events", "--format", "csv", env=env
            )
            return result.returncode == 0 and result.stdout.splitlines()[-1] == str(ledger.max_position())

        wait_for(strict_has_it, timeout_s=60, what="the follower to update the newly promoted version")
    finally:
        follower.terminate()
        follower.wait(timeout=30)


def test_a_spec_file_with_a_byte_order_mark_reads_and_one_in_utf16_is_refused(tmp_path: Path) -> None:
    marked = tmp_path / "marked.toml"
    marked.write_bytes(b"\xef\xbb\xbf" + DEFAULT_TEXT.encode())
    assert load_spec(marked).content_hash == load_spec(DEFAULT_SPEC).content_hash
    wide = tmp_path / "wide.toml"
    wide.write_text(DEFAULT_TEXT, encoding="utf-16")
    with pytest.raises(SpecError, match=r"wide\.toml.*not UTF-8 text"):
        load_spec(wide)


def test_a_rank_correlation_that_is_undefined_is_null_in_json_and_said_in_the_table(tmp_path: Path) -> None:
    # One employee a month: the ranks do not vary, DuckDB's corr() is NaN, and `--format json`
    # wrote NaN, which no strict JSON parser (jq, a browser's) takes; the table said "nan".
    folder = tmp_path / "demo"
    run_cli("demo", "--dir", str(folder), "--customers", "3", "--employees", "1", "--months", "1", check=True)
    env = {"CRM_LEDGER_STORE": str(folder / "ledger.sqlite"), "CRM_LEDGER_DB": str(folder / "projections.duckdb")}
    run_cli("replay", "--metrics", str(weights_only(tmp_path)), "--name", "weights", env=env, check=True)
    shown = run_cli("diff", "default", "weights", "--format", "json", env=env, check=True)

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is no JSON")

    summary = json.loads(shown.stdout, parse_constant=refuse)["summary"]
    assert summary["rows_compared"] == 1 and summary["spearman_rank_correlation"] is None
    table = run_cli("diff", "default", "weights", env=env, check=True)
    assert "Spearman rank correlation undefined (the ranks do not vary)" in table.stdout


def test_a_stop_during_a_full_build_interrupts_it_and_a_rerun_builds_it(
    ledger: LedgerApplication, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during a build (one long transaction, no batch boundary) stops it there: the
    replay says "interrupted" instead of finishing as if never asked, and the rerun builds it."""
    from projections.maintain import Maintainer

    asked = threading.Event()
    update = Maintainer.update

    def asked_during_the_build(self: Maintainer, **kwargs: Any) -> Any:
        asked.set()  # as a Ctrl-C while the build's statements run
        return update(self, **kwargs)

    monkeypatch.setattr(Maintainer, "update", asked_during_the_build)
    stopped = replay(settings, strict_csat(tmp_path), "ledger", full=True, should_stop=asked.is_set)
    assert stopped.mode == "interrupted"
    assert "run the same command again" in stopped.message()
    with ProjectionDB(settings.projections_db) as db:
        assert db.find_version(stopped.version).built_at is None  # nothing of the build committed
    monkeypatch.setattr(Maintainer, "update", update)
    rerun = replay(settings, strict_csat(tmp_path), "ledger", full=True)
    assert (rerun.mode, rerun.version) == ("full", stopped.version)
