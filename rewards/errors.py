"""Errors of reward periods and statements."""

from __future__ import annotations

from crm_ledger.errors import CrmLedgerError


class PeriodError(CrmLedgerError):
    """A period operation was refused (malformed month, not ended, closed, no promoted version)."""
