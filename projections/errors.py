"""Errors of the read side."""

from __future__ import annotations

from crm_ledger.errors import CrmLedgerError, TransientError


class SpecError(CrmLedgerError):
    """A metric spec is invalid; names the file, line and key."""

    def __init__(self, path: str, key: str, reason: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key}: {reason}")
        self.path = path
        self.key = key
        self.line = line
        self.reason = reason


class ProjectionError(CrmLedgerError):
    """A projection database problem a user can act on (locked, unknown version...)."""


class UnknownVersionError(ProjectionError):
    """A version reference that names no version of the database."""


class AmbiguousVersionError(ProjectionError):
    """A version reference (a name) that more than one version answers to."""


class QueryRefusedError(CrmLedgerError):
    """The SQL tried to change something, or is not valid."""


class QueryStoppedError(CrmLedgerError):
    """A query ran past its time limit, or the user pressed Ctrl-C: it was interrupted."""


class DatabaseBusyError(TransientError):
    """Another process held the projection database longer than the wait allowed."""


class LogMismatchError(ProjectionError):
    """The decoded log does not continue the source it is asked to read on from."""


class StaleBatchError(TransientError):
    """A stream moved on in the decoded log since it was read (another appender of the same
    source, or a decoder worker that lost its partition): not committed; running again reads on."""
