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

Deciding (`DecidingCollector`): while the main process decides a run's facts, the objects
it makes live for a batch or two (the records and facts of a batch, their outcomes, the rows
handed to the writing process) and are freed by reference counting: deciding makes no
reference cycles (in a 1M-event import every collection of this phase found nothing to
free). Yet the collector, even with the raised thresholds of `fewer_collections`, walked
each of those objects while it was young and again in the middle generation, and those
objects are scattered over the memory of the sorted runs and cached aggregates: measured
on 400,000 events (load average ~5), 81 young collections of ~25 ms and 3 middle ones of
~0.2 s, and the deciding phase's CPU per event 34.7 µs with them against 27.2 µs without.

So while deciding, automatic collections are off, and a collection of the young and middle
generations runs after every `COLLECT_EVERY` facts instead: any cycles (an unusual input
could make some) are still freed, and the memory they can hold is bounded whatever the
size of the file. The collector is restored as it was when the phase ends.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: Collector thresholds during a run (young, middle, old generation).
RUN_THRESHOLDS = (50_000, 20, 100)
#: Facts decided between two scheduled collections (`DecidingCollector`).
COLLECT_EVERY = 1_000_000


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


class DecidingCollector:
    """Automatic collections off while deciding; one scheduled every `every` facts."""

    def __init__(self, every: int | None = None) -> None:
        self._every = COLLECT_EVERY if every is None else every
        self._since = 0
        self._was_enabled: bool | None = None

    def start(self) -> None:
        """The deciding phase begins (idempotent)."""
        if self._was_enabled is None:
            self._was_enabled = gc.isenabled()
            gc.disable()

    def decided(self, count: int) -> None:
        """`count` more facts were decided: collect when `every` have been since the last time."""
        self._since += count
        if self._since >= self._every:
            self._since = 0
            gc.collect(1)

    def stop(self) -> None:
        """The phase is over: the collector as it was before `start`."""
        if self._was_enabled:
            gc.enable()
        self._was_enabled = None
