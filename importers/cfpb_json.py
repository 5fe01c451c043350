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
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from importers.cfpb import READ_COLUMNS, REQUIRED, DeskJoins, canonical_header
from ledger.errors import ValidationError
from ledger.ingest import SourceRecord, damaged_input, load_json_object, mapped_records, refuse_damaged
from ledger.inputs import open_input
from ledger.json_items import JsonItem, json_items
from ledger.records import RecordParser, is_unicode_text

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
#: The columns the mapping reads: the narrative and public response, free text that is not
#: imported, are skipped unchecked, as a CSV export's are.
_READ = frozenset(READ_COLUMNS)


def json_row(raw: dict[str, Any]) -> dict[str, str]:
    """A complaint object as a CSV export's row: the fields it maps as text, by column name.

    Unknown keys are ignored whatever they hold, as unknown CSV columns are (`has_narrative`,
    say), and so are the fields that are not imported (the narrative, the public response).
    Raises ValidationError naming the field whose value is not a text, number, boolean or
    null, or is text with an unpaired surrogate escape, or a second key for one field
    (`complaint_id` beside `Complaint ID`).
    """
    row: dict[str, str] = {}
    keys: dict[str, str] = {}  # each column's key in the object
    for key, value in raw.items():
        column = JSON_FIELDS.get(key) or canonical_header(key)
        if column not in _READ:
            continue  # whatever it holds, as an unknown or unread CSV column
        if column in keys:
            # `complaint_id` and `Complaint ID` in one object: neither is known to be the one
            # meant, and taking the last would import another complaint than the first names.
            raise ValidationError(column, f"given twice, as {keys[column]!r} and {key!r}")
        keys[column] = key
        if value is None:
            text = ""
        elif isinstance(value, bool):
            text = "Yes" if value else "No"
        elif isinstance(value, str):
            if not value.isascii() and not is_unicode_text(value):
                raise ValidationError(key, "is not valid Unicode text")
            text = value
        elif isinstance(value, int | float):
            text = str(value)
        else:
            raise ValidationError(key, f"is a JSON {type(value).__name__}, not a value")
        row[column] = text  # a date written as a timestamp counts by its date (`parse_date`)
    return row


def complaint_row(text: bytes) -> dict[str, str]:
    """An item's text as a CSV export's row (raises ValidationError)."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValidationError("(record)", f"not UTF-8 at byte {error.start}") from None
    if not decoded.startswith("{"):
        raise ValidationError("(record)", "not a JSON object")
    raw = load_json_object(decoded)
    # The API's search results wrap each complaint as a hit: its fields are its `_source`.
    source = raw.get("_source")
    return json_row(source if isinstance(source, dict) else raw)


def shown(text: bytes | None) -> str | None:
    """An item as the rejects file shows it."""
    return None if text is None else text.decode("utf-8", "replace")


#: How far (items, bytes) the first complaint is looked for, to refuse a file that is no export.
PEEK_ITEMS = 1000
PEEK_BYTES = 8 << 20


def export_items(path: Path, handle: IO[bytes], max_record_bytes: int) -> Iterator[JsonItem]:
    """The file's items, once its first readable complaint shows it is a CFPB export.

    Raises ValidationError, as for a CSV without the export's columns, when that complaint
    has none of the fields a complaint needs. The items before it are held meanwhile (a
    bounded number and size of them: beyond that no file-wide check is made).
    """
    items = json_items(path.name, handle, max_record_bytes)
    head: list[JsonItem] = []
    held = 0
    for item in items:
        head.append(item)
        held += item.size
        row = _readable(item)
        if row is not None:
            if not any(column in row for column in REQUIRED):
                refuse_damaged(path.name, handle)
                raise ValidationError(
                    REQUIRED[0], f"{path.name}: the first item has no such field (is this a CFPB export?)"
                )
            break
        if len(head) >= PEEK_ITEMS or held >= PEEK_BYTES:
            break
    return itertools.chain(head, items)


def _readable(item: JsonItem) -> dict[str, str] | None:
    """The item's row, or None when it is no readable complaint."""
    if item.text is None:
        return None
    try:
        return complaint_row(item.text)
    except ValidationError:
        return None


def read_cfpb_json(
    path: Path, parser: RecordParser, max_record_bytes: int, workers: int = 0
) -> Iterator[SourceRecord]:
    """Stream a CFPB JSON download: one SourceRecord per ledger event, or one per rejected item.

    With `workers`, items are mapped by that many processes (`importers.cfpb_workers`); the
    records are the same either way.
    """
    if workers > 0:
        from importers.cfpb_workers import read_cfpb_json_in_workers  # noqa: PLC0415 - it imports this module

        yield from read_cfpb_json_in_workers(path, parser, max_record_bytes, workers)
        return
    desks = DeskJoins(parser.latest_ms)
    with open_input(path) as handle:
        for item in export_items(path, handle, max_record_bytes):
            if item.text is None:
                yield SourceRecord(item.location, None, None, item.error, item.size)
                continue
            try:
                row = complaint_row(item.text)
            except ValidationError as error:
                yield SourceRecord(item.location, shown(item.text), None, error, item.size)
                continue
            yield from mapped_records(
                item.location,
                row,
                item.size,
                parser,
                desks.records,
                # Only a rejected item is shown: its text is decoded then.
                shown=functools.partial(bytes.decode, item.text, "utf-8", "replace"),
                taken=desks.taken,
            )
        yield from damaged_input(path.name, handle)
