"""Key erasure that holds: forgotten keys' bytes are gone from the files that held them."""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from crm_ledger.settings import Settings
from ledger.application import LedgerApplication
from ledger.errors import KeyStoreError
from ledger.ingest import RejectSink, ingest_records, read_file
from ledger.records import RecordParser
from ledger.vault import FORGOTTEN
from tests.factory import rec
from tests.helpers import run_cli
from tests.postgres_server import PostgresServer, create_database

CUSTOMERS = 300
FORGET = ("c7", "c150", "c299")


def _ingest(app: LedgerApplication, records: list[dict[str, object]], path: Path) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = ingest_records(app, read_file(path, RecordParser(app.registry)), RejectSink(None, echo=None))
    assert summary.rejected == 0


def _register_customers(app: LedgerApplication, tmp_path: Path) -> None:
    _ingest(
        app,
        [
            rec(
                "CustomerRegistered",
                "2026-01-01T00:00:00Z",
                customer_id=f"c{i}",
                segment="smb",
                region="north",
                name=f"Person {i}",
                email=f"person{i}@example.com",
            )
            for i in range(CUSTOMERS)
        ],
        tmp_path / "customers.jsonl",
    )


def _forget(app: LedgerApplication, tmp_path: Path) -> None:
    _ingest(
        app,
        [rec("CustomerForgotten", "2026-02-01T00:00:00Z", customer_id=c) for c in FORGET],
        tmp_path / "forget.jsonl",
    )


def _keys(path: Path) -> dict[str, bytes]:
    with sqlite3.connect(path) as con:
        return {c: bytes(k) for c, k in con.execute("SELECT customer_id, key FROM crm_customer_keys")}


def _file_bytes(path: Path) -> bytes:
    """The database file and whatever write-ahead log or journal lies beside it."""
    found = b""
    for suffix in ("", "-wal", "-journal", "-shm"):
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            found += candidate.read_bytes()
    return found


def _assert_erased(app: LedgerApplication, keys: dict[str, bytes], key_file: Path) -> None:
    content = _file_bytes(key_file)
    for customer in FORGET:
        assert keys[customer] not in content, f"the key of {customer} survives in {key_file.name}"
        assert app.vault.reveal(customer, _name_of(app, customer)) == FORGOTTEN
    kept = [c for c in keys if c not in FORGET]
    assert all(keys[c] in content for c in kept[:20]), "the test sees keys that were not forgotten"
    assert app.vault.reveal("c8", _name_of(app, "c8")) == "Person 8"


def _name_of(app: LedgerApplication, customer: str) -> str:
    from ledger.domain import Customer, aggregate_id

    first = next(iter(app.events.get(aggregate_id(Customer.KIND, customer))))
    return str(first.data["name"])  # type: ignore[attr-defined]


def test_forgotten_keys_are_gone_from_the_sqlite_event_store(settings: Settings, tmp_path: Path) -> None:
    app = LedgerApplication(settings.eventsourcing_env())
    _register_customers(app, tmp_path)
    store = Path(settings.store)
    keys = _keys(store)
    assert len(keys) == CUSTOMERS and all(keys[c] in _file_bytes(store) for c in FORGET)
    _forget(app, tmp_path)
    _assert_erased(app, keys, store)
    app.close()


@pytest.mark.postgres
def test_separate_key_store_beside_postgresql(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    import psycopg

    url = create_database(postgres_server, f"ledger_{uuid.uuid4().hex[:12]}")
    key_file = tmp_path / "keys" / "customer-keys.sqlite"
    key_file.parent.mkdir()  # a key store's folder is not made with it (a typo would be)
    settings = Settings(store=url, projections_db=tmp_path / "p.duckdb", key_store=key_file)
    app = LedgerApplication(settings.eventsourcing_env())
    _register_customers(app, tmp_path)
    keys = _keys(key_file)
    assert len(keys) == CUSTOMERS
    with psycopg.connect(url) as con:
        assert con.execute("SELECT to_regclass('crm_customer_keys')").fetchone() == (None,)
    _forget(app, tmp_path)
    _assert_erased(app, keys, key_file)
    app.close()
    env = {"CRM_LEDGER_STORE": url, "CRM_LEDGER_DB": str(settings.projections_db)}
    shown = run_cli("--key-store", str(key_file), "customer", "show", "c8", env=env)
    assert shown.returncode == 0 and "Person 8" in shown.stdout, shown.stderr
    forgotten = run_cli("--key-store", str(key_file), "customer", "show", "c7", env=env)
    assert "[forgotten]" in forgotten.stdout and "Person 7" not in forgotten.stdout


def test_a_key_store_is_refused_once_the_event_store_holds_keys(settings: Settings, tmp_path: Path) -> None:
    app = LedgerApplication(settings.eventsourcing_env())
    _register_customers(app, tmp_path)
    app.close()
    moved = replace(settings, key_store=tmp_path / "keys.sqlite")
    with pytest.raises(KeyStoreError, match="already holds 300 customer key"):
        LedgerApplication(moved.eventsourcing_env())
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_KEY_STORE": str(tmp_path / "keys.sqlite")}
    refused = run_cli("customer", "show", "c1", env=env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr


def test_a_mistyped_key_store_beside_a_ledger_with_events_is_refused(tmp_path: Path) -> None:
    """Made anew, it would show every customer as unreadable and keep new keys astray."""
    key_file = tmp_path / "keys" / "customer-keys.sqlite"
    key_file.parent.mkdir()  # a key store's folder is not made with it (a typo would be)
    settings = Settings(store=str(tmp_path / "l.sqlite"), projections_db=tmp_path / "p.duckdb", key_store=key_file)
    app = LedgerApplication(settings.eventsourcing_env())
    _register_customers(app, tmp_path)
    app.close()
    typo = tmp_path / "typo" / "keys.sqlite"
    with pytest.raises(KeyStoreError, match="no such key store, and the ledger already holds"):
        LedgerApplication(replace(settings, key_store=typo).eventsourcing_env())
    env = {"CRM_LEDGER_STORE": settings.store, "CRM_LEDGER_DB": str(settings.projections_db)}
    more = tmp_path / "x.jsonl"
    more.write_text("")
    for args in (["customer", "show", "c1"], ["period", "status", "2026-01"], ["ingest", str(more)]):
        refused = run_cli("--key-store", str(typo), *args, env=env)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert "no such key store" in refused.stderr
    assert not (tmp_path / "typo").exists()
    # The right one still reads.
    shown = run_cli("--key-store", str(key_file), "customer", "show", "c8", env=env)
    assert shown.returncode == 0 and "Person 8" in shown.stdout, shown.stderr
