"""Open the ledger application on the event store the settings name."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

from crm_ledger.errors import ConfigurationError, CrmLedgerError
from crm_ledger.settings import POSTGRES_SCHEMES, Settings, sqlite_tables
from ledger.application import LedgerApplication


def open_ledger(
    settings: Settings, goal_components: Iterable[str] = (), *, read_only: bool = False
) -> LedgerApplication:
    """The ledger application on the configured event store (SQLite file or PostgreSQL).

    Team goals may gauge the team KPIs, the score, and the reward components named in
    `goal_components` (the command line passes the metric spec's). `read_only` is for
    commands that only read an existing ledger: a SQLite store is then read also from a
    read-only folder (an auditor's copy).
    """
    env = settings.eventsourcing_env(read_only=read_only)
    if env["PERSISTENCE_MODULE"] == "eventsourcing.postgres" and importlib.util.find_spec("psycopg") is None:
        raise ConfigurationError(
            "a postgresql:// store needs the PostgreSQL extra: pip install 'crm-ledger[postgres]'"
        )
    return LedgerApplication(env, goal_components=goal_components)


def require_existing_store(settings: Settings) -> None:
    """Refuse a SQLite store that does not exist yet: commands that only read the ledger
    (audits) would otherwise create an empty one and report on that."""
    if settings.store.startswith(POSTGRES_SCHEMES):
        return
    if not Path(settings.store).is_file():
        raise CrmLedgerError(
            f"{settings.store}: no such ledger store (CRM_LEDGER_STORE or --store names the one to read)"
        )
    # An empty file (or a database without tables) has no ledger to read either: it was made
    # one, and the command reported on no events.
    tables = sqlite_tables(Path(settings.store))
    if tables is not None and not tables:
        raise CrmLedgerError(
            f"{settings.store}: holds no ledger, it is empty "
            "(CRM_LEDGER_STORE or --store names the one to read)"
        )
