"""Errors of the schema registry and the wire-format codec."""

from __future__ import annotations

from crm_ledger.errors import CrmLedgerError, TransientError


class SchemaError(CrmLedgerError):
    """A schema file, the lock file or a compatibility rule is broken."""


class DecodeError(CrmLedgerError):
    """Bytes are not a valid Confluent-framed Avro record of a known schema."""


class EncodeError(CrmLedgerError):
    """A record does not fit its schema; names the event type and field."""

    def __init__(self, event_type: str, field: str, reason: str) -> None:
        super().__init__(f"{event_type}: field {field!r}: {reason}")
        self.event_type = event_type
        self.field = field
        self.reason = reason


class RegistryError(CrmLedgerError):
    """A schema registry could not be reached or answered with an unexpected error."""


class RegistryUnavailableError(RegistryError, TransientError):
    """The schema registry did not answer: worth running again once it is up (exit 75, as an
    unreachable broker or store)."""


class RegistryMismatchError(RegistryError):
    """The registry does not hold what `schemas/` says (missing, different or incompatible).

    `differences` lists every finding, so one run shows all of them.
    """

    def __init__(self, summary: str, differences: list[str]) -> None:
        super().__init__(summary + ("\n  " + "\n  ".join(differences) if differences else ""))
        self.differences = differences
