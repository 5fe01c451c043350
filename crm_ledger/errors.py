"""The root of every error this project raises on purpose.

User errors (bad input, a refused operation) are `CrmLedgerError`s and the CLI turns them
into a one-line message with exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CrmLedgerError(Exception):
    """Base class: an error a user can act on."""


class ConfigurationError(CrmLedgerError):
    """A setting, flag or required tool is missing or wrong."""


class TransientError(CrmLedgerError):
    """Worth retrying: the broker or store was briefly unavailable."""


class KafkaUnavailableError(TransientError):
    """The broker did not answer."""
