"""Crypto-shredding of customers' personal fields (right to be forgotten).

Personal fields (CustomerRegistered / CustomerDetailsChanged `name` and `email`) are
encrypted with a key of that customer (AES-256-GCM, the customer id as associated data)
before the event is stored, so the
store, the Kafka topic and the DuckDB mirror only ever hold ciphertext. The keys live in
the ledger's own database, outside the event log. `CustomerForgotten` deletes the key:
the ciphertext stays (the hash chain, counts and KPIs stay valid) but nobody can read it.

Deleting must really delete. On SQLite the vault turns on `secure_delete` for its own
transactions (deleted rows are overwritten with zeros, whatever the library was compiled
with) and, after forgetting, checkpoints and truncates the write-ahead log, so the key's
bytes are gone from the files. PostgreSQL keeps old row versions in its WAL and in backups
until those are recycled; a separate key store (`key_store`, a local SQLite file) keeps
erasure independent of that.
"""

from __future__ import annotations

import base64
import os
from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder, SQLiteDatastore

from crm_ledger.outputs import refuse_missing_folder
from crm_ledger.settings import refuse_foreign_database, sqlite_read_only_uri
from ledger.errors import KEY_STORE_NOTE, KeyStoreError, key_store_of
from schemas.metadata import shipped

#: Event type -> its personal fields (declared `"crm.personal": true` in the schemas).
PERSONAL_FIELDS: Mapping[str, tuple[str, ...]] = shipped().personal
PREFIX = "enc:v2:"  # AES-256-GCM, 12-byte nonce, tag appended (cryptography's AESGCM layout)
CACHED_KEYS = 100_000
FORGOTTEN = "[forgotten]"
_TABLE = "crm_customer_keys"
_CREATE_LOCK = 0x63726D6B  # "crmk"


class PersonalDataVault:
    """Per-customer keys in the event store's database (SQLite or PostgreSQL), or in a
    separate SQLite key file when `key_store` is given."""

    def __init__(
        self, recorder: ApplicationRecorder, key_store: str | None = None, *, read_only: bool = False
    ) -> None:
        """`read_only` (commands that only read) opens a separate key store as the event store
        is then opened: readable in a read-only folder too, and no table made."""
        self._in_event_store = not key_store
        if key_store:
            _refuse_keys_left_in(recorder, key_store)
            _refuse_a_missing_key_store(recorder, key_store)
            refuse_missing_folder(Path(key_store))
            option = "--key-store or CRM_LEDGER_KEY_STORE"
            refuse_foreign_database(Path(key_store), _TABLE, "key store", option)
            name = sqlite_read_only_uri(Path(key_store)) if read_only else key_store
            self._datastore: Any = SQLiteDatastore(name, lock_timeout=30)
            self._sqlite = True
        else:
            self._datastore = recorder.datastore  # type: ignore[attr-defined]
            self._sqlite = isinstance(recorder, SQLiteAggregateRecorder)
        #: The separate key store's path, which its errors are noted with (`_noted`).
        self._key_store = key_store or None
        self._mark = "?" if self._sqlite else "%s"
        if not (read_only and key_store):
            self._create_table()
        # Bounded, so that importing millions of customers keeps memory constant.
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        #: Customers found without a key by the last `prefetch` (valid for one batch).
        self._keyless: set[str] = set()

    def _create_table(self) -> None:
        blob = "BLOB" if self._sqlite else "BYTEA"
        with self._transaction() as cursor:
            if not self._sqlite:
                # PostgreSQL refuses concurrent CREATE ... IF NOT EXISTS of one table ("tuple
                # concurrently updated") when several writers start at once: take turns.
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {_TABLE} (customer_id TEXT PRIMARY KEY, key {blob} NOT NULL)"
            )

    def key_for_new_fact(self, customer_id: str, pending: dict[str, bytes]) -> bytes:
        """The customer's key, or a new one held in `pending` until `store_new_keys`.

        Keys are created only for facts that are accepted: the caller stores `pending` just
        before saving the events encrypted with them.
        """
        key = pending.get(customer_id) or self._key(customer_id)
        if key is None:
            key = pending[customer_id] = os.urandom(32)
        return key

    def store_new_keys(self, pending: dict[str, bytes]) -> None:
        """Commit new keys. An `IntegrityError` means another writer made one first: decide again."""
        self.commit_keys(pending)
        self.remember_keys(pending)

    def commit_keys(self, pending: Mapping[str, bytes]) -> None:
        """The store's part of `store_new_keys` (the cache untouched: `remember_keys`)."""
        if not pending:
            return
        with self._transaction() as cursor:
            self.insert_keys(cursor, pending)

    @property
    def in_event_store(self) -> bool:
        """Whether the keys live in the event store's own database (no separate key store)."""
        return self._in_event_store

    def insert_keys(self, cursor: Any, pending: Mapping[str, bytes]) -> None:
        """Insert new keys through a cursor of the event store's transaction (`in_event_store`).

        Then `remember_keys` once it is committed. A key another writer made first fails the
        whole transaction with an `IntegrityError`: the batch is decided again.
        """
        cursor.executemany(
            f"INSERT INTO {_TABLE} (customer_id, key) VALUES ({self._mark}, {self._mark})",
            sorted(pending.items()),
        )

    def remember_keys(self, pending: Mapping[str, bytes]) -> None:
        """Keep committed new keys in the cache (after `insert_keys`)."""
        for customer_id, key in pending.items():
            self._remember(customer_id, key)
            self._keyless.discard(customer_id)

    def prefetch(self, customer_ids: Iterable[str]) -> None:
        """Load the keys of a batch's customers with one query instead of one per customer.

        Customers found without a key are remembered until `end_prefetch`: a key made by
        another writer meanwhile makes `store_new_keys` fail, and the batch is decided again.
        """
        wanted = [c for c in set(customer_ids) if c not in self._cache]
        found = self._load(wanted)
        for customer_id, key in found.items():
            self._remember(customer_id, key)
        self._keyless = {c for c in wanted if c not in found}

    def end_prefetch(self) -> None:
        """The batch is over: customers without a key are asked again next time."""
        self._keyless.clear()

    def clear_cache(self) -> None:
        """Forget cached keys (another writer may have deleted some)."""
        self._cache.clear()
        self._keyless.clear()

    def _remember(self, customer_id: str, key: bytes) -> None:
        self._cache[customer_id] = key
        self._cache.move_to_end(customer_id)
        while len(self._cache) > CACHED_KEYS:
            self._cache.popitem(last=False)

    def _load(self, customer_ids: list[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        with self._noted(), self._datastore.transaction(commit=False) as cursor:
            for start in range(0, len(customer_ids), 500):
                chunk = customer_ids[start : start + 500]
                marks = ", ".join([self._mark] * len(chunk))
                cursor.execute(f"SELECT customer_id, key FROM {_TABLE} WHERE customer_id IN ({marks})", chunk)
                for row in cursor.fetchall():
                    found[str(row["customer_id"])] = bytes(row["key"])
        return found

    def forget(self, customer_ids: Iterable[str]) -> None:
        """Delete keys: from now on the customers' personal fields cannot be decrypted."""
        ids = list(customer_ids)
        self.delete_keys(ids)
        self.drop_cached(ids)

    def drop_cached(self, customer_ids: Iterable[str]) -> None:
        """The cache's part of `forget`: these customers have (or are about to have) no key."""
        for customer_id in customer_ids:
            self._cache.pop(customer_id, None)
            self._keyless.add(customer_id)

    def delete_keys(self, customer_ids: Collection[str]) -> None:
        """The store's part of `forget` (the cache untouched: `drop_cached`)."""
        if not customer_ids:
            return
        with self._transaction() as cursor:
            self.delete_keys_in(cursor, customer_ids)
        self.wipe_log()

    def delete_keys_in(self, cursor: Any, customer_ids: Collection[str]) -> None:
        """Delete keys through a cursor of a transaction: the vault's own (`delete_keys`), or the
        event store's when the keys live there (`in_event_store`).

        Then `wipe_log` once it is committed (and `drop_cached`).
        """
        if self._sqlite:
            cursor.execute("PRAGMA secure_delete = ON")
        for customer_id in customer_ids:
            cursor.execute(f"DELETE FROM {_TABLE} WHERE customer_id = {self._mark}", (customer_id,))

    def wipe_log(self) -> None:
        """After deleting keys: no copy of them is left in SQLite's write-ahead log."""
        if self._sqlite:
            # The deleted rows are zeroed in the new WAL frames, but older frames still hold
            # the keys until the log is checkpointed: copy it back and truncate it now.
            with self._noted(), self._datastore.get_connection(commit=True) as connection:
                connection.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A committing transaction; on SQLite with deleted content overwritten by zeros."""
        with self._noted(), self._datastore.transaction(commit=True) as cursor:
            if self._sqlite:
                cursor.execute("PRAGMA secure_delete = ON")
            yield cursor

    @contextmanager
    def _noted(self) -> Iterator[None]:
        """An error of a separate key store says which file it is (a full disk under the key
        store was told as the event store's): a note, so that its type still decides."""
        try:
            yield
        except Exception as error:
            if self._key_store is not None and key_store_of(error) is None:
                error.add_note(f"{KEY_STORE_NOTE}{self._key_store}")
            raise

    def _key(self, customer_id: str) -> bytes | None:
        key = self._cache.get(customer_id)
        if key is None and customer_id not in self._keyless:
            key = self._load([customer_id]).get(customer_id)
            if key is not None:
                self._remember(customer_id, key)
        return key

    @staticmethod
    def encrypt(customer_id: str, value: str, key: bytes) -> str:
        """Ciphertext of a personal field under the customer's key."""
        nonce = os.urandom(12)
        sealed = AESGCM(key).encrypt(nonce, value.encode(), customer_id.encode())
        return PREFIX + base64.b64encode(nonce + sealed).decode()

    def reveal(self, customer_id: str, value: str | None) -> str | None:
        """The plaintext of a personal field, FORGOTTEN once the key is gone."""
        if value is None or not value.startswith(PREFIX):
            return value
        key = self._key(customer_id)
        if key is None:
            return FORGOTTEN
        raw = base64.b64decode(value[len(PREFIX) :])
        try:
            return AESGCM(key).decrypt(raw[:12], raw[12:], customer_id.encode()).decode()
        except InvalidTag:
            return "[unreadable]"


def _refuse_a_missing_key_store(recorder: ApplicationRecorder, key_store: str) -> None:
    """A key store that does not exist beside a ledger that holds events is a mistyped path:
    made anew, it would show every customer's personal data as unreadable, and keep new keys
    where the next run with the right path would not find them."""
    if Path(key_store).exists():
        return
    events = recorder.max_notification_id() or 0
    if events:
        raise KeyStoreError(
            f"{key_store}: no such key store, and the ledger already holds {events} events "
            "(CRM_LEDGER_KEY_STORE or --key-store names the one made with it)"
        )


def _refuse_keys_left_in(recorder: ApplicationRecorder, key_store: str) -> None:
    """A key store chosen after keys were made in the event store would hide those keys."""
    datastore = recorder.datastore  # type: ignore[attr-defined]
    sqlite = isinstance(recorder, SQLiteAggregateRecorder)
    lookup = (
        f"SELECT name FROM sqlite_master WHERE type = 'table' AND name = '{_TABLE}'"
        if sqlite
        else f"SELECT to_regclass('{_TABLE}') AS name"
    )
    with datastore.transaction(commit=False) as cursor:
        cursor.execute(lookup)
        row = cursor.fetchone()
        if row is None or row["name"] is None:
            return
        cursor.execute(f"SELECT count(*) AS n FROM {_TABLE}")
        count = int(cursor.fetchone()["n"])
    if count:
        raise KeyStoreError(
            f"the event store already holds {count} customer key(s); a separate key store "
            f"({key_store}) must be chosen before the first customer is recorded"
        )
