"""PostgreSQL: notification ids follow the last stored one, without gaps and never twice.

The store sets its id sequence to follow the highest stored id under the events table's
lock before each insert. Concurrent writers whose batches roll back after taking ids, under
READ COMMITTED and under REPEATABLE READ with a statement of their own before the insert
(the vault's key rows), must leave ids 1..N, each once.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent

from crm_ledger.settings import Settings
from ledger.application import LedgerApplication
from tests.postgres_server import PostgresServer, create_database

pytestmark = pytest.mark.postgres

WRITERS = 4
BATCHES = 15


class _RolledBackError(Exception):
    """A batch made to fail after taking its notification ids."""


def _writer(app: LedgerApplication, errors: list[BaseException], seed: int) -> None:
    recorder: Any = app.recorder
    for batch in range(BATCHES):
        events = [StoredEvent(uuid.uuid4(), 1, "t", b"x") for _ in range(3)]

        def before(cursor: Any) -> None:
            cursor.execute("SELECT 1")  # the first statement fixes a REPEATABLE READ snapshot

        try:
            recorder.insert_events(events, before_events=before)
            if (batch + seed) % 3 == 0:
                # A batch that takes ids and then rolls back (its ids are not given back).
                with recorder.datastore.transaction(commit=True) as cursor:
                    recorder._insert_stored_events(cursor, [StoredEvent(uuid.uuid4(), 1, "t", b"y")])
                    raise _RolledBackError
        except _RolledBackError:
            pass
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)


@pytest.mark.parametrize("isolation", ["read committed", "repeatable read"])
def test_concurrent_writers_leave_ids_without_gaps_or_repeats(postgres_server: PostgresServer, isolation: str) -> None:
    name = f"ids_{uuid.uuid4().hex[:10]}"
    url = create_database(postgres_server, name)
    with psycopg.connect(postgres_server.url("postgres"), autocommit=True) as connection:
        connection.execute(f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = '{isolation}'")
    apps = [LedgerApplication(Settings(store=url).eventsourcing_env()) for _ in range(WRITERS)]
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_writer, args=(app, errors, i)) for i, app in enumerate(apps)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        ids = [n.id for n in apps[0].read_notifications(1, 100_000)]
        assert ids == list(range(1, WRITERS * BATCHES * 3 + 1))
    finally:
        for app in apps:
            app.close()
