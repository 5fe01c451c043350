"""`schemas check`: every version of every event type can read all older data.

Three checks, each failure naming the file or the schema, version and field:
1. every `.avsc` parses as Avro and is named as its file says;
2. the lock file has exactly one stable id per (subject, version) in the folder;
3. for each pair (older writer, newer reader) of an event type, generated sample records
   written with the older version are decoded with the newer one (fastavro schema
   resolution), after a static pass that names the offending field.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.utils import generate_many

from schemas.errors import SchemaError
from schemas.metadata import problems as metadata_problems
from schemas.registry import LOCK_FILE_NAME, NAMESPACE, load_schema_file, read_lock, schema_files

SAMPLES_PER_PAIR = 25


@dataclass(frozen=True)
class Problem:
    """One reason the schema folder is not acceptable."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _type_name(avro_type: Any) -> str:
    if isinstance(avro_type, dict):
        return str(avro_type.get("logicalType") or avro_type.get("type"))
    if isinstance(avro_type, list):
        return "|".join(_type_name(t) for t in avro_type)
    return str(avro_type)


def _static_problems(writer: dict[str, Any], reader: dict[str, Any]) -> list[str]:
    """Field-level reasons a reader cannot resolve data of a writer."""
    problems = []
    writer_fields = {f["name"]: f for f in writer["fields"]}
    for field in reader["fields"]:
        name = field["name"]
        if name not in writer_fields and "default" not in field:
            problems.append(f"field {name!r} was added without a default")
    return problems


def check_folder(folder: Path) -> list[Problem]:
    """All problems of a schema folder (empty when it is compatible and locked)."""
    problems: list[Problem] = []
    try:
        files = schema_files(folder)
    except SchemaError as error:
        return [Problem(str(folder), str(error).removeprefix(f"{folder}: "))]
    parsed: dict[str, dict[int, tuple[Path, dict[str, Any], Any]]] = {}
    for event_type, version, path in files:
        try:
            raw, schema = load_schema_file(path, event_type)
        except SchemaError as error:
            problems.append(Problem(path.name, str(error).removeprefix(f"{path.name}: ")))
            continue
        parsed.setdefault(event_type, {})[version] = (path, raw, schema)

    try:
        lock: dict[str, dict[str, int]] | None = read_lock(folder)
    except SchemaError as error:
        problems.append(Problem(LOCK_FILE_NAME, str(error).removeprefix(f"{LOCK_FILE_NAME}: ")))
        # Not "every file is missing from the lock" as well: one line says what is wrong.
        lock = None
    seen_ids: dict[int, str] = {}
    for subject, locked in (lock or {}).items():
        for locked_version, schema_id in locked.items():
            label = f"{subject} v{locked_version}"
            if schema_id in seen_ids:
                problems.append(
                    Problem(
                        LOCK_FILE_NAME,
                        f"id {schema_id} used by both {seen_ids[schema_id]} and {label}",
                    )
                )
            seen_ids[schema_id] = label
            event_type = subject.removeprefix(f"{NAMESPACE}.")
            if not any(t == event_type and v == int(locked_version) for t, v, _ in files):
                problems.append(Problem(LOCK_FILE_NAME, f"{label} has no schema file"))
    for event_type, version, path in files:
        if lock is not None and str(version) not in lock.get(f"{NAMESPACE}.{event_type}", {}):
            problems.append(Problem(path.name, f"not in {LOCK_FILE_NAME}: run `crm-ledger schemas lock`"))

    declared = {path.name: raw for by_version in parsed.values() for path, raw, _ in by_version.values()}
    for message in metadata_problems(declared):
        where, _, reason = message.partition(": ")
        problems.append(Problem(where, reason))
    for event_type, by_version in sorted(parsed.items()):
        ordered = sorted(by_version)
        for i, newer in enumerate(ordered):
            for older in ordered[:i]:
                problems.extend(
                    _pair_problems(event_type, by_version[older], older, by_version[newer], newer)
                )
    return problems


def _pair_problems(
    event_type: str,
    writer: tuple[Path, dict[str, Any], Any],
    writer_version: int,
    reader: tuple[Path, dict[str, Any], Any],
    reader_version: int,
) -> list[Problem]:
    where = f"{reader[0].name}"
    prefix = f"{event_type} v{reader_version} cannot read v{writer_version} data"
    static = _static_problems(writer[1], reader[1])
    if static:
        return [Problem(where, f"{prefix}: {reason}") for reason in static]
    for record in generate_many(writer[2], SAMPLES_PER_PAIR):
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, writer[2], record)
        buffer.seek(0)
        try:
            fastavro.schemaless_reader(buffer, writer[2], reader[2])
        except Exception as error:  # noqa: BLE001 - any resolution failure is the finding
            return [Problem(where, f"{prefix}: {error}")]
    return []
