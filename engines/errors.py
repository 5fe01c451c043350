"""Errors of the engines that run the read models elsewhere (Apache Spark)."""

from __future__ import annotations

from crm_ledger.errors import CrmLedgerError


class EngineError(CrmLedgerError):
    """A read model could not be built on another engine."""


class UntranslatableError(EngineError):
    """An expression of a read model has no exact form on the target engine.

    Raised instead of a translation that would change what the model computes.
    """

    def __init__(self, model: str, expression: str, reason: str) -> None:
        super().__init__(f"read model {model}: `{expression}` cannot run on Spark exactly: {reason}")
        self.model = model
        self.expression = expression
        self.reason = reason


class SparkUnavailableError(EngineError):
    """Java, pyspark or the Delta Lake jars are missing, or the session did not start."""


class SparkModelError(EngineError):
    """Spark rejected or failed a read model's statement."""
