"""What the ledger needs to know about each event type, declared in its `.avsc` file.

Custom attributes (Avro ignores them; `crm-ledger schemas check` validates them):

- record `"crm.kind"`: `event` (default), `projection` or `checkpoint`;
- record `"crm.internal": true`: only the ledger itself writes this type (never an import);
- field `"crm.personal": true`: a customer's personal data, stored encrypted (crypto-shredding);
- field `"crm.filled": true`: the ledger fills it in from its own state when a client leaves
  it out (and refuses a given value that contradicts that state);
- field `"crm.ref": KIND`: the field names an entity of that kind (`customer`, `case`, ...),
  which the ledger looks up when it decides the fact;
- field `"crm.key": RANK`: the Kafka message key is the first non-empty such field, lowest
  rank first (one rank per field name across all schemas: ordering per customer first).

Adding an event type is one `.avsc` file with these attributes, its aggregate rule and tests.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parent
KINDS = frozenset({"event", "projection", "checkpoint"})
_FIELD_ATTRIBUTES = frozenset({"crm.personal", "crm.filled", "crm.ref", "crm.key"})
_RECORD_ATTRIBUTES = frozenset({"crm.kind", "crm.internal"})


@dataclass(frozen=True)
class LedgerMetadata:
    """The declarations of every event type (from its newest version)."""

    personal: Mapping[str, tuple[str, ...]]
    filled: frozenset[tuple[str, str]]
    references: tuple[tuple[str, str], ...]
    key_fields: tuple[str, ...]
    internal: frozenset[str]


def metadata_of(schemas: Iterable[Mapping[str, Any]]) -> LedgerMetadata:
    """Collect the declarations of event schemas (later versions of a type win)."""
    personal: dict[str, tuple[str, ...]] = {}
    filled: set[tuple[str, str]] = set()
    references: dict[str, str] = {}
    ranks: dict[str, int] = {}
    internal: set[str] = set()
    for raw in schemas:
        if raw.get("crm.kind", "event") != "event":
            continue
        event_type = str(raw["name"])
        if raw.get("crm.internal"):
            internal.add(event_type)
        fields = list(raw["fields"])
        names = tuple(str(f["name"]) for f in fields if f.get("crm.personal"))
        if names:
            personal[event_type] = names
        for field in fields:
            name = str(field["name"])
            if field.get("crm.filled"):
                filled.add((event_type, name))
            if "crm.ref" in field:
                references[name] = str(field["crm.ref"])
            if "crm.key" in field:
                ranks[name] = int(field["crm.key"])
    return LedgerMetadata(
        personal=personal,
        filled=frozenset(filled),
        references=tuple(sorted(references.items())),
        key_fields=tuple(sorted(ranks, key=lambda n: (ranks[n], n))),
        internal=frozenset(internal),
    )


@functools.cache
def shipped() -> LedgerMetadata:
    """The declarations of the schemas shipped in this package (read once)."""
    files = sorted(SCHEMA_DIR.glob("*.avsc"))
    return metadata_of(json.loads(path.read_text(encoding="utf-8")) for path in files)


def problems(schemas: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What is wrong with the declarations of `{file name: schema}` (empty when nothing)."""
    found: list[str] = []
    ranks: dict[str, tuple[int, str]] = {}
    kinds: dict[str, tuple[str, str]] = {}
    for file, raw in sorted(schemas.items()):
        unknown = {k for k in raw if k.startswith("crm.")} - _RECORD_ATTRIBUTES
        found.extend(f"{file}: unknown attribute {name!r}" for name in sorted(unknown))
        if raw.get("crm.kind", "event") not in KINDS:
            found.append(f"{file}: crm.kind must be one of {', '.join(sorted(KINDS))}")
        if "crm.internal" in raw and not isinstance(raw["crm.internal"], bool):
            found.append(f"{file}: crm.internal must be true or false")
        for field in raw.get("fields", []):
            name = str(field.get("name"))
            where = f"{file}: field {name!r}"
            unknown = {k for k in field if k.startswith("crm.")} - _FIELD_ATTRIBUTES
            found.extend(f"{where}: unknown attribute {a!r}" for a in sorted(unknown))
            for flag in ("crm.personal", "crm.filled"):
                if flag in field and not isinstance(field[flag], bool):
                    found.append(f"{where}: {flag} must be true or false")
            if field.get("crm.personal") and "string" not in json.dumps(field["type"]):
                found.append(f"{where}: a personal field must be a string (it is stored encrypted)")
            if "crm.ref" in field:
                kind = field["crm.ref"]
                if not isinstance(kind, str) or not kind:
                    found.append(f"{where}: crm.ref must name an entity kind")
                elif name in kinds and kinds[name][0] != kind:
                    found.append(f"{where}: crm.ref {kind!r}, but {kinds[name][1]} says {kinds[name][0]!r}")
                else:
                    kinds.setdefault(name, (kind, file))
            if "crm.key" in field:
                rank = field["crm.key"]
                if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
                    found.append(f"{where}: crm.key must be a rank (1, 2, ...)")
                elif name in ranks and ranks[name][0] != rank:
                    found.append(f"{where}: crm.key {rank}, but {ranks[name][1]} gives it {ranks[name][0]}")
                else:
                    ranks.setdefault(name, (rank, file))
    return found
