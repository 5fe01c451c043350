"""Wiring used by the CLI: open the ledger, the projection DB, a source; stop on Ctrl-C."""

from __future__ import annotations

import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import FrameType

from crm_ledger.errors import ConfigurationError
from crm_ledger.settings import Settings
from ledger.application import LedgerApplication
from projections.sources import KafkaSource, LedgerSource, LogSource
from projections.spec import DEFAULT_SPEC, load_spec


def open_ledger(settings: Settings, goal_components: Iterable[str] | None = None) -> LedgerApplication:
    """The ledger application on the configured event store.

    Team goals may gauge the reward components of the default spec, or of `goal_components`.
    """
    if goal_components is None:
        goal_components = [c.name for c in load_spec(DEFAULT_SPEC).components]
    return LedgerApplication(settings.eventsourcing_env(), goal_components=goal_components)


def open_source(settings: Settings, source: str, app: LedgerApplication | None = None) -> LogSource:
    """`ledger` (the embedded notification log) or `kafka` (the events topic)."""
    if source == "ledger":
        return LedgerSource(app or open_ledger(settings))
    if source == "kafka":
        return KafkaSource(settings.bootstrap, settings.events_topic)
    raise ConfigurationError(f"unknown source {source!r}: use 'ledger' or 'kafka'")


class StopFlag:
    """Set by SIGINT/SIGTERM; long loops check it between batches and stop cleanly."""

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self) -> bool:
        return self.stopped


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Turn the first Ctrl-C / SIGTERM into a clean stop at the next batch boundary."""
    flag = StopFlag()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag.stopped:
            raise KeyboardInterrupt
        flag.stopped = True

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
