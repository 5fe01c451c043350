"""Python's cyclic garbage collector while an import decides its facts: rare, scheduled runs.

While the main process decides a run's facts, the objects it makes live for a batch or two
(the records and facts of a batch, their outcomes, the rows handed to the writing process)
and are freed by reference counting: deciding makes no reference cycles (in a 1M-event
import every collection of this phase found nothing to free). Yet the collector, even
with the raised thresholds of `crm_ledger.collector.fewer_collections`, walked each of those
objects while it was young and again in the middle generation, and those objects are
scattered over the memory of the sorted runs and cached aggregates: measured on 400,000
events (load average ~5), 81 young collections of ~25 ms and 3 middle ones of ~0.2 s, and
the deciding phase's CPU per event 34.7 µs with them against 27.2 µs without.

So while deciding, automatic collections are off, and a collection of the young and middle
generations runs after every `COLLECT_EVERY` facts instead: any cycles (an unusual input
could make some) are still freed, and the memory they can hold is bounded whatever the
size of the file. The collector is restored as it was when the phase ends.
"""

from __future__ import annotations

import gc

#: Facts decided between two scheduled collections.
COLLECT_EVERY = 1_000_000


class DecidingCollector:
    """Automatic collections off while deciding; one scheduled every `every` facts."""

    def __init__(self, every: int = COLLECT_EVERY) -> None:
        self._every = every
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
