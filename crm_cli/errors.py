"""Errors of the command line's development services (the broker, the schema registry)."""

from __future__ import annotations

from crm_ledger.errors import CrmLedgerError


class BrokerError(CrmLedgerError):
    """The broker could not be started, reached or stopped."""


class RegistryServerError(CrmLedgerError):
    """The schema registry could not be started, reached or stopped."""
