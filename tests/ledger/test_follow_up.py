"""FollowUpScheduled, the event type added as the worked example of docs/event-types.md."""

from __future__ import annotations

import json
from pathlib import Path

from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from ledger.relay import message_key
from tests.factory import basics, rec
from tests.helpers import ledger_content, run_cli


def _file(tmp_path: Path, records: list[dict[str, object]]) -> Path:
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_follow_up_is_a_checked_fact_keyed_by_its_customer(app: LedgerApplication, tmp_path: Path) -> None:
    good = rec("FollowUpScheduled", customer_id="c1", employee_id="e1", due_at="2026-01-12T09:00:00Z", channel="phone")
    early = rec("FollowUpScheduled", customer_id="c1", employee_id="e1", due_at="2026-01-09T09:00:00Z", channel="phone")
    stranger = rec("FollowUpScheduled", customer_id="nobody", employee_id="e1", due_at="2026-01-12T09:00:00Z", channel="email")
    rejects = tmp_path / "rejects.jsonl"
    sink = RejectSink(rejects, echo=None)
    path = _file(tmp_path, [*basics(), good, early, stranger])
    summary = ingest_records(app, read_file(path, RecordParser(app.registry)), sink)
    sink.close()
    assert (summary.accepted, summary.rejected) == (6, 2)
    assert [json.loads(line)["field"] for line in rejects.read_text().splitlines()] == ["due_at", "customer_id"]
    event_type, record = ledger_content(app)[-1]
    assert event_type == "FollowUpScheduled" and record["event_id"] == good["event_id"]
    assert message_key(record) == b"c1"


def test_a_follow_up_goes_through_the_whole_pipeline(tmp_path: Path) -> None:
    env = {"CRM_LEDGER_STORE": str(tmp_path / "l.sqlite"), "CRM_LEDGER_DB": str(tmp_path / "p.duckdb")}
    follow_up = rec("FollowUpScheduled", customer_id="c1", employee_id="e1", due_at="2026-01-12T09:00:00Z", channel="phone")
    run_cli("ingest", str(_file(tmp_path, [*basics(), follow_up])), env=env, check=True)
    run_cli("project", env=env, check=True)
    result = run_cli(
        "query", "SELECT count(*) FROM ledger_events WHERE event_type = 'FollowUpScheduled'", "--format", "csv", env=env
    )
    assert result.stdout.splitlines()[1] == "1"
