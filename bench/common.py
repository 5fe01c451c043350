"""Shared set-up for the benchmarks: cached generated ledgers, a broker, JSON output.

Benchmarks measure throughput on this machine and print JSON with the figure, the
baseline measured in the same run, and their ratio. They are never unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crm_cli import broker  # noqa: E402
from crm_ledger.settings import Settings  # noqa: E402
from importers.generator import GeneratorConfig, write_history  # noqa: E402
from ledger.application import LedgerApplication  # noqa: E402
from ledger.ingest import RejectSink, ingest_records, read_file  # noqa: E402
from ledger.records import RecordParser  # noqa: E402

BENCH_DIR = ROOT / ".crm-ledger" / "bench"
MONTHS = 6
EVENTS_PER_CUSTOMER_MONTH = 3.0


def arguments(
    description: str, default_events: int, flags: dict[str, str] | None = None
) -> argparse.Namespace:
    """The options every benchmark takes, plus its own on/off `flags` (name: help)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--events", type=int, default=default_events, help="approximate event count")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--old-design", default=None, help="git revision of an earlier design to measure as a baseline too"
    )
    for flag, help_text in (flags or {}).items():
        parser.add_argument(flag, action="store_true", help=help_text)
    return parser.parse_args()


def history_file(events: int, seed: int) -> Path:
    """A generated JSONL history of about `events` records (cached between runs)."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"history-{events}-{seed}.jsonl"
    if not path.exists():
        customers = max(10, int(events / (MONTHS * EVENTS_PER_CUSTOMER_MONTH)))
        config = GeneratorConfig(
            customers=customers, employees=max(20, customers // 150), months=MONTHS, seed=seed
        )
        partial = path.with_suffix(".partial")
        with partial.open("w") as handle:
            write_history(config, handle)
        partial.rename(path)
    return path


def prepared_ledger(events: int, seed: int) -> LedgerApplication:
    """A SQLite ledger holding the generated history (cached between runs)."""
    store = BENCH_DIR / f"ledger-{events}-{seed}.sqlite"
    done = store.with_suffix(".complete")
    if not done.exists():
        for leftover in BENCH_DIR.glob(f"ledger-{events}-{seed}.sqlite*"):
            leftover.unlink()
        app = LedgerApplication(Settings(store=str(store)).eventsourcing_env())
        ingest_records(
            app,
            read_file(history_file(events, seed), RecordParser(app.registry)),
            RejectSink(None, echo=None),
            batch_size=5000,
        )
        done.touch()
        return app
    return LedgerApplication(Settings(store=str(store)).eventsourcing_env())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def kafka() -> Iterator[str]:
    """CRM_LEDGER_BOOTSTRAP if set, else a private broker started and stopped here."""
    existing = os.environ.get("CRM_LEDGER_BOOTSTRAP")
    if existing:
        yield existing
        return
    port = _free_port()
    while port > 65000:
        port = _free_port()
    config = broker.BrokerConfig(data_dir=BENCH_DIR / f"kafka-{port}", port=port, controller_port=port + 1)
    broker.start(config, timeout_s=120)
    try:
        yield config.bootstrap
    finally:
        broker.stop(config)


def timed(work: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def report(name: str, figures: dict[str, Any]) -> None:
    """Print one JSON object: the benchmark, the machine, the figures."""
    print(
        json.dumps(
            {
                "benchmark": name,
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                **figures,
            },
            indent=2,
        )
    )
