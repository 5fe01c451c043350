"""Import the public CFPB Consumer Complaint Database export (CSV or JSON) as ledger events.

Each complaint becomes, deterministically, a consumer (CustomerRegistered), a complaint
case (CaseOpened) routed to the company as the responsible team (CaseAccepted by the
company's complaint desk at "Date sent to company", with "Timely response?"), a
CaseResolved whose resolution code comes from "Company response to consumer" (open while
"In progress"), and a CaseReopened where "Consumer disputed?" is Yes. Event ids derive from
the Complaint ID, so a re-import or an overlapping export adds nothing. The full mapping
table is in docs/imports.md. Columns are matched by header name; unknown columns are ignored;
narratives, ZIP codes, tags and consent are not imported. A row with a missing Complaint
ID, an unparseable date or no Company is rejected with its line and field.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger.errors import ValidationError
from ledger.ingest import DEFAULT_MAX_RECORD_BYTES, SourceRecord, parse_workers_for, read_row_mapped
from ledger.inputs import data_suffix, readable_start
from ledger.records import EARLIEST_MS, LATEST_MS, NUL_IN_TEXT, RecordParser, epoch_ms, format_timestamp

#: The suffixes of the JSON download (inside any compression).
JSON_SUFFIXES = frozenset({".json", ".jsonl", ".ndjson"})
_NAMESPACE = uuid.UUID("0c8f6c1e-5b0e-4f7e-9a3c-1f0d5e2b7a11")
DESK_JOINED = "1970-01-01T00:00:00Z"  # before any complaint, however old the export
CHANNELS = {
    "web": "web",
    "web referral": "web",
    "referral": "referral",
    "phone": "phone",
    "postal mail": "post",
    "fax": "fax",
    "email": "email",
}
RESOLUTIONS = {
    "closed with explanation": "explanation",
    "closed with non-monetary relief": "non_monetary_relief",
    "closed with monetary relief": "monetary_relief",
    "closed with relief": "relief",
    "closed without relief": "no_relief",
    "closed": "closed",
}
REQUIRED = ("Complaint ID", "Date received", "Company")
KNOWN_COLUMNS = (
    "Date received",
    "Product",
    "Sub-product",
    "Issue",
    "Sub-issue",
    "Consumer complaint narrative",
    "Company public response",
    "Company",
    "State",
    "ZIP code",
    "Tags",
    "Consumer consent provided?",
    "Submitted via",
    "Date sent to company",
    "Company response to consumer",
    "Timely response?",
    "Consumer disputed?",
    "Complaint ID",
)
#: The columns the mapping reads (the narrative and public response are not imported).
READ_COLUMNS = tuple(
    c for c in KNOWN_COLUMNS if c not in {"Consumer complaint narrative", "Company public response"}
)
#: The longest cell the mapping takes (company names, products and issues are far shorter).
MAX_CELL_CHARS = 2_000
_CANONICAL = {" ".join(c.lower().split()): c for c in KNOWN_COLUMNS}


def canonical_header(name: str) -> str:
    """The published column name for a header cell, ignoring case and spacing."""
    return _CANONICAL.get(" ".join(name.lower().split()), name.strip())


def event_id(complaint_id: str, step: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{complaint_id}:{step}"))


#: A date written as a timestamp: `2019-09-24T12:00:00-05:00` (the API's form),
#: `2019-09-24 12:00:00` (a spreadsheet's).
_TIMESTAMP = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[T ]", re.ASCII)


def parse_date(value: str, field: str, latest_ms: int = LATEST_MS) -> int:
    """CFPB dates: YYYY-MM-DD (current exports) or MM/DD/YYYY (older ones), as epoch ms.

    A date after `latest_ms` (the parser's `latest_ms`) is refused here, naming the column:
    the ledger's own check would name `occurred_at`, which the export has no column of.

    A timestamp counts by the date it is written with, its time and zone dropped, in the
    CSV export as in the JSON download: a complaint gives the same events from either.
    """
    text = value.strip()
    stamped = _TIMESTAMP.match(text)
    if stamped is not None:
        try:
            datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValidationError(field, f"not a date: {value!r}") from None
        text = stamped.group(1)
    for pattern in ("%Y-%m-%d", "%m/%d/%Y", "%m/%d/%y"):
        try:
            moment = datetime.strptime(text, pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
        millis = epoch_ms(moment)
        if not EARLIEST_MS <= millis < LATEST_MS:
            # Refused here, naming the column: the ledger's own check would name occurred_at.
            raise ValidationError(field, f"out of range (1900-01-01 to 2199-12-31): {value!r}")
        if millis > latest_ms:
            raise ValidationError(
                field, f"is in the future: {value!r} (tolerance until {format_timestamp(latest_ms)})"
            )
        return millis
    raise ValidationError(field, f"not a date: {value!r}")


#: A Complaint ID as exports write it: digits, or digits with a zero fraction (a
#: spreadsheet's "3384392.0").
_COMPLAINT_ID = re.compile(r"(\d{1,20})(?:\.0+)?", re.ASCII)


def _complaint_id(text: str) -> str:
    """The complaint's number in one spelling ("3384392", whatever zeros or fraction it came
    with), so that the same complaint always gets the same ids."""
    if not text:
        raise ValidationError("Complaint ID", "is missing")
    match = _COMPLAINT_ID.fullmatch(text)
    if match is None:
        raise ValidationError(
            "Complaint ID", f"expected a complaint number such as 3384392, got {text[:40]!r}"
        )
    return str(int(match.group(1)))


def _yes_no(value: str | None) -> bool | None:
    text = (value or "").strip().lower()
    if text in {"yes", "y", "true"}:
        return True
    if text in {"no", "n", "false"}:
        return False
    return None


class DeskJoins:
    """Which companies' complaint desks have joined: the desk joins with its company's first
    complaint row whose records are all valid (a refused row joins nothing, so the company's
    later complaints are not refused for want of a desk)."""

    def __init__(self, latest_ms: int = LATEST_MS) -> None:
        self.joined: set[str] = set()
        #: The latest date a complaint may carry (`RecordParser.latest_ms`).
        self.latest_ms = latest_ms

    def records(self, row: dict[str, str]) -> list[dict[str, Any]]:
        """The ledger records for one complaint row, the desk's first (raises ValidationError)."""
        company, desk, records = complaint_parts(row, self.latest_ms)
        return records if company in self.joined else [desk, *records]

    def taken(self, records: list[dict[str, Any]]) -> None:
        """The row's records were all valid: a desk record among them has joined."""
        first = records[0] if records else None
        if first is not None and first["type"] == "EmployeeJoined":
            self.joined.add(first["team_id"])


def complaint_parts(
    row: dict[str, str], latest_ms: int = LATEST_MS
) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """One complaint row's company, its desk's EmployeeJoined record and the complaint's records.

    Its dates may lie up to `latest_ms` (the parser's `latest_ms`).

    Needs no state, so worker processes can run it; whether the desk record is the company's
    first is decided where rows are taken in file order (`DeskJoins`). Raises
    ValidationError on a bad row.
    """
    cells = {k: (v or "").strip() for k, v in row.items() if k}
    for column in READ_COLUMNS:
        if len(cells.get(column, "")) > MAX_CELL_CHARS:
            # Refused here, with the whole row: a record made too large by it would be refused
            # alone later, and the row's other records would land without it.
            raise ValidationError(column, f"longer than {MAX_CELL_CHARS:,} characters")
        if "\x00" in cells.get(column, ""):
            # Named by its column here: the ledger field it lands in (a desk's employee id
            # made from the company, say) would not tell the user which cell to fix.
            raise ValidationError(column, NUL_IN_TEXT)
    complaint = _complaint_id(cells.get("Complaint ID", ""))
    if not cells.get("Date received"):
        raise ValidationError("Date received", "is missing")
    received = parse_date(cells["Date received"], "Date received", latest_ms)
    company = cells.get("Company", "")
    if not company:
        raise ValidationError("Company", "is missing")
    sent = (
        parse_date(cells["Date sent to company"], "Date sent to company", latest_ms)
        if cells.get("Date sent to company")
        else None
    )
    desk = f"company:{company}"
    case_id = f"cfpb:{complaint}"
    customer_id = f"cfpb-consumer:{complaint}"
    at = format_timestamp(received)
    joined = {
        "type": "EmployeeJoined",
        "event_id": str(uuid.uuid5(_NAMESPACE, f"desk:{company}")),
        "occurred_at": DESK_JOINED,
        "employee_id": desk,
        "team_id": company,
        "role": "company",
        "name": company,
    }
    records: list[dict[str, Any]] = []
    records.append(
        {
            "type": "CustomerRegistered",
            "event_id": event_id(complaint, "consumer"),
            "occurred_at": at,
            "customer_id": customer_id,
            "segment": "consumer",
            "region": cells.get("State") or "unknown",
        }
    )
    issue = " / ".join(p for p in (cells.get("Issue"), cells.get("Sub-issue")) if p)
    records.append(
        {
            "type": "CaseOpened",
            "event_id": event_id(complaint, "opened"),
            "occurred_at": at,
            "case_id": case_id,
            "customer_id": customer_id,
            "kind": "complaint",
            "channel": CHANNELS.get(cells.get("Submitted via", "").lower(), "other"),
            "topic": cells.get("Product") or None,
            "summary": issue or None,
            "team_id": company,
        }
    )
    if sent is None:
        return company, joined, records
    routed = max(sent, received)
    records.append(
        {
            "type": "CaseAccepted",
            "event_id": event_id(complaint, "sent"),
            "occurred_at": format_timestamp(routed),
            "case_id": case_id,
            "employee_id": desk,
            "timely": _yes_no(cells.get("Timely response?")),
        }
    )
    resolution = RESOLUTIONS.get(cells.get("Company response to consumer", "").lower())
    if resolution is None:
        return company, joined, records
    records.append(
        {
            "type": "CaseResolved",
            "event_id": event_id(complaint, "resolved"),
            "occurred_at": format_timestamp(routed),
            "case_id": case_id,
            "employee_id": desk,
            "resolution_code": resolution,
            "first_contact": False,
        }
    )
    if _yes_no(cells.get("Consumer disputed?")):
        records.append(
            {
                "type": "CaseReopened",
                "event_id": event_id(complaint, "disputed"),
                "occurred_at": format_timestamp(routed + 1000),
                "case_id": case_id,
                "reason": "consumer disputed",
            }
        )
    return company, joined, records


def read_cfpb(
    path: Path,
    parser: RecordParser,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    workers: int | None = None,
) -> Iterator[SourceRecord]:
    """Stream a CFPB export: one SourceRecord per ledger event, or one per rejected row.

    A `.json` (`.jsonl`, `.ndjson`) file, zipped or not, is the JSON download
    (`importers.cfpb_json`). Large exports are mapped by `workers` processes (by default one
    per core, see `parse_workers_for`); the records are the same either way.
    """
    readable_start(path)
    suffix = data_suffix(path)
    if suffix != ".csv" and suffix not in JSON_SUFFIXES:
        known = "a CFPB export is .csv or .json, plain or zipped"
        raise ValidationError("(file)", f"{path.name}: unknown format {suffix!r} ({known})")
    workers = parse_workers_for(path) if workers is None else workers
    if suffix in JSON_SUFFIXES:
        from importers.cfpb_json import read_cfpb_json  # noqa: PLC0415 - it imports this module

        return read_cfpb_json(path, parser, max_record_bytes, workers)
    if workers > 0:
        from importers.cfpb_workers import read_cfpb_in_workers  # noqa: PLC0415 - it imports this module

        return read_cfpb_in_workers(path, parser, max_record_bytes, workers)
    desks = DeskJoins(parser.latest_ms)
    return read_row_mapped(
        path,
        parser,
        desks.records,
        header=canonical_header,
        required=REQUIRED,
        kind="CFPB export",
        max_record_bytes=max_record_bytes,
        taken=desks.taken,
    )
