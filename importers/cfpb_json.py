"""The CFPB Consumer Complaint Database's JSON download, mapped as its CSV export is.

The JSON download is one array of complaint objects whose keys are the API's field names
(`complaint_id`, `date_received`, `company_response`, ...); JSON lines of such objects are
read too, and so are objects keyed by the CSV's column names and the API's search results
(`format=json`: each hit's complaint is its `_source`). Each complaint is mapped to the CSV
export's columns and then to ledger records exactly as a CSV row is
(`importers.cfpb.complaint_parts`), so the same complaint gives the same events from either
download. Dates given as timestamps (`2019-09-24T12:00:00-05:00`, as the API writes them)
count by their date, as the CSV's dates do. An object that is not a complaint, a value that
is an object or a list, or an item the scanner cannot read is rejected alone, with its
location (`complaints.json[12]`) and field.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from importers.cfpb import REQUIRED, DeskJoins, canonical_header
from importers.json_items import JsonItem, json_items
from ledger.errors import ValidationError
from ledger.ingest import SourceRecord, damaged_input, load_json_object, mapped_records, refuse_damaged
from ledger.inputs import open_input
from ledger.records import RecordParser

#: The API's (and the JSON download's) field names, as the CSV export's columns.
JSON_FIELDS = {
    "date_received": "Date received",
    "product": "Product",
    "sub_product": "Sub-product",
    "issue": "Issue",
    "sub_issue": "Sub-issue",
    "complaint_what_happened": "Consumer complaint narrative",
    "company_public_response": "Company public response",
    "company": "Company",
    "state": "State",
    "zip_code": "ZIP code",
    "tags": "Tags",
    "consumer_consent_provided": "Consumer consent provided?",
    "submitted_via": "Submitted via",
    "date_sent_to_company": "Date sent to company",
    "company_response": "Company response to consumer",
    "timely": "Timely response?",
    "consumer_disputed": "Consumer disputed?",
    "complaint_id": "Complaint ID",
}
_DATES = frozenset({"Date received", "Date sent to company"})
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T")


def json_row(raw: dict[str, Any]) -> dict[str, str]:
    """A complaint object as a CSV export's row: its known fields as text, by column name.

    Unknown keys are ignored, as unknown CSV columns are (`has_narrative`, say). Raises
    ValidationError naming the field whose value is not a text, number, boolean or null.
    """
    row: dict[str, str] = {}
    for key, value in raw.items():
        column = JSON_FIELDS.get(key) or canonical_header(key)
        if value is None:
            text = ""
        elif isinstance(value, bool):
            text = "Yes" if value else "No"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            raise ValidationError(key, f"is a JSON {type(value).__name__}, not a value")
        if column in _DATES and _TIMESTAMP.match(text):
            text = text[:10]
        row[column] = text
    return row


def read_cfpb_json(path: Path, parser: RecordParser, max_record_bytes: int) -> Iterator[SourceRecord]:
    """Stream a CFPB JSON download: one SourceRecord per ledger event, or one per rejected item.

    Refuses the whole file, as a CSV without the export's columns, when its first object has
    none of the columns a complaint needs.
    """
    desks = DeskJoins()
    with open_input(path) as handle:
        first = True
        for item in json_items(path.name, handle, max_record_bytes):
            row = _row(item)
            if first and isinstance(row, dict):
                first = False
                if not any(column in row for column in REQUIRED):
                    refuse_damaged(path.name, handle)
                    raise ValidationError(
                        REQUIRED[0], f"{path.name}: the first item has no such field (is this a CFPB export?)"
                    )
            if isinstance(row, SourceRecord):
                yield row
                continue
            yield from mapped_records(
                item.location,
                row,
                item.size,
                parser,
                desks.records,
                # Only a rejected item is shown: its text is decoded then (it is valid UTF-8).
                shown=functools.partial(bytes.decode, item.text or b""),
                taken=desks.taken,
            )
        yield from damaged_input(path.name, handle)


def _row(item: JsonItem) -> dict[str, str] | SourceRecord:
    """The item as a CSV row, or its reject."""
    if item.text is None:
        return SourceRecord(item.location, None, None, item.error, item.size)
    try:
        text = item.text.decode("utf-8")
    except UnicodeDecodeError as error:
        problem = ValidationError("(record)", f"not UTF-8 at byte {error.start}")
        return SourceRecord(item.location, None, None, problem, item.size)
    if not text.startswith("{"):
        problem = ValidationError("(record)", "not a JSON object")
        return SourceRecord(item.location, text, None, problem, item.size)
    try:
        raw = load_json_object(text)
        # The API's search results wrap each complaint as a hit: its fields are its `_source`.
        source = raw.get("_source")
        return json_row(source if isinstance(source, dict) else raw)
    except ValidationError as error:
        return SourceRecord(item.location, text, None, error, item.size)
