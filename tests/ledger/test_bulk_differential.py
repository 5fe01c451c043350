"""Differential test: the bulk write path and the eventsourcing path give the same ledger.

The same runs (a generated history with invalid records, shuffled; hostile lines; duplicates,
conflicts, re-registrations, forgetting; a CSV file) go through `ingest_records` with
`bulk=False` (aggregates and events of eventsourcing) and `bulk=True` (`ledger.bulk`), through
both alternately, and through the bulk path as a large file takes it (parsed and its
messages prepared in worker processes, sorted in runs spilled to disk), and through the bulk
path with a cache of a few aggregates (evicted and read back from the store all the time).
Every bulk run writes each decided batch in a thread of its own while the next batch is
decided (`ledger.write_behind`), and `bulk-process` in a writing process as large runs do
(`ledger.write_process`, started as in use, for every batch whatever its size); with the
small batch sizes below, duplicates, forgotten customers and surveys of interactions often
land in the batch after one still being written. Each first run goes into an empty store,
where the bulk path does not ask the event-id index about each fact (`BulkWriter.fresh_store`).
Every stored event must be the same, byte for byte apart from
`recorded_at` and the nonces of ciphertexts, in the same order under the same originator and
version; the rejects files and the summaries must be identical; personal-data keys must
exist for the same customers.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crm_ledger.settings import Settings
from importers.generator import GeneratorConfig, write_history
from ledger import bulk, ingest, parse_workers
from ledger.application import LedgerApplication
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from ledger.vault import PERSONAL_FIELDS
from tests.factory import basics, rec
from tests.postgres_server import create_database

NOW_MS = 1_900_000_000_000  # the parser's clock, fixed: both paths judge "the future" alike


def _runs(tmp_path: Path, seed: int) -> list[Path]:
    """Input files of consecutive runs, each with valid, invalid and hostile records."""
    history = tmp_path / "history.jsonl"
    with history.open("w") as handle:
        config = GeneratorConfig(customers=70, employees=8, months=2, seed=seed, invalid_rate=0.03)
        write_history(config, handle)
    lines = history.read_bytes().splitlines()
    shuffled = lines[:]
    random.Random(seed).shuffle(shuffled)
    interaction = rec(
        "InteractionRecorded", customer_id="c1", employee_id="e1", channel="chat", direction="inbound"
    )
    hostile = [
        b'{"a": ' * 50 + b"1" + b"}" * 50,
        json.dumps(interaction)[:-1].encode() + b', "channel": "web"}',
        json.dumps({**interaction, "duration_s": "60"}).encode(),
        json.dumps(interaction).encode().replace(b'"chat"', b'"ch\xffat"'),
        json.dumps({**interaction, "duration_s": 1e400}).encode(),
        json.dumps(
            rec(
                "InteractionRecorded",
                "2990-01-01T00:00:00Z",
                customer_id="c1",
                channel="chat",
                direction="inbound",
            )
        ).encode(),
        json.dumps(
            rec(
                "InteractionRecorded", customer_id="c1", channel="chat", direction="inbound", topic="x" * 5000
            )
        ).encode(),
        b"\x00\x01\x02",
        b"[1, 2]",
        b'{"type": "InteractionRecorded", "event_id": "' + b"9" * 3000 + b'"}',
    ]
    setup = [json.dumps(r).encode() for r in basics()]
    first = tmp_path / "first.jsonl"
    first.write_bytes(
        b"\n".join(shuffled[: 3 * len(shuffled) // 4] + hostile + setup + [json.dumps(interaction).encode()])
        + b"\n"
    )

    # The rest, an overlap of the first (duplicates), twins with changed content (conflicts),
    # an id reused for another entity, a re-registration, a forget and what follows it.
    records = [json.loads(line) for line in lines[:40] if line.startswith(b"{")]
    twins = [{**r, "occurred_at": "2020-01-01T00:00:00Z"} for r in records[:5]]
    reused = {
        **rec("EmployeeJoined", employee_id="e-new", team_id="t1", role="agent"),
        "event_id": records[6]["event_id"],
    }
    customer = next(r for r in records if r.get("type") == "CustomerRegistered")
    later = [
        rec(
            "CustomerRegistered",
            "2026-01-02T00:00:00Z",
            customer_id=customer["customer_id"],
            segment="smb",
            region="n",
        ),
        rec(
            "CustomerDetailsChanged",
            "2026-03-01T00:00:00Z",
            customer_id="c1",
            name="Bo Second",
            email="b2@example.com",
        ),
        rec("CustomerForgotten", "2026-03-02T00:00:00Z", customer_id="c1", reason="erasure"),
        rec("CustomerDetailsChanged", "2026-03-03T00:00:00Z", customer_id="c1", name="Too Late"),
        rec(
            "SurveyAnswered",
            "2026-03-04T00:00:00Z",
            customer_id="c1",
            interaction_id=interaction["event_id"],
            csat=5,
        ),
        rec(
            "SurveyAnswered",
            "2026-03-04T00:00:00Z",
            customer_id="c1",
            interaction_id=str(uuid.uuid4()),
            csat=5,
        ),
    ]
    second = tmp_path / "second.jsonl"
    body = shuffled[len(shuffled) // 2 :] + [json.dumps(r).encode() for r in [*twins, reused, *later]]
    second.write_bytes(b"\n".join(body) + b"\n")

    csv_path = tmp_path / "third.csv"
    columns = [
        "type",
        "event_id",
        "occurred_at",
        "customer_id",
        "employee_id",
        "channel",
        "direction",
        "duration_s",
    ]
    rows = [
        [
            "InteractionRecorded",
            str(uuid.UUID(int=seed * 1000 + i)),
            f"2026-02-0{1 + i % 9}T10:00:00Z",
            "c1",
            "e1",
            "phone",
            "inbound",
            str(i * 10),
        ]
        for i in range(12)
    ]
    rows.append(
        ["InteractionRecorded", "not-a-uuid", "2026-02-01T10:00:00Z", "c1", "e1", "phone", "inbound", "5"]
    )
    rows.append(
        [
            "InteractionRecorded",
            str(uuid.uuid4()),
            "2026-02-01T10:00:00Z",
            "c1",
            "e1",
            "pigeon",
            "inbound",
            "5",
        ]
    )
    csv_path.write_text("\n".join(",".join(r) for r in [columns, *rows]) + "\n")
    return [first, second, csv_path, first]


def _store(kind: str, tmp_path: Path, name: str, request: pytest.FixtureRequest) -> str:
    if kind == "postgres":
        return create_database(
            request.getfixturevalue("postgres_server"), f"diff_{name}_{uuid.uuid4().hex[:8]}"
        )
    return str(tmp_path / f"{name}.sqlite")


def _ingest_all(store: str, runs: list[Path], paths: Iterator[bool], rejects: Path) -> tuple[list[Any], Any]:
    app = LedgerApplication(Settings(store=store).eventsourcing_env())
    parser = RecordParser(app.registry, now_ms=NOW_MS)
    summaries = []
    for index, run in enumerate(runs):
        sink = RejectSink(rejects, echo=None)
        try:
            summary = ingest_records(
                app, read_file(run, parser), sink, batch_size=(53, 2000, 7, 500)[index], bulk=next(paths)
            )
        finally:
            sink.close()
        summaries.append(summary)
    return summaries, app


def _content(app: LedgerApplication) -> tuple[list[tuple[str, int, str, bytes]], list[str]]:
    """Every stored row, its state re-encoded with recorded_at zeroed and plaintext personal fields."""
    rows = []
    for notification in app.read_notifications(1, 10_000_000):
        event_type, record = app.codec.decode(notification.state)
        # The stored bytes are canonical Avro: comparing re-encoded records compares bytes.
        assert app.codec.encode(event_type, record) == notification.state
        record["recorded_at"] = 0
        for name in PERSONAL_FIELDS.get(event_type, ()):
            record[name] = app.vault.reveal(record["customer_id"], record[name])
        originator = uuid.UUID(str(notification.originator_id)).hex
        rows.append(
            (
                originator,
                notification.originator_version,
                notification.topic,
                app.codec.encode(event_type, record),
            )
        )
    with app.recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
        cursor.execute("SELECT customer_id FROM crm_customer_keys ORDER BY customer_id")
        keys = [str(row["customer_id"]) for row in cursor.fetchall()]
    return rows, keys


@pytest.mark.parametrize("seed", [5, 23])
def test_bulk_and_eventsourcing_paths_store_the_same_ledger(
    store_kind: str,
    seed: int,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = _runs(tmp_path, seed)
    results = {}
    choices = {
        "aggregates": [False] * 4,
        "bulk": [True] * 4,
        "alternating": [True, False, True, False],
        "bulk-workers": [True] * 4,
        "bulk-small-cache": [True] * 4,
        "bulk-process": [True] * 4,
    }
    for name, chosen in choices.items():
        store = _store(store_kind, tmp_path, name, request)
        with monkeypatch.context() as patch:
            if name in ("bulk-workers", "bulk-process"):
                # As a large file is read: parsed (and its messages prepared) in worker
                # processes, sorted in runs spilled to disk.
                patch.setattr(ingest, "PARALLEL_PARSE_BYTES", 0)
                patch.setattr(ingest, "SORT_RUN_SIZE", 97)
                patch.setattr(parse_workers, "BLOCK_BYTES", 4096)
            if name == "bulk-process":
                # Every batch written by the writing process, as a large run's are.
                patch.setattr(ingest, "WRITE_PROCESS_RECORDS", 0)
            if name == "bulk-small-cache":
                # Aggregates evicted (least recently used first) and read back all the time.
                patch.setattr(bulk, "CACHED_AGGREGATES", 7)
            summaries, app = _ingest_all(store, runs, iter(chosen), tmp_path / f"{name}.rejects")
        results[name] = (summaries, _content(app), (tmp_path / f"{name}.rejects").read_text())
        app.close()
    expected = results["aggregates"]
    (summaries, (rows, keys), rejects) = expected
    assert (
        len(rows) > 300
        and summaries[0].rejected > 10
        and summaries[1].conflicts >= 5
        and summaries[1].duplicates > 20
    )
    assert summaries[3].duplicates > 0 and keys
    for name in ("bulk", "alternating", "bulk-workers", "bulk-small-cache", "bulk-process"):
        got = results[name]
        assert got[0] == expected[0], name  # summaries of every run
        assert got[1][0] == rows, name  # stored events, in notification order
        assert got[1][1] == keys, name  # personal-data keys
        assert got[2] == rejects, name  # the rejects file, entry for entry
