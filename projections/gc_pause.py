"""No cyclic garbage collection while a consumed batch's messages are alive.

confluent-kafka builds a list of (key, value) tuples for each message's headers: six
container objects per message, all alive until the batch is decoded. Python's collector,
with its default threshold of 700 new container objects, then ran young collections every
~120 messages that walked the batch's live header lists again and again, promoting them to
the older generations, whose collections walked them once more. Measured in a decoder
worker over 1,059,131 events: reading the headers cost ~8 µs per message with the collector
on and ~1.7 µs with it paused, and consuming as a whole took half the time.

Decoding creates no reference cycles worth collecting mid-batch (Arrow buffers, bytes,
tuples freed by reference counting), and the collector runs as usual between batches, so
nothing accumulates over a long `--follow`.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collections_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block (restored as it was afterwards)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
