"""Auditors: tamper detection in every copy, read-only queries, explain totals."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from audit.verify import ChainEntry, kafka_entries, mirror_entries, store_entries, verify
from crm_ledger.kafka import consumer_config
from crm_ledger.settings import Settings, log_root
from importers.generator import GeneratorConfig, write_history
from ledger.application import LedgerApplication
from ledger.chain import GENESIS, next_link
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from ledger.relay import Relay, RelayConfig
from projections.errors import QueryRefusedError
from projections.log import DecodedLog, register_logs
from projections.readonly import reader, run_query
from projections.service import project_promoted
from projections.store import ProjectionDB
from tests.factory import rec
from tests.helpers import assert_gives_up_on_a_missing_broker, run_cli, start_cli, wait_for


@pytest.fixture
def audited(settings: Settings, tmp_path: Path) -> LedgerApplication:
    history = tmp_path / "h.jsonl"
    with history.open("w") as handle:
        write_history(GeneratorConfig(customers=150, employees=8, months=2, seed=6), handle)
    app = LedgerApplication(settings.eventsourcing_env())
    ingest_records(app, read_file(history, RecordParser(app.registry)), RejectSink(None, echo=None))
    project_promoted(settings, "ledger", None, follow=False)
    return app


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    return {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db), **extra}


def test_clean_ledger_verifies(audited: LedgerApplication, settings: Settings) -> None:
    result = run_cli("audit", "verify", env=env_of(settings, CRM_LEDGER_BOOTSTRAP="127.0.0.1:1"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all copies agree" in result.stdout


def test_an_unreachable_broker_asked_for_by_name_is_one_line(
    audited: LedgerApplication, settings: Settings
) -> None:
    env = env_of(settings)
    assert_gives_up_on_a_missing_broker("audit", "verify", "--source", "kafka", env=env, what="auditing")
    assert_gives_up_on_a_missing_broker(
        "audit", "head", "--publish", env=env, what="publishing the checkpoint"
    )


def test_altered_payload_in_the_store_is_found(audited: LedgerApplication, settings: Settings) -> None:
    victim = 17
    with sqlite3.connect(settings.store) as con:
        state = con.execute("SELECT state FROM stored_events WHERE rowid = ?", [victim]).fetchone()[0]
        tampered = state[:-1] + bytes([state[-1] ^ 0x01])
        con.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", [tampered, victim])
    with reader(settings.projections_db) as con:
        report = verify(store_entries(audited), {"mirror": mirror_entries(con)})
    altered = [f for f in report.findings if f.kind == "altered"]
    assert [(f.copy, f.notification_id) for f in altered] == [("ledger", victim)]
    cli = run_cli("audit", "verify", "--source", "ledger", "--source", "mirror", env=env_of(settings))
    assert cli.returncode == 1 and f"notification {victim}" in cli.stdout


def test_deleted_mirror_row_is_found(audited: LedgerApplication, settings: Settings) -> None:
    with reader(settings.projections_db) as con:
        victim, event_id = con.execute(
            "SELECT notification_id, event_id FROM ledger_events ORDER BY notification_id LIMIT 1 OFFSET 40"
        ).fetchone()
    # The mirror is the shared decoded log (a Delta table): tamper with it there.
    DecodedLog(log_root(settings.projections_db) / "ledger").table().delete(f"notification_id = {victim}")
    with reader(settings.projections_db) as con:
        report = verify(store_entries(audited), {"mirror": mirror_entries(con)})
    missing = [f for f in report.findings if f.kind == "missing"]
    assert [(f.copy, f.notification_id, f.event_id) for f in missing] == [("mirror", victim, event_id)]


def test_a_mirror_behind_the_ledger_is_one_finding_that_says_so(
    audited: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    """Events ingested and not projected yet: the mirror is behind, not missing rows."""
    late = [rec("CustomerRegistered", customer_id=f"late-{i}", segment="smb", region="north") for i in range(3)]
    history = tmp_path / "late.jsonl"
    history.write_text("".join(json.dumps(r) + "\n" for r in late))
    assert run_cli("ingest", str(history), env=env_of(settings)).returncode == 0
    checked = run_cli("audit", "verify", "--source", "ledger", "--source", "mirror", env=env_of(settings))
    problems = [line for line in checked.stdout.splitlines() if line.startswith("PROBLEM")]
    assert checked.returncode == 1 and len(problems) == 1, checked.stdout
    assert problems[0].startswith("PROBLEM behind in mirror") and "the ledger holds 3 more" in problems[0]
    run_cli("project", env=env_of(settings), check=True)
    assert run_cli("audit", "verify", "--source", "ledger", "--source", "mirror", env=env_of(settings)).returncode == 0


@pytest.mark.kafka
def test_duplicated_record_in_the_topic_is_found(
    audited: LedgerApplication, settings: Settings, kafka_bootstrap: str, topic: str
) -> None:
    Relay(audited, RelayConfig(kafka_bootstrap, topic, partitions=2, transactional_id=f"r-{topic}")).run()
    consumer = Consumer(consumer_config(kafka_bootstrap, f"copy-{topic}"))
    consumer.assign([TopicPartition(topic, 0, 3)])
    original = next(m for m in iter(lambda: consumer.poll(5), None) if m is not None and not m.error())
    consumer.close()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, original.value(), key=original.key(), headers=original.headers(), partition=0)
    producer.flush(30)
    report = verify(store_entries(audited), {"kafka": kafka_entries(kafka_bootstrap, topic)})
    duplicates = [f for f in report.findings if f.kind == "duplicate"]
    nid = int(dict(original.headers())["notification_id"])
    assert [(f.copy, f.notification_id) for f in duplicates] == [("kafka", nid)]
    cli = run_cli(
        "audit",
        "verify",
        "--source",
        "kafka",
        env=env_of(settings, CRM_LEDGER_BOOTSTRAP=kafka_bootstrap, CRM_LEDGER_TOPIC=topic),
    )
    assert cli.returncode == 1 and "duplicate in kafka" in cli.stdout


def test_query_is_read_only_by_construction(
    audited: LedgerApplication, settings: Settings, tmp_path: Path
) -> None:
    with reader(settings.projections_db) as con:
        for sql in (
            "INSERT INTO crm_promotions VALUES ('x', now())",
            "DROP TABLE crm_versions",
            f"ATTACH '{tmp_path / 'x.duckdb'}' AS x",
            f"COPY (SELECT 1) TO '{tmp_path / 'x.csv'}'",
            "SET enable_external_access = true",
        ):
            with pytest.raises(QueryRefusedError):
                run_query(con, sql)
    with reader(settings.projections_db) as con:
        assert con.execute("SELECT count(*) FROM crm_promotions").fetchone() == (1,)
    cli = run_cli("query", "UPDATE crm_versions SET name = 'x'", env=env_of(settings))
    assert cli.returncode == 1 and "read-only" in cli.stderr and "Traceback" not in cli.stderr
    out = tmp_path / "scores.parquet"
    ok = run_cli(
        "query", "SELECT * FROM reward_score", "--format", "parquet", "--out", str(out), env=env_of(settings)
    )
    assert ok.returncode == 0 and out.stat().st_size > 0
    rows = json.loads(
        run_cli(
            "query", "SELECT count(*) AS n FROM ledger_events", "--format", "json", env=env_of(settings)
        ).stdout
    )
    assert rows == [{"n": audited.max_position()}]
    odd = "SELECT 'nan'::DOUBLE AS a, 'inf'::DOUBLE AS b, 2.5::DOUBLE AS c"
    shown = run_cli("query", odd, "--format", "json", env=env_of(settings)).stdout
    # Valid JSON: no NaN or Infinity (json.loads would take them; parse_constant sees them).
    assert json.loads(shown, parse_constant=pytest.fail) == [{"a": None, "b": None, "c": 2.5}]
    # A value with a time zone (no read model has one, a user's own SQL may) in every text format.
    zoned = "SELECT TIMESTAMPTZ '2026-01-01 10:00:00+02' AS t, now() AS n"
    for form in ("table", "csv", "json"):
        shown_zoned = run_cli("query", zoned, "--format", form, env=env_of(settings))
        assert shown_zoned.returncode == 0 and "2026-01-01 08:00:00" in shown_zoned.stdout, shown_zoned.stderr
    # export: every stable read model, each file whole; nothing but files it names.
    folder = tmp_path / "export"
    exported = run_cli("export", "--parquet", str(folder), env=env_of(settings))
    assert exported.returncode == 0, exported.stderr
    written = sorted(line.removeprefix("wrote ") for line in exported.stdout.splitlines())
    assert written == sorted(str(p) for p in folder.iterdir()) and str(folder / "reward_score.parquet") in written
    empty = run_cli("export", "--parquet", "", env=env_of(settings))
    assert empty.returncode == 2 and "is empty" in empty.stderr
    unpromoted = tmp_path / "unpromoted.duckdb"
    ProjectionDB(unpromoted).close()
    refused = run_cli("export", "--parquet", str(tmp_path / "none"), env={"CRM_LEDGER_DB": str(unpromoted)})
    assert refused.returncode == 1 and "no version promoted yet" in refused.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_query_works_while_a_follower_projects(audited: LedgerApplication, settings: Settings) -> None:
    follower = start_cli("project", "--follow", "--refresh-interval", "0.2", env=env_of(settings))
    try:
        wait_for(lambda: follower.poll() is None, timeout_s=5)
        for _ in range(3):
            result = run_cli(
                "query", "SELECT count(*) FROM reward_score", "--format", "csv", env=env_of(settings)
            )
            assert result.returncode == 0, result.stderr
        assert follower.poll() is None, "the follower keeps running"
    finally:
        follower.terminate()
        follower.wait(timeout=30)


def test_explain_totals_equal_the_score(audited: LedgerApplication, settings: Settings) -> None:
    with reader(settings.projections_db) as con:
        rows = con.execute(
            "SELECT employee_id, period, score FROM reward_score ORDER BY score DESC LIMIT 5"
        ).fetchall()
    for employee, period, score in rows:
        result = run_cli(
            "explain", "--employee", employee, "--period", period, "--format", "json", env=env_of(settings)
        )
        assert result.returncode == 0, result.stderr
        payload = json.loads(result.stdout)
        assert payload["score"] == pytest.approx(score, abs=1e-9)
        assert payload["components_total"] == pytest.approx(score, abs=1e-9)
        assert payload["evidence"], "the events behind the KPIs are listed"
        ids = {e["event_id"] for events in payload["evidence"].values() for e in events}
        with reader(settings.projections_db) as con:
            known = {r[0] for r in con.execute("SELECT event_id FROM ledger_events").fetchall()}
        assert ids <= known
    unknown = run_cli("explain", "--employee", "nobody", "--period", "2025-01", env=env_of(settings))
    assert unknown.returncode == 1 and "nobody" in unknown.stderr
    bad = run_cli("explain", "--employee", "emp-0001", "--period", "January", env=env_of(settings))
    assert bad.returncode == 2
    # --version takes what promote, drop and diff take: an id, a unique id prefix or a name.
    employee, period, _ = rows[0]
    with reader(settings.projections_db) as con:
        promoted = "SELECT v.version, v.name FROM crm_versions v JOIN crm_promoted p USING (version)"
        version, name = con.execute(promoted).fetchone()
    asked = ["explain", "--employee", employee, "--period", period, "--format", "json", "--version"]
    for reference in (version, version.removeprefix("v_")[:6], name):
        named = run_cli(*asked, reference, env=env_of(settings))
        assert named.returncode == 0, named.stderr
        assert json.loads(named.stdout)["score"] == pytest.approx(rows[0][2], abs=1e-9)
    nope = run_cli(*asked, "nope", env=env_of(settings))
    assert nope.returncode == 1 and "unknown version 'nope'" in nope.stderr


@pytest.mark.kafka
def test_forgotten_customer_is_unreadable_everywhere_and_the_chain_holds(
    settings: Settings, tmp_path: Path, kafka_bootstrap: str, topic: str
) -> None:
    from tests.factory import rec

    app = LedgerApplication(settings.eventsourcing_env())
    records = [
        rec(
            "CustomerRegistered",
            "2026-01-01T00:00:00Z",
            customer_id="c9",
            segment="smb",
            region="north",
            name="Greta Example",
            email="greta@example.com",
        ),
        rec("EmployeeJoined", "2026-01-01T00:00:00Z", employee_id="e9", team_id="t9", role="agent"),
        rec(
            "InteractionRecorded",
            "2026-01-02T00:00:00Z",
            customer_id="c9",
            employee_id="e9",
            channel="phone",
            direction="inbound",
        ),
        rec(
            "CustomerDetailsChanged", "2026-01-03T00:00:00Z", customer_id="c9", email="greta@new.example.com"
        ),
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    ingest_records(app, read_file(path, RecordParser(app.registry)), RejectSink(None, echo=None))
    env = env_of(settings, CRM_LEDGER_BOOTSTRAP=kafka_bootstrap, CRM_LEDGER_TOPIC=topic)
    shown = run_cli("customer", "show", "c9", env=env)
    assert "Greta Example" in shown.stdout and "greta@new.example.com" in shown.stdout
    forget = tmp_path / "f.jsonl"
    forget.write_text(json.dumps(rec("CustomerForgotten", "2026-02-01T00:00:00Z", customer_id="c9")) + "\n")
    assert (
        ingest_records(
            app, read_file(forget, RecordParser(app.registry)), RejectSink(None, echo=None)
        ).accepted
        == 1
    )
    Relay(app, RelayConfig(kafka_bootstrap, topic, partitions=1, transactional_id=f"r-{topic}")).run()
    project_promoted(settings, "ledger", None, follow=False)

    secrets = (b"Greta", b"greta@", b"example.com")
    with sqlite3.connect(settings.store) as con:
        stored = b"".join(row[0] for row in con.execute("SELECT state FROM stored_events"))
    kafka_bytes = b"".join(e.value for e in kafka_entries(kafka_bootstrap, topic))
    with reader(settings.projections_db) as con:
        mirror = b"".join(
            bytes(v) + p.encode()
            for v, p in con.execute("SELECT value, payload FROM ledger_events").fetchall()
        )
    for secret in secrets:
        assert secret not in stored and secret not in kafka_bytes and secret not in mirror
    shown = run_cli("customer", "show", "c9", env=env)
    assert "Greta" not in shown.stdout and "[forgotten]" in shown.stdout
    verified = run_cli(
        "audit", "verify", "--source", "ledger", "--source", "mirror", "--source", "kafka", env=env
    )
    assert verified.returncode == 0, verified.stdout
    with reader(settings.projections_db) as con:
        assert con.execute(
            "SELECT interactions_total, forgotten FROM customer_profile WHERE customer_id = 'c9'"
        ).fetchone() == (1, True)


def _tamper(settings: Settings, notification_id: int, values: dict[str, Any]) -> None:
    """Change decoded columns of one row of the mirror (the shared decoded log, a Delta table)."""
    log = DecodedLog(log_root(settings.projections_db) / "ledger")
    log.table().update(new_values=values, predicate=f"notification_id = {notification_id}")


def test_altered_decoded_columns_are_found(audited: LedgerApplication, settings: Settings) -> None:
    with reader(settings.projections_db) as con:
        nid, event_id, csat = con.execute(
            "SELECT notification_id, event_id, csat FROM ledger_events "
            "WHERE event_type = 'SurveyAnswered' AND csat < 5 ORDER BY notification_id LIMIT 1"
        ).fetchone()
        moved, occurred_at = con.execute(
            "SELECT notification_id, occurred_at FROM ledger_events WHERE event_type = 'CaseResolved' "
            "ORDER BY notification_id LIMIT 1"
        ).fetchone()
    _tamper(settings, nid, {"csat": 5})
    _tamper(settings, moved, {"occurred_at": occurred_at - timedelta(days=40), "employee_id": "emp-0001"})
    clean_chain = run_cli("audit", "verify", "--source", "ledger", env=env_of(settings))
    assert clean_chain.returncode == 0, "the bytes and the chain are untouched"
    result = run_cli("audit", "verify", "--source", "ledger", "--source", "mirror", env=env_of(settings))
    assert result.returncode == 1, result.stdout
    assert (
        f"PROBLEM decoded in mirror: notification {nid}, event {event_id} (ledger_events (ledger)): "
        f"column csat: stored '5', decoded from value '{csat}'"
    ) in result.stdout
    assert f"PROBLEM decoded in mirror: notification {moved}," in result.stdout
    assert "column occurred_at: stored" in result.stdout and "column employee_id: stored 'emp-0001'" in result.stdout
    assert "altered" not in result.stdout and "chain" not in result.stdout.split("chain head")[1]


def test_altered_payload_column_is_found(audited: LedgerApplication, settings: Settings) -> None:
    with reader(settings.projections_db) as con:
        nid, payload = con.execute(
            "SELECT notification_id, payload::VARCHAR FROM ledger_events "
            "WHERE event_type = 'SurveyAnswered' AND nps < 10 ORDER BY notification_id LIMIT 1"
        ).fetchone()
    _tamper(settings, nid, {"payload": json.dumps({**json.loads(payload), "nps": 10})})
    result = run_cli("audit", "verify", "--source", "ledger", "--source", "mirror", env=env_of(settings))
    assert result.returncode == 1 and "column payload: stored" in result.stdout
    assert "decoded columns: " in result.stdout


def test_an_audit_of_a_store_that_does_not_exist_is_refused_and_creates_none(tmp_path: Path) -> None:
    missing = tmp_path / "typo.sqlite"
    env = {"CRM_LEDGER_STORE": str(missing), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    for command in (["audit", "verify"], ["audit", "head"]):
        result = run_cli(*command, env=env)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [f"error: {missing}: no such ledger store (CRM_LEDGER_STORE or --store names the one to read)"]
    assert not missing.exists()


def test_an_event_copied_under_a_new_notification_is_a_duplicate_in_every_copy() -> None:
    """The same event id at two notifications: each copy's chain is consistent, yet one fact is twice."""
    store = [ChainEntry(1, "e-1", b"one", None, "row 1"), ChainEntry(2, "e-2", b"two", None, "row 2")]
    store.append(ChainEntry(3, "e-1", b"one", None, "row 3"))
    chain = GENESIS
    mirror = []
    for entry in store:
        chain = next_link(chain, entry.value)
        mirror.append(ChainEntry(entry.notification_id, entry.event_id, entry.value, chain.hex(), "mirror"))
    report = verify(store, {"mirror": mirror})
    assert [(f.kind, f.copy, f.notification_id, f.event_id) for f in report.findings] == [
        ("duplicate", "ledger", 3, "e-1"),
        ("duplicate", "mirror", 3, "e-1"),
    ]
    assert "already held at notification 1" in report.findings[0].detail


def test_a_stored_event_copied_in_behind_the_ledger_is_found_after_projecting(
    audited: LedgerApplication, settings: Settings
) -> None:
    """A row copied into the store (and projected) passes the chain checks; the repeated event id does not."""
    with sqlite3.connect(settings.store) as con:
        con.execute(
            "INSERT INTO stored_events (originator_id, originator_version, topic, state) "
            "SELECT originator_id, originator_version + 1000, topic, state FROM stored_events WHERE rowid = 30"
        )
        copied = con.execute("SELECT max(rowid) FROM stored_events").fetchone()[0]
    run_cli("project", env=env_of(settings), check=True)
    checked = run_cli("audit", "verify", "--source", "ledger", "--source", "mirror", env=env_of(settings))
    problems = [line for line in checked.stdout.splitlines() if line.startswith("PROBLEM")]
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert [p.split(":")[0] for p in problems] == [
        "PROBLEM duplicate in ledger",
        "PROBLEM duplicate in mirror",
        "PROBLEM index in ledger",  # the copied row has no index row of its own
    ]
    assert all(f"notification {copied}," in p for p in problems)
    assert all("already held at notification 30" in p for p in problems[:2])


def test_an_event_id_index_that_disagrees_with_the_stored_events_is_found(
    audited: LedgerApplication, settings: Settings
) -> None:
    """The index decides what an ingest takes for "already recorded" and the chain does not
    cover it: a row removed, or one added under another id for a stored event, passed."""
    with sqlite3.connect(settings.store) as con:
        oid, version = con.execute(
            "SELECT originator_id, originator_version FROM stored_events WHERE rowid = 25"
        ).fetchone()
        con.execute(
            "DELETE FROM crm_event_ids WHERE originator_id = ? AND originator_version = ?", [oid, version]
        )
        oid, version = con.execute(
            "SELECT originator_id, originator_version FROM stored_events WHERE rowid = 40"
        ).fetchone()
        con.execute("INSERT INTO crm_event_ids VALUES ('alias-of-40', ?, ?)", [oid, version])
        con.execute("INSERT INTO crm_event_ids VALUES ('nowhere', ?, 999)", [oid])
    checked = run_cli("audit", "verify", "--source", "ledger", env=env_of(settings))
    problems = [line for line in checked.stdout.splitlines() if line.startswith("PROBLEM")]
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert all(p.startswith("PROBLEM index in ledger:") for p in problems), problems
    assert [p.split("(crm_event_ids): ")[1] for p in problems] == [
        "1 stored event(s) missing from the event-id index",
        "1 event-id index row(s) naming no stored event",
        "2 event-id index row(s) naming a stored event another row names too",
    ]
    assert "notification 25," in problems[0] and "event nowhere" in problems[1]
    assert "notification 40," in problems[2]


def test_an_altered_log_hidden_behind_a_rewritten_stored_view_is_found(
    audited: LedgerApplication, settings: Settings
) -> None:
    """`ledger_events` is a view stored in the projection file: rewritten there to show the
    original CSAT of an answer altered in the log, the decoded-column check read the view and
    passed, while the read models are built from the log."""
    with reader(settings.projections_db) as con:
        nid, csat = con.execute(
            "SELECT notification_id, csat FROM ledger_events "
            "WHERE event_type = 'SurveyAnswered' AND csat < 5 ORDER BY notification_id LIMIT 1"
        ).fetchone()
    _tamper(settings, nid, {"csat": 5})
    with duckdb.connect(str(settings.projections_db)) as con:
        register_logs(con, log_root(settings.projections_db), ["ledger"])
        view = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'ledger_events'").fetchone()[0]
        hiding = f", CASE WHEN notification_id = {nid} THEN {csat} ELSE csat END AS csat,"
        con.execute(view.replace("CREATE VIEW", "CREATE OR REPLACE VIEW").replace(", csat,", hiding))
        shown = con.execute(f"SELECT csat FROM ledger_events WHERE notification_id = {nid}").fetchone()
        assert shown == (csat,)
    result = run_cli("audit", "verify", "--source", "ledger", "--source", "mirror", env=env_of(settings))
    assert result.returncode == 1, result.stdout
    assert f"PROBLEM decoded in mirror: notification {nid}," in result.stdout
    assert f"column csat: stored '5', decoded from value '{csat}'" in result.stdout
