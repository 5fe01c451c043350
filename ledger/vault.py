"""Crypto-shredding of customers' personal fields (right to be forgotten).

Personal fields (CustomerRegistered / CustomerDetailsChanged `name` and `email`) are
encrypted with a key of that customer (AES-256-GCM, the customer id as associated data)
before the event is stored, so the
store, the Kafka topic and the DuckDB mirror only ever hold ciphertext. The keys live in
the ledger's own database, outside the event log. `CustomerForgotten` deletes the key:
the ciphertext stays (the hash chain, counts and KPIs stay valid) but nobody can read it.
"""

from __future__ import annotations

import base64
import os
from collections import OrderedDict
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder

PERSONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "CustomerRegistered": ("name", "email"),
    "CustomerDetailsChanged": ("name", "email"),
}
PREFIX = "enc:v2:"  # AES-256-GCM, 12-byte nonce, tag appended (cryptography's AESGCM layout)
CACHED_KEYS = 100_000
FORGOTTEN = "[forgotten]"
_TABLE = "crm_customer_keys"


class PersonalDataVault:
    """Per-customer keys in the event store's database (SQLite or PostgreSQL)."""

    def __init__(self, recorder: ApplicationRecorder) -> None:
        self._datastore = recorder.datastore  # type: ignore[attr-defined]
        self._mark = "?" if isinstance(recorder, SQLiteAggregateRecorder) else "%s"
        blob = "BLOB" if self._mark == "?" else "BYTEA"
        with self._datastore.transaction(commit=True) as cursor:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {_TABLE} (customer_id TEXT PRIMARY KEY, key {blob} NOT NULL)"
            )
        # Bounded, so that importing millions of customers keeps memory constant.
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        #: Customers found without a key by the last `prefetch` (valid for one batch).
        self._keyless: set[str] = set()

    @property
    def uses_sqlite(self) -> bool:
        """Whether the keys (and the events) are in a SQLite database."""
        return self._mark == "?"

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
        if not pending:
            return
        with self._datastore.transaction(commit=True) as cursor:
            cursor.executemany(
                f"INSERT INTO {_TABLE} (customer_id, key) VALUES ({self._mark}, {self._mark})",
                sorted(pending.items()),
            )
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
        with self._datastore.transaction(commit=False) as cursor:
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
        if not ids:
            return
        with self._datastore.transaction(commit=True) as cursor:
            for customer_id in ids:
                cursor.execute(f"DELETE FROM {_TABLE} WHERE customer_id = {self._mark}", (customer_id,))
        for customer_id in ids:
            self._cache.pop(customer_id, None)
            self._keyless.add(customer_id)

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
