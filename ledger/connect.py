"""Open the ledger application on the event store the settings name."""

from __future__ import annotations

import importlib.util

from crm_ledger.errors import ConfigurationError
from crm_ledger.settings import Settings
from ledger.application import LedgerApplication


def open_ledger(settings: Settings) -> LedgerApplication:
    """The ledger application on the configured event store (SQLite file or PostgreSQL)."""
    env = settings.eventsourcing_env()
    if env["PERSISTENCE_MODULE"] == "eventsourcing.postgres" and importlib.util.find_spec("psycopg") is None:
        raise ConfigurationError(
            "a postgresql:// store needs the PostgreSQL extra: pip install 'crm-ledger[postgres]'"
        )
    return LedgerApplication(env)
