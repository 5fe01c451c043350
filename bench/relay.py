"""Ledger -> Kafka relay throughput vs. the Avro encode-only rate (the limit) of the same events."""

from __future__ import annotations

import uuid

from common import arguments, kafka, prepared_ledger, report, timed

from crm_ledger.kafka import delete_topics
from ledger.relay import Relay, RelayConfig

GOAL = 50_000


def main() -> None:
    args = arguments(__doc__ or "", 200_000)
    app = prepared_ledger(args.events, args.seed)
    total = app.max_position()
    states = [n.state for n in app.read_notifications(1, total)]
    records = [app.codec.decode(state) for state in states]

    def encode_all() -> int:
        for event_type, record in records:
            app.codec.encode(event_type, record)
        return len(records)

    _, encode_seconds = timed(encode_all)
    encode_rate = len(records) / encode_seconds
    with kafka() as bootstrap:
        topic = f"bench.relay.{uuid.uuid4().hex[:8]}"
        config = RelayConfig(
            bootstrap, topic, partitions=6, transactional_id=f"bench-{topic}", batch_size=20_000
        )
        sent, seconds = timed(lambda: Relay(app, config).run())
        delete_topics(bootstrap, [topic])
    rate = sent / seconds
    report(
        "relay",
        {
            "events": sent,
            "relay_events_per_s": round(rate),
            "avro_encode_only_events_per_s": round(encode_rate),
            "relay_vs_encode_only": round(rate / encode_rate, 2),
            "goal_events_per_s": GOAL,
            "goal_ratio": round(rate / GOAL, 2),
            "note": "stored Avro bytes are forwarded as they are; decoded only for key and headers",
        },
    )


if __name__ == "__main__":
    main()
