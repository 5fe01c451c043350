"""The `schemas/` folder is the schema registry.

Every event type has one `<Type>.v<N>.avsc` per version; `schemas.lock.json` maps each
(subject, version) to a stable integer schema id. The subject is the record's full name
(Confluent's RecordNameStrategy), so standard deserializers can resolve our ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from fastavro.types import Schema

from crm_ledger.outputs import replaced_whole
from schemas.errors import SchemaError

SCHEMA_DIR = Path(__file__).resolve().parent
LOCK_FILE_NAME = "schemas.lock.json"
NAMESPACE = "crm.ledger"
_FILE_PATTERN = re.compile(r"^(?P<type>[A-Za-z][A-Za-z0-9]*)\.v(?P<version>[1-9][0-9]*)\.avsc$")


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one event type's schema, parsed and ready for fastavro."""

    event_type: str
    version: int
    schema_id: int
    path: Path
    raw: Mapping[str, Any]
    parsed: Schema = field(compare=False, repr=False)

    @property
    def subject(self) -> str:
        return f"{NAMESPACE}.{self.event_type}"

    @property
    def kind(self) -> str:
        """ "event" for ledger events, "projection" for read-model records on downstream topics."""
        return str(self.raw.get("crm.kind", "event"))

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f["name"] for f in self.raw["fields"])


def schema_files(folder: Path) -> list[tuple[str, int, Path]]:
    """(event type, version, path) for every versioned .avsc file in a folder."""
    found = []
    for path in sorted(folder.glob("*.avsc")):
        match = _FILE_PATTERN.match(path.name)
        if match is None:
            raise SchemaError(f"{path.name}: schema files must be named <Type>.v<N>.avsc")
        found.append((match["type"], int(match["version"]), path))
    if not found:
        # The wrong folder: checking nothing would pass, and locking it write an empty lock.
        raise SchemaError(f"{folder}: no schema files (<Type>.v<N>.avsc) in it")
    return found


def load_schema_file(path: Path, event_type: str) -> tuple[dict[str, Any], Schema]:
    """Read and parse one .avsc file; any defect names the file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        # A binary file, or text saved in another encoding: it was a traceback.
        raise SchemaError(f"{path.name}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    except (OSError, json.JSONDecodeError) as error:
        raise SchemaError(f"{path.name}: not valid JSON: {error}") from error
    if not isinstance(raw, dict) or raw.get("type") != "record":
        raise SchemaError(f"{path.name}: top level must be an Avro record")
    if raw.get("name") != event_type or raw.get("namespace") != NAMESPACE:
        raise SchemaError(f"{path.name}: record must be named {event_type!r} in namespace {NAMESPACE!r}")
    if not raw.get("doc"):
        raise SchemaError(f"{path.name}: record needs a 'doc'")
    try:
        parsed = fastavro.parse_schema(raw, _write_hint=False)
    except Exception as error:  # fastavro raises several unrelated types
        raise SchemaError(f"{path.name}: not a valid Avro schema: {error}") from error
    return raw, parsed


def read_lock(folder: Path) -> dict[str, dict[str, int]]:
    """The lock file's {subject: {version: id}} mapping (empty when absent)."""
    path = folder / LOCK_FILE_NAME
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {s: {str(v): int(i) for v, i in vs.items()} for s, vs in data["subjects"].items()}
    # UnicodeDecodeError is a ValueError; OSError: the lock is a folder or unreadable.
    except (OSError, json.JSONDecodeError, KeyError, AttributeError, TypeError, ValueError) as error:
        raise SchemaError(f"{LOCK_FILE_NAME}: malformed: {error}") from error


def write_lock(folder: Path, lock: Mapping[str, Mapping[str, int]]) -> None:
    """Write the lock file in a stable, diff-friendly order."""
    ordered = {s: dict(sorted(lock[s].items(), key=lambda kv: int(kv[0]))) for s in sorted(lock)}
    # Whole or not at all: written in place, a full disk or a Ctrl-C left it empty or torn,
    # and the ids it held (which never change) were lost.
    with replaced_whole(folder / LOCK_FILE_NAME) as partial:
        partial.write_text(json.dumps({"subjects": ordered}, indent=2) + "\n", encoding="utf-8")


def assign_ids(folder: Path) -> dict[str, dict[str, int]]:
    """Give every new (subject, version) the next free id; existing ids never change."""
    lock = read_lock(folder)
    next_id = max((i for vs in lock.values() for i in vs.values()), default=0) + 1
    for event_type, version, _ in schema_files(folder):
        versions = lock.setdefault(f"{NAMESPACE}.{event_type}", {})
        if str(version) not in versions:
            versions[str(version)] = next_id
            next_id += 1
    write_lock(folder, lock)
    return lock


class SchemaRegistry:
    """All schema versions of a folder, addressable by id or by (event type, version)."""

    def __init__(self, versions: Iterable[SchemaVersion]) -> None:
        self._by_id: dict[int, SchemaVersion] = {}
        self._by_type: dict[str, dict[int, SchemaVersion]] = {}
        for version in versions:
            self._by_id[version.schema_id] = version
            self._by_type.setdefault(version.event_type, {})[version.version] = version

    @classmethod
    def load(cls, folder: Path = SCHEMA_DIR) -> SchemaRegistry:
        """Load and parse every schema of the folder, checked against the lock file."""
        lock = read_lock(folder)
        versions = []
        for event_type, version, path in schema_files(folder):
            subject = f"{NAMESPACE}.{event_type}"
            schema_id = lock.get(subject, {}).get(str(version))
            if schema_id is None:
                raise SchemaError(f"{path.name}: no id in {LOCK_FILE_NAME}; run `crm-ledger schemas lock`")
            raw, parsed = load_schema_file(path, event_type)
            versions.append(SchemaVersion(event_type, version, schema_id, path, raw, parsed))
        return cls(versions)

    @property
    def event_types(self) -> list[str]:
        """Ledger event types (projection records excluded)."""
        return sorted(t for t, versions in self._by_type.items() if versions[max(versions)].kind == "event")

    @property
    def all_types(self) -> list[str]:
        return sorted(self._by_type)

    def by_id(self, schema_id: int) -> SchemaVersion | None:
        return self._by_id.get(schema_id)

    def latest(self, event_type: str) -> SchemaVersion:
        """The newest version of an event type: what the ledger writes and readers expect."""
        try:
            versions = self._by_type[event_type]
        except KeyError:
            raise SchemaError(f"unknown event type {event_type!r}") from None
        return versions[max(versions)]

    def versions(self, event_type: str) -> list[SchemaVersion]:
        return [v for _, v in sorted(self._by_type.get(event_type, {}).items())]

    def all_versions(self) -> list[SchemaVersion]:
        return [self._by_id[i] for i in sorted(self._by_id)]
