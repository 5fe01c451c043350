"""Wiring used by the CLI: open the ledger, the projection DB, a source; stop on Ctrl-C."""

from __future__ import annotations

import importlib.util
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from crm_ledger.errors import ConfigurationError
from crm_ledger.kafka import BrokerWatch
from crm_ledger.settings import Settings
from ledger.application import LedgerApplication
from projections.sources import KafkaSource, LedgerSource, LogSource


def open_ledger(settings: Settings) -> LedgerApplication:
    """The ledger application on the configured event store."""
    env = settings.eventsourcing_env()
    if env["PERSISTENCE_MODULE"] == "eventsourcing.postgres" and importlib.util.find_spec("psycopg") is None:
        raise ConfigurationError(
            "a postgresql:// store needs the PostgreSQL extra: pip install 'crm-ledger[postgres]'"
        )
    return LedgerApplication(env)


def open_source(settings: Settings, source: str, app: LedgerApplication | None = None) -> LogSource:
    """`ledger` (the embedded notification log) or `kafka` (the events topic)."""
    if source == "ledger":
        return LedgerSource(app or open_ledger(settings))
    if source == "kafka":
        watch = BrokerWatch(settings.bootstrap, _say, settings.broker_timeout_s)
        return KafkaSource(settings.bootstrap, settings.events_topic, watch=watch)
    raise ConfigurationError(f"unknown source {source!r}: use 'ledger' or 'kafka'")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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
