"""Errors of the write model: every rejection names the record and the field."""

from __future__ import annotations

from crm_ledger.errors import CrmLedgerError, TransientError


class ValidationError(CrmLedgerError):
    """A record or command was refused. Nothing was written for it."""

    def __init__(self, field: str, reason: str, *, record: str | None = None) -> None:
        self.field = field
        self.reason = reason
        self.record = record
        where = f"{record}: " if record else ""
        super().__init__(f"{where}field {field!r}: {reason}")


class IllegalTransitionError(ValidationError):
    """A lifecycle step that the aggregate's state machine does not allow."""


class ConflictError(ValidationError):
    """An event id the ledger already holds, given again with other content or for another entity."""


class StoreBusyError(TransientError):
    """Concurrent writers kept taking the same keys; the batch was not written and can be re-run."""


class KeyStoreError(CrmLedgerError):
    """The personal-data key store cannot be used as configured."""


#: Starts the note (PEP 678) that an error of a separate key store carries, followed by its
#: path: the error keeps its type (a lock is still contention, a duplicate key still a race),
#: and the CLI names the key store instead of the event store.
KEY_STORE_NOTE = "in the key store "


def key_store_of(error: BaseException) -> str | None:
    """The separate key store `error` came from (by its note), or None."""
    for note in getattr(error, "__notes__", ()):
        if isinstance(note, str) and note.startswith(KEY_STORE_NOTE):
            return note[len(KEY_STORE_NOTE) :]
    return None


class CheckpointError(CrmLedgerError):
    """A checkpoint given by hand cannot be read."""


class SpillError(CrmLedgerError):
    """A large run's sorted records could not be spilled to the temporary folder (TMPDIR), or
    were damaged there before they were read back."""


class WriteProcessError(CrmLedgerError):
    """The process that writes an ingest's batches failed in a way its own error cannot tell."""
