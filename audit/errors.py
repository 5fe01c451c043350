"""Errors of the audit commands."""

from __future__ import annotations

from crm_ledger.errors import CrmLedgerError, KafkaUnavailableError


class StatementFileError(CrmLedgerError):
    """A file given to `audit verify --statement` is not a statement."""


class ReproduceError(CrmLedgerError):
    """The version cannot be reproduced as it stands (still building, unknown...)."""


class CheckpointsUnreadError(KafkaUnavailableError):
    """`audit verify --checkpoints` could not read the checkpoints topic: nothing was confirmed.

    Transient, as every unreachable broker is (exit 75: run it again once Kafka is up)."""
