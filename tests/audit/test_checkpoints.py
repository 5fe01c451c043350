"""Checkpoints outside the ledger, and statements bound to the log."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from confluent_kafka import Producer

from crm_ledger.settings import Settings, log_root
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.checkpoints import CADENCE, PERIOD_CLOSE, chain_at, read_published
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from projections.service import project_promoted
from rewards.periods import close_period
from tests.factory import basics
from tests.helpers import run_cli

PERIOD = "2025-01"


@pytest.fixture
def closed(settings: Settings, tmp_path: Path) -> LedgerApplication:
    """A small ledger, projected, with January closed."""
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=120, employees=6, months=2, seed=11), handle)
    app = LedgerApplication(settings.eventsourcing_env())
    ingest_records(app, read_file(history, RecordParser(app.registry)), RejectSink(None, echo=None))
    project_promoted(settings, "ledger", None, follow=False)
    close_period(settings, PERIOD)
    project_promoted(settings, "ledger", None, follow=False)  # the mirror holds the close too
    return app


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    return {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db), **extra}


def _statement_file(settings: Settings, tmp_path: Path, fmt: str = "json") -> Path:
    app = LedgerApplication(settings.eventsourcing_env())
    facts = app.period_facts(PERIOD)
    employee = next(f.data["employee_id"] for f in facts if f.event_type == "RewardStatementIssued")
    out = tmp_path / f"statement.{fmt}"
    result = run_cli(
        "statement", "--employee", employee, "--period", PERIOD, "--format", fmt, "--out", str(out),
        env=env_of(settings),
    )
    assert result.returncode == 0, result.stderr
    return out


def test_the_close_records_the_chain_head_and_statements_show_it(
    closed: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    period = closed.reward_period(PERIOD)
    assert period is not None and period.chain_head is not None
    assert period.chain_head == chain_at(closed, period.ledger_position).chain
    payload = json.loads(_statement_file(settings, tmp_path).read_text())
    assert payload["ledger_position"] == period.ledger_position
    assert payload["chain_head"] == period.chain_head
    page = _statement_file(settings, tmp_path, "html").read_text()
    assert period.chain_head in page and f"position at the close: {period.ledger_position}" in page
    verified = run_cli(
        "audit", "verify", "--statement", str(tmp_path / "statement.json"),
        env=env_of(settings, CRM_LEDGER_BOOTSTRAP="127.0.0.1:1"),
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "checkpoints checked: 1" in verified.stdout


def test_an_altered_statement_file_is_found(
    closed: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    path = _statement_file(settings, tmp_path)
    payload = json.loads(path.read_text())
    payload["score"] = payload["score"] + 5
    path.write_text(json.dumps(payload))
    result = run_cli(
        "audit", "verify", "--source", "ledger", "--statement", str(path), env=env_of(settings)
    )
    assert result.returncode == 1
    assert "PROBLEM statement in ledger" in result.stdout and "score: the file says" in result.stdout


def test_a_given_checkpoint_the_ledger_does_not_reach_is_found(
    closed: LedgerApplication, settings: Settings
) -> None:
    head = run_cli("audit", "head", env=env_of(settings))
    assert head.returncode == 0, head.stderr
    printed = head.stdout.split()[0]
    position, chain = printed.split(":")
    assert chain == chain_at(closed).chain and int(position) == closed.max_position()
    ok = run_cli("audit", "verify", "--source", "ledger", "--checkpoint", printed, env=env_of(settings))
    assert ok.returncode == 0, ok.stdout
    forged = f"{position}:{'0' * 64}"
    bad = run_cli("audit", "verify", "--source", "ledger", "--checkpoint", forged, env=env_of(settings))
    assert bad.returncode == 1 and "PROBLEM checkpoint in ledger: notification " + position in bad.stdout
    beyond = run_cli(
        "audit", "verify", "--source", "ledger", "--checkpoint", f"{int(position) + 5}:{chain}",
        env=env_of(settings),
    )
    assert beyond.returncode == 1 and "the ledger ends at notification" in beyond.stdout
    malformed = run_cli("audit", "verify", "--checkpoint", "12:xyz", env=env_of(settings))
    assert malformed.returncode == 1 and "POSITION:CHAIN" in malformed.stderr


def test_checkpoints_that_cannot_be_read_fail_the_audit(settings: Settings) -> None:
    """With no broker listening, `--checkpoints` checked only the period closes, said so in a
    note and ended "all copies agree" with exit 0: the topic's checkpoints were never read."""
    app = LedgerApplication(settings.eventsourcing_env())
    parser = RecordParser(app.registry, now_ms=1_900_000_000_000)
    assert {o.status for o in app.record([parser.parse(r, strict=True) for r in basics()])} == {"accepted"}
    env = env_of(settings, CRM_LEDGER_BOOTSTRAP="127.0.0.1:1")
    result = run_cli("audit", "verify", "--checkpoints", env=env)
    assert result.returncode == 75, (result.stdout, result.stderr)  # transient, as every unreachable broker
    assert "all copies agree" not in result.stdout and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: the checkpoints topic crm.ledger.checkpoints could not be read: Kafka at 127.0.0.1:1 is not "
        "reachable (Connection refused); start it, or leave out --checkpoints"
    ]
    # Without --checkpoints the broker is optional, as before.
    assert run_cli("audit", "verify", env=env).returncode == 0


def _kafka_env(settings: Settings, bootstrap: str, events: str, checkpoints: str) -> dict[str, str]:
    return env_of(
        settings,
        CRM_LEDGER_BOOTSTRAP=bootstrap,
        CRM_LEDGER_TOPIC=events,
        CRM_LEDGER_CHECKPOINTS_TOPIC=checkpoints,
        CRM_LEDGER_CHECKPOINT_EVERY="100",
        CRM_LEDGER_TRANSACTIONAL_ID=f"relay-{events}",
    )


@pytest.mark.kafka
def test_relay_publishes_checkpoints_and_a_deleted_one_is_missing(
    closed: LedgerApplication, settings: Settings, kafka_bootstrap: str, topic: str
) -> None:
    checkpoints = f"{topic}.checkpoints"
    env = _kafka_env(settings, kafka_bootstrap, topic, checkpoints)
    relayed = run_cli("relay", env=env)
    assert relayed.returncode == 0, relayed.stderr
    published = read_published(kafka_bootstrap, checkpoints, closed.codec)
    cadence = sorted(c.position for c in published if c.reason == CADENCE)
    assert cadence == list(range(100, closed.max_position() + 1, 100))
    assert [c.period for c in published if c.reason == PERIOD_CLOSE] == [PERIOD]
    ok = run_cli("audit", "verify", "--checkpoints", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"checkpoints checked: {len(published) + 1}" in ok.stdout  # plus the close's own head

    victim = next(c for c in published if c.reason == CADENCE and c.position == 300)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(checkpoints, key=victim.key.encode(), value=None)  # a tombstone
    producer.flush(30)
    missing = run_cli("audit", "verify", "--checkpoints", env=env)
    assert missing.returncode == 1
    assert "PROBLEM missing in checkpoints: notification 300" in missing.stdout

    head = run_cli("audit", "head", "--publish", env=env)
    assert head.returncode == 0 and f"published to {checkpoints}" in head.stderr
    manual = [c for c in read_published(kafka_bootstrap, checkpoints, closed.codec) if c.reason == "manual"]
    assert [(c.position, c.chain) for c in manual] == [(closed.max_position(), chain_at(closed).chain)]


@pytest.mark.kafka
def test_a_rewrite_of_store_mirror_and_topic_is_caught_by_a_checkpoint(
    closed: LedgerApplication, settings: Settings, kafka_bootstrap: str, topic: str
) -> None:
    checkpoints = f"{topic}.checkpoints"
    assert run_cli("relay", env=_kafka_env(settings, kafka_bootstrap, topic, checkpoints)).returncode == 0
    # The rewrite: one survey answer gets a better score in the store, with valid Avro...
    with sqlite3.connect(settings.store) as con:
        rows = con.execute("SELECT rowid, state FROM stored_events ORDER BY rowid").fetchall()
    victim, state = next(
        (rowid, bytes(state))
        for rowid, state in rows
        if closed.codec.decode(bytes(state))[0] == "SurveyAnswered"
        and closed.codec.decode(bytes(state))[1]["csat"] not in (None, 5)
    )
    _, record = closed.codec.decode(state)
    record["csat"] = 5
    version = closed.registry.by_id(closed.codec.schema_id(state))
    assert version is not None
    forged = closed.codec.encode_with(version, record)
    with sqlite3.connect(settings.store) as con:
        con.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", [forged, victim])
    # ...and a new topic and a new mirror are built from it, so every chain is consistent.
    rewritten_topic = f"{topic}.rewritten"
    env = _kafka_env(settings, kafka_bootstrap, rewritten_topic, checkpoints)
    for old in settings.projections_db.parent.glob(settings.projections_db.name + "*"):
        old.unlink()
    shutil.rmtree(log_root(settings.projections_db))  # the mirror: the shared decoded log
    projected = run_cli("project", env=env)
    assert projected.returncode == 0, projected.stderr
    relayed = run_cli("relay", env=env)
    assert relayed.returncode == 0, relayed.stderr
    consistent = run_cli("audit", "verify", env=env)
    assert consistent.returncode == 0, "a consistent rewrite passes the chain check alone:\n" + consistent.stdout
    caught = run_cli("audit", "verify", "--checkpoints", env=env)
    assert caught.returncode == 1, caught.stdout
    found = re.search(r"PROBLEM checkpoint in ledger: notification (\d+),.*rewritten at or before", caught.stdout)
    assert found is not None and int(found.group(1)) >= victim


def test_cadence_gaps_and_keys() -> None:
    from ledger.checkpoints import Checkpoint, cadence_gaps

    published = [Checkpoint(p, "a" * 64, reason=CADENCE, every=100) for p in (100, 200, 401)]
    assert list(cadence_gaps(published, 450)) == [300]
    assert list(cadence_gaps(published, 520)) == [300, 500]
    assert list(cadence_gaps([], 10_000)) == []
    first, forged = Checkpoint(200, "a" * 64, reason=CADENCE), Checkpoint(200, "b" * 64, reason=CADENCE)
    assert first.key != forged.key, "a recomputed head never replaces the original on a compacted topic"
    close = Checkpoint(180, "c" * 64, reason=PERIOD_CLOSE, period="2025-01")
    assert close.key == f"period-close:2025-01:180:{'c' * 64}"
