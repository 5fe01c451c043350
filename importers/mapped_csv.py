"""Import any CSV export through a mapping file (TOML): columns to ledger event fields.

A mapping lists the events one row produces:

    [[events]]
    type = "CaseOpened"
    when = "Created at"                      # optional: only when this column is not empty
    id = "zendesk:{Ticket ID}:opened"        # template of the idempotency key (hashed into a UUID)
    occurred_at = "{Created at}"

    [events.fields]
    case_id = "zendesk:{Ticket ID}"          # a template: {Column} is replaced by the cell
    kind = "request"                         # no braces: a literal
    channel = { column = "Via", map = { "Web form" = "web", Voice = "phone" }, default = "other" }

Event ids derive from the rendered `id`, so re-importing adds nothing. A row whose template
names a missing column, or whose event fails validation, is rejected with its line and field.
"""

from __future__ import annotations

import re
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from importers.errors import MappingError
from ledger.errors import ValidationError
from ledger.ingest import DEFAULT_MAX_RECORD_BYTES, SourceRecord, read_row_mapped
from ledger.inputs import readable_start
from ledger.records import RecordParser
from ledger.vault import PERSONAL_FIELDS

_NAMESPACE = uuid.UUID("3f9a7b1c-2d4e-4a5b-8c6d-7e8f9a0b1c2d")
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
#: The keys an [[events]] table may have.
_EVENT_KEYS = frozenset({"type", "when", "id", "occurred_at", "fields"})
#: The keys a field's `{ column = ... }` table may have.
_COLUMN_SPEC_KEYS = frozenset({"column", "map", "default"})




@dataclass(frozen=True)
class EventMapping:
    type: str
    when: str | None
    id_template: str
    occurred_at: Any
    fields: Mapping[str, Any]


def load_mapping(path: Path, parser: RecordParser) -> list[EventMapping]:
    """Read and check a mapping file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise MappingError(f"{path}: {error}") from error
    events = data.get("events")
    if not isinstance(events, list) or not events:
        raise MappingError(f"{path}: needs at least one [[events]] table")
    mappings = []
    for number, event in enumerate(events, start=1):
        where = f"{path}: events #{number}"
        if not isinstance(event, dict):
            raise MappingError(f"{where}: must be a table")
        unknown = sorted(set(event) - _EVENT_KEYS)
        if unknown:
            # A typo ("wehn") would otherwise be ignored, and the event mapped unconditionally.
            known = ", ".join(sorted(_EVENT_KEYS))
            raise MappingError(f"{where}: {unknown[0]}: unknown key (known: {known})")
        if event.get("type") not in parser.event_types:
            raise MappingError(f"{where}: type: unknown event type {event.get('type')!r}")
        for key in ("id", "occurred_at"):
            if key not in event:
                raise MappingError(f"{where}: {key}: is required")
        # A list or number here would be rendered as its Python text: one id for every row.
        if not isinstance(event["id"], str):
            raise MappingError(f"{where}: id: must be a template (text such as \"ticket:{{Ticket ID}}\")")
        if "when" in event and not isinstance(event["when"], str):
            raise MappingError(f"{where}: when: must be a column name (text)")
        fields = event.get("fields", {})
        if not isinstance(fields, dict):
            raise MappingError(f"{where}: fields: must be a table")
        occurred_at = _literal(f"{where}: occurred_at", event["occurred_at"])
        fields = {name: _literal(f"{where}: {name}", spec) for name, spec in fields.items()}
        for name, spec in fields.items():
            if isinstance(spec, dict):
                _check_column_spec(f"{where}: {name}", spec)
        for key, spec in {"id": event["id"], "occurred_at": event["occurred_at"], **fields}.items():
            rest = _PLACEHOLDER.sub("", spec) if isinstance(spec, str) else ""
            if "{" in rest or "}" in rest:
                raise MappingError(f"{where}: {key}: unbalanced brace in {spec!r} (write {{Column}})")
        mappings.append(
            EventMapping(event["type"], event.get("when"), str(event["id"]), occurred_at, fields)
        )
    return mappings


def _literal(where: str, spec: Any) -> Any:
    """A spec with TOML's own dates and times (`occurred_at = 2026-01-01`, unquoted) as the
    ISO-8601 text a cell would hold: the ledger takes text or epoch milliseconds, so every row
    was refused for the date. A time of day alone names no moment and refuses the mapping.
    A column's table is looked into: its `default` and the values of its `map` are such specs."""
    if isinstance(spec, datetime | date):
        return spec.isoformat()
    if isinstance(spec, time):
        raise MappingError(f"{where}: a time of day alone is no timestamp (write a date and time)")
    if isinstance(spec, dict):
        given = dict(spec)
        if "default" in given:
            given["default"] = _literal(f"{where}: default", given["default"])
        if isinstance(given.get("map"), dict):
            given["map"] = {cell: _literal(f"{where}: map: {cell}", v) for cell, v in given["map"].items()}
        return given
    return spec


def _check_column_spec(where: str, spec: Mapping[str, Any]) -> None:
    # A misspelt `default` or `map` would otherwise be ignored and the cell passed on as it is.
    unknown = sorted(set(spec) - _COLUMN_SPEC_KEYS)
    if unknown:
        known = ", ".join(sorted(_COLUMN_SPEC_KEYS))
        raise MappingError(f"{where}: {unknown[0]}: unknown key (known: {known})")
    if not isinstance(spec.get("column"), str):
        raise MappingError(f"{where}: column: must be a column name (text)")
    if "map" in spec and not isinstance(spec["map"], dict):
        raise MappingError(f"{where}: map: must be a table of cell = value")


def _render(spec: Any, row: Mapping[str, str]) -> Any:
    # Every column a spec reads is in the row: the header was checked for them first.
    if isinstance(spec, dict):
        value: Any = (row[str(spec.get("column"))] or "").strip()
        table = spec.get("map")
        if isinstance(table, dict):
            value = table.get(value, spec.get("default", value))
        return value if value != "" else spec.get("default")
    if isinstance(spec, str):
        return _PLACEHOLDER.sub(lambda m: (row[m.group(1)] or "").strip(), spec)
    return spec


def _event_key(template: str, row: Mapping[str, str]) -> str:
    """The rendered `id` template of one event (its idempotency key).

    Raises ValidationError naming a column the template reads whose cell is empty: every
    such row would render the same key (`helpdesk:agent:` for each unassigned ticket), so
    unrelated rows would become one fact, duplicates or conflicts. A `when` on that column
    skips the event instead.
    """
    for column in _PLACEHOLDER.findall(template):
        if not (row[column] or "").strip():
            raise ValidationError(column, f"is empty, and the event id {template!r} needs it")
    return str(_render(template, row))


def row_records(row: Mapping[str, str], mappings: list[EventMapping]) -> list[dict[str, Any]]:
    """The raw ledger records one CSV row maps to (raises ValidationError on a bad row)."""
    records = []
    for mapping in mappings:
        if mapping.when and not (row.get(mapping.when) or "").strip():
            continue
        key = _event_key(mapping.id_template, row)
        record: dict[str, Any] = {
            "type": mapping.type,
            "event_id": str(uuid.uuid5(_NAMESPACE, key)),
            "occurred_at": _render(mapping.occurred_at, row),
        }
        for name, spec in mapping.fields.items():
            value = _render(spec, row)
            if value not in (None, ""):
                record[name] = value
        records.append(record)
    return records


def referenced_columns(mappings: list[EventMapping]) -> tuple[str, ...]:
    """Every column the mappings read (templates, column specs and `when`), in first-use order."""
    columns: dict[str, None] = {}
    for mapping in mappings:
        for spec in (mapping.id_template, mapping.occurred_at, *mapping.fields.values()):
            columns.update(dict.fromkeys(_columns_of(spec)))
        if mapping.when:
            columns[mapping.when] = None
    return tuple(columns)


def personal_columns(mappings: list[EventMapping]) -> frozenset[str]:
    """Columns that feed customers' personal fields: redacted in the rejects file."""
    columns: set[str] = set()
    for mapping in mappings:
        for name, spec in mapping.fields.items():
            if name in PERSONAL_FIELDS.get(mapping.type, ()):
                columns.update(_columns_of(spec))
    return frozenset(columns)


def _columns_of(spec: Any) -> list[str]:
    """The columns one field spec reads: a table's `column`, or a template's placeholders."""
    if isinstance(spec, dict):
        return [str(spec.get("column"))]
    if isinstance(spec, str):
        return _PLACEHOLDER.findall(spec)
    return []


def read_mapped_csv(
    path: Path, mapping_path: Path, parser: RecordParser, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> Iterator[SourceRecord]:
    """Stream a CSV export through a mapping: one SourceRecord per event or per rejected row."""
    mappings = load_mapping(mapping_path, parser)
    readable_start(path)
    return read_row_mapped(
        path,
        parser,
        lambda row: row_records(row, mappings),
        # Checked against the header once, before any row: a misspelt column refuses the file.
        required=referenced_columns(mappings),
        kind=f"file {mapping_path.name} describes",
        personal_columns=personal_columns(mappings),
        max_record_bytes=max_record_bytes,
    )
