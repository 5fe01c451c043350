"""Errors of the importers."""

from __future__ import annotations

from crm_ledger.errors import CrmLedgerError


class MappingError(CrmLedgerError):
    """The mapping file of a mapped-CSV import is invalid."""
