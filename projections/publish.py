"""Publish read-model changes to compacted Kafka topics for downstream systems.

After a refresh, rows of `customer_profile`, `reward_score` and `reward_statement` whose
content changed since the last publication are sent (Avro, Confluent wire format, schemas
in `schemas/`), keyed so that compaction keeps the latest state per key; rows that
disappeared are sent as tombstones. What was published is remembered per key (a content
hash in the version's `published` table) after the producer has flushed, so a crash in
between only re-sends the same values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
from confluent_kafka import KafkaException, Producer

from crm_ledger.errors import CrmLedgerError, KafkaUnavailableError
from crm_ledger.kafka import (
    COMPACTED,
    DEFAULT_BROKER_TIMEOUT_S,
    await_broker,
    ensure_topic,
    kafka_reason,
    produce,
    producer_config,
)
from ledger.records import epoch_ms
from projections.readmodels import FEEDS as TOPICS
from projections.transaction import transaction
from schemas.codec import AvroCodec
from schemas.remote import RemoteRegistry
from schemas.sync import verify_registered


@dataclass(frozen=True)
class Feed:
    """One read model on one compacted topic."""

    table: str
    topic: str
    schema: str
    key_sql: str
    to_record: Callable[[dict[str, Any]], dict[str, Any]]


def _epoch_ms(value: Any) -> Any:
    return epoch_ms(value) if isinstance(value, datetime) else value


def _profile(row: dict[str, Any]) -> dict[str, Any]:
    record = dict(row)
    for name in ("registered_at", "first_contact_at", "last_contact_at"):
        record[name] = _epoch_ms(record[name])
    return record


FIXED_SCORE_COLUMNS = ("employee_id", "period", "team_id", "score", "spec_version", "spec_name")


def _score(row: dict[str, Any]) -> dict[str, Any]:
    record = {k: row[k] for k in FIXED_SCORE_COLUMNS}
    record["components"] = {
        k: (None if v is None else float(v)) for k, v in row.items() if k not in FIXED_SCORE_COLUMNS
    }
    return record


def _statement(row: dict[str, Any]) -> dict[str, Any]:
    record = dict(row)
    record["issued_at"] = _epoch_ms(record["issued_at"])
    return record


FEEDS = (
    Feed("customer_profile", TOPICS["customer_profile"], "CustomerProfile", "customer_id", _profile),
    Feed("reward_score", TOPICS["reward_score"], "RewardScore", "employee_id || '|' || period", _score),
    Feed(
        "reward_statement",
        TOPICS["reward_statement"],
        "RewardStatementRow",
        "employee_id || '|' || period || '|' || event_id",
        _statement,
    ),
)


def check_registry(registry_url: str, codec: AvroCodec) -> None:
    """Fail when the registry lacks (or differs on) a schema the downstream feeds write."""
    written = [codec.registry.latest(feed.schema) for feed in FEEDS]
    verify_registered(RemoteRegistry(registry_url), written, "publish")


def publish_changes(
    connection: duckdb.DuckDBPyConnection,
    schema: str,
    bootstrap: str,
    codec: AvroCodec,
    partitions: int = 3,
    *,
    registry_url: str | None = None,
    broker_timeout_s: float = DEFAULT_BROKER_TIMEOUT_S,
) -> dict[str, int]:
    """Send what changed since the last publication; returns messages sent per topic.

    With `registry_url`, refuses before writing anything unless that schema registry serves
    the schemas the feeds are written with. An unreachable broker is waited for up to
    `broker_timeout_s`, then `KafkaUnavailableError`.
    """
    if registry_url is not None:
        check_registry(registry_url, codec)
    await_broker(bootstrap, broker_timeout_s, "publishing")
    connection.execute(
        f"CREATE TABLE IF NOT EXISTS {schema}.published (topic VARCHAR, key VARCHAR, hash VARCHAR, "
        "PRIMARY KEY (topic, key))"
    )
    producer = Producer(producer_config(bootstrap, **{"enable.idempotence": True, "linger.ms": 20}))
    sent: dict[str, int] = {}
    for feed in FEEDS:
        # As long as an unreachable broker is waited for: a port that accepts connections but
        # answers no Kafka (another service's, named by mistake) took the client's own 30 s.
        ensure_topic(bootstrap, feed.topic, partitions, COMPACTED, timeout_s=broker_timeout_s)
        changed = connection.execute(
            f"""
            WITH current AS (
                SELECT {feed.key_sql} AS k, md5(t::VARCHAR) AS h, t.* FROM {schema}.{feed.table} t
            )
            SELECT c.* FROM current c
            LEFT JOIN {schema}.published p ON p.topic = ? AND p.key = c.k
            WHERE p.hash IS DISTINCT FROM c.h
            ORDER BY c.k
            """,
            [feed.topic],
        )
        names = [d[0] for d in changed.description]
        rows = [dict(zip(names, row, strict=True)) for row in changed.fetchall()]
        gone = [
            r[0]
            for r in connection.execute(
                f"SELECT key FROM {schema}.published WHERE topic = ? AND key NOT IN "
                f"(SELECT {feed.key_sql} FROM {schema}.{feed.table})",
                [feed.topic],
            ).fetchall()
        ]
        try:
            for row in rows:
                key, digest = row.pop("k"), row.pop("h")
                del digest
                value = codec.encode(feed.schema, feed.to_record(row))
                produce(producer, feed.topic, key=key.encode(), value=value)
            for key in gone:
                produce(producer, feed.topic, key=key.encode(), value=None)
        except KafkaException as error:
            raise CrmLedgerError(f"publishing to {feed.topic!r} failed: {kafka_reason(error)}") from error
        if producer.flush(60) > 0:
            # Messages still in flight after a minute: the broker is away or overloaded.
            raise KafkaUnavailableError(
                f"publishing to {feed.topic!r} at {bootstrap} did not complete; nothing was marked published"
            )
        with transaction(connection):
            connection.execute(
                f"INSERT OR REPLACE INTO {schema}.published SELECT ?, {feed.key_sql}, md5(t::VARCHAR) "
                f"FROM {schema}.{feed.table} t",
                [feed.topic],
            )
            connection.execute(
                f"DELETE FROM {schema}.published WHERE topic = ? "
                f"AND key NOT IN (SELECT {feed.key_sql} FROM {schema}.{feed.table})",
                [feed.topic],
            )
        sent[feed.topic] = len(rows) + len(gone)
    return sent
