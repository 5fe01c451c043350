"""The tamper-evident hash chain over the ledger, in notification order.

chain_n = sha256(chain_{n-1} || bytes of event n), where the bytes are the stored Avro
wire-format value: exactly what Kafka carries and what the mirror keeps.
"""

from __future__ import annotations

import hashlib

GENESIS = bytes(32)


def next_link(previous: bytes, event_bytes: bytes) -> bytes:
    """The chain value after one more event."""
    return hashlib.sha256(previous + event_bytes).digest()
