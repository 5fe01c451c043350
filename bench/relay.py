"""Ledger -> Kafka relay: forwarding stored bytes vs. the relay that decoded every event.

Same ledger, same broker, same run: the relay (rows read straight from the store, only the
event id and key fields read from the bytes), the previous relay (eventsourcing
notifications, every event decoded in full) and Avro encode-only of the same events.
"""

from __future__ import annotations

import uuid
from typing import Any

from common import arguments, kafka, prepared_ledger, report, timed

from crm_ledger.kafka import delete_topics
from ledger.application import LedgerApplication
from ledger.relay import Outgoing, Relay, RelayConfig, message_key

GOAL = 80_000


class FullDecodeRelay(Relay):
    """The relay before it forwarded bytes: notification objects, a full decode per event."""

    def _read_batch(self, start: int) -> list[Outgoing]:
        notifications = list(self.app.read_notifications(start, self.config.batch_size))
        batch = []
        for notification, result in zip(
            notifications, self.codec.decode_many([n.state for n in notifications]), strict=True
        ):
            event_type, record = result  # type: ignore[misc]
            batch.append(
                Outgoing(
                    notification.id,
                    notification.state,
                    event_type.encode(),
                    record["event_id"].encode(),
                    message_key(record),
                )
            )
        return batch


def relay_rate(app: LedgerApplication, bootstrap: str, relay_class: type[Relay]) -> tuple[int, float]:
    topic = f"bench.relay.{uuid.uuid4().hex[:8]}"
    config = RelayConfig(bootstrap, topic, partitions=6, transactional_id=f"bench-{topic}", batch_size=20_000)
    sent, seconds = timed(lambda: relay_class(app, config).run())
    delete_topics(bootstrap, [topic])
    return sent, seconds


def main() -> None:
    args = arguments(__doc__ or "", 200_000)
    app = prepared_ledger(args.events, args.seed)
    total = app.max_position()
    records: list[Any] = []
    start = 1
    while start <= total:
        batch = list(app.read_notifications(start, 50_000))
        records.extend(app.codec.decode(n.state) for n in batch)
        start = batch[-1].id + 1

    def encode_all() -> int:
        for event_type, record in records:
            app.codec.encode(event_type, record)
        return len(records)

    _, encode_seconds = timed(encode_all)
    encode_rate = len(records) / encode_seconds
    records.clear()
    with kafka() as bootstrap:
        sent, seconds = relay_rate(app, bootstrap, Relay)
        old_sent, old_seconds = relay_rate(app, bootstrap, FullDecodeRelay)
    rate = sent / seconds
    old_rate = old_sent / old_seconds
    report(
        "relay",
        {
            "events": sent,
            "relay_events_per_s": round(rate),
            "baseline_full_decode_relay_events_per_s": round(old_rate),
            "speedup_vs_full_decode_relay": round(rate / old_rate, 2),
            "avro_encode_only_events_per_s": round(encode_rate),
            "relay_vs_encode_only": round(rate / encode_rate, 2),
            "goal_events_per_s": GOAL,
            "goal_ratio": round(rate / GOAL, 2),
            "note": "stored Avro bytes forwarded as they are; only event id and key fields read from them",
        },
    )


if __name__ == "__main__":
    main()
