"""A statement file checked against the ledger: what an employee was told still holds.

`statement --format json` writes the statement with the ledger position and chain head at
the close; `audit verify --statement FILE` rebuilds the statement from the ledger, compares
it field by field, and returns the position and head as a checkpoint to confirm.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit.errors import StatementFileError
from audit.verify import Finding
from ledger.application import LedgerApplication
from ledger.checkpoints import Checkpoint
from rewards.errors import PeriodError
from rewards.statement import build_statement

#: What a statement file must agree with the ledger on (adjustments are checked as a prefix:
#: the file may predate later adjustments).
_BOUND_FIELDS = (
    "event_id",
    "score",
    "issued_at",
    "version",
    "spec_name",
    "team_id",
    "components",
    "kpis",
    "team",
    "ledger_position",
    "chain_head",
)


def verify_statement(app: LedgerApplication, path: Path) -> tuple[list[Finding], Checkpoint | None]:
    """Check a statement file (`statement --format json`) against the ledger.

    The ledger must still hold the same statement (rebuilt from its events, field by
    field) and adjustments; the position and chain head it shows are returned as a
    checkpoint, so that `verify` confirms the ledger still reaches them.
    """
    where = str(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        employee, period = str(payload["employee_id"]), str(payload["period"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StatementFileError(
            f"{path}: not a statement file written by `statement --format json` ({error})"
        ) from None

    def finding(detail: str) -> Finding:
        position, event_id = payload.get("ledger_position"), payload.get("event_id")
        return Finding("statement", "ledger", position, event_id, where, detail)

    try:
        issued = json.loads(build_statement(app, employee, period).to_json())
    except PeriodError as error:
        return [finding(f"the ledger has no such statement: {error}")], None
    findings = [
        finding(f"{name}: the file says {_short(payload.get(name))}, the ledger {_short(issued.get(name))}")
        for name in _BOUND_FIELDS
        if payload.get(name) != issued.get(name)
    ]
    told, ledger = payload.get("adjustments") or [], issued["adjustments"]
    if told != ledger[: len(told)]:
        findings.append(finding("adjustments: the file lists adjustments the ledger does not hold"))
    checkpoint = None
    if payload.get("chain_head") and isinstance(payload.get("ledger_position"), int):
        checkpoint = Checkpoint(
            payload["ledger_position"], str(payload["chain_head"]), reason="statement", origin=where
        )
    return findings[:1], checkpoint


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
