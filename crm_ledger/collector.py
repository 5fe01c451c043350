"""Python's cyclic garbage collector during bulk work: fewer collections, or none for a while.

Ingest: an import keeps millions of long-lived objects (the sort buffer of 200,000 records, up to
200,000 cached aggregates, their fields) and allocates more for every record, so Python's
collector, with its default threshold of 700 new objects, ran thousands of young and dozens
of full collections that each walked those objects: measured on a 211,757-event import,
about a quarter of the main process's time. Ingest creates almost no reference cycles
(values are freed by reference counting), so during a run collections start only after
50,000 new objects; the process's own thresholds are restored when the run ends.

Decoder workers: confluent-kafka builds a list of (key, value) tuples for each message's
headers: six container objects per message, all alive until the batch is decoded. Python's
collector, with its default threshold of 700 new container objects, then ran young collections every
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

#: Collector thresholds during a run (young, middle, old generation).
RUN_THRESHOLDS = (50_000, 20, 100)


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Raise the collector's thresholds for the duration of the block, then restore them."""
    before = gc.get_threshold()
    gc.set_threshold(*RUN_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


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
