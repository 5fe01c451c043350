"""Shared fixtures: a real Kafka broker for the session, fresh topics, ledgers and DBs."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_cli import broker, registry_server
from crm_ledger.settings import Settings
from ledger.application import LedgerApplication
from ledger.records import RecordParser
from schemas.registry import SchemaRegistry
from tests.ports import free_port, free_port_pair
from tests.postgres_server import PostgresServer, create_database
from tests.postgres_server import start as postgres_start


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real single-node KRaft broker, started once, waited for, always stopped."""
    existing = os.environ.get("CRM_LEDGER_TEST_BOOTSTRAP")
    if existing:
        yield existing
        return
    port = free_port_pair()
    config = broker.BrokerConfig(
        data_dir=tmp_path_factory.mktemp("kafka"), port=port, controller_port=port + 1
    )
    broker.start(config, timeout_s=120)
    try:
        yield config.bootstrap
    finally:
        broker.stop(config)


@pytest.fixture(scope="session")
def schema_registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real schema registry (Apicurio, Confluent API) for the session, always stopped.

    Tests that change what it holds put it back (`schemas push` is idempotent).
    """
    existing = os.environ.get("CRM_LEDGER_TEST_REGISTRY_URL")
    if existing:
        yield existing
        return
    port = free_port()
    config = registry_server.RegistryServerConfig(data_dir=tmp_path_factory.mktemp("registry"), port=port)
    registry_server.start(config, timeout_s=180)
    try:
        yield config.url
    finally:
        registry_server.stop(config)


@pytest.fixture
def pushed_registry_url(schema_registry_url: str) -> str:
    """The session's registry holding exactly `schemas/` (pushed again when a test changed it)."""
    from schemas.remote import RemoteRegistry
    from schemas.sync import push

    push(SchemaRegistry.load(), RemoteRegistry(schema_registry_url))
    return schema_registry_url


@pytest.fixture
def topic(kafka_bootstrap: str) -> Iterator[str]:
    """A fresh topic name per test (created by whoever uses it), deleted afterwards."""
    from crm_ledger.kafka import delete_topics

    name = f"test.{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(Exception):  # best-effort cleanup
        delete_topics(kafka_bootstrap, [name])


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session, always stopped."""
    # Not under pytest's tmp folders: those are private to root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="crm-ledger-pg-"))
    started = postgres_start(base)
    if started is None:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip("PostgreSQL binaries are not available on this machine")
    server, process = started
    try:
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


#: The event stores every state test runs against.
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    store = str(tmp_path / "ledger.sqlite")
    if "store_kind" in request.fixturenames and request.getfixturevalue("store_kind") == "postgres":
        server = request.getfixturevalue("postgres_server")
        store = create_database(server, f"ledger_{uuid.uuid4().hex[:12]}")
    return Settings(store=store, projections_db=tmp_path / "projections.duckdb")


@pytest.fixture
def app(settings: Settings, store_kind: str) -> Iterator[LedgerApplication]:
    """The ledger on each supported event store (SQLite file, real PostgreSQL)."""
    application = LedgerApplication(settings.eventsourcing_env())
    yield application
    application.close()


@pytest.fixture
def parser(registry: SchemaRegistry) -> RecordParser:
    return RecordParser(registry)
