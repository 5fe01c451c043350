"""Keep a schema registry equal to `schemas/`: compare, push with the lock file's ids, verify.

The folder stays the source of truth; the registry serves it to standard clients. Every
(subject, version) of the folder must be registered under the id of `schemas.lock.json`
(messages already carry those ids), with the same schema, and each subject must have the
project's compatibility level, so the registry refuses an incompatible version just as
`schemas check` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from schemas.apicurio import apicurio_archive, schema_text
from schemas.errors import RegistryMismatchError
from schemas.registry import SchemaRegistry, SchemaVersion
from schemas.remote import RemoteRegistry

#: `schemas check` proves every version reads all older data: that is BACKWARD_TRANSITIVE.
COMPATIBILITY_LEVEL = "BACKWARD_TRANSITIVE"


@dataclass(frozen=True)
class Difference:
    """One way the registry differs from the folder."""

    subject: str
    version: int
    message: str
    #: True when pushing the folder can fix it (a missing version or compatibility level).
    pushable: bool

    def __str__(self) -> str:
        return f"{self.subject} v{self.version}: {self.message}"


def _same_schema(registered: str, version: SchemaVersion) -> bool:
    try:
        return bool(json.loads(registered) == json.loads(schema_text(version)))
    except json.JSONDecodeError:
        return False


def _version_differences(remote: RemoteRegistry, version: SchemaVersion) -> list[Difference]:
    """Missing, registered under another id, or a different schema under the version or id."""
    found = remote.version(version.subject, version.version)
    label = f"id {version.schema_id}"
    if found is None:
        holder = remote.schema_by_id(version.schema_id)
        if holder is not None and not _same_schema(holder, version):
            return [
                Difference(
                    version.subject,
                    version.version,
                    f"not registered, and {label} already holds a different schema",
                    False,
                )
            ]
        return [Difference(version.subject, version.version, "not registered", True)]
    problems = []
    if found.schema_id != version.schema_id:
        problems.append(
            Difference(
                version.subject,
                version.version,
                f"registered with id {found.schema_id}, the lock file says {version.schema_id}",
                False,
            )
        )
    if not _same_schema(found.schema, version):
        problems.append(
            Difference(
                version.subject,
                version.version,
                f"the registry holds a different schema than {version.path.name}",
                False,
            )
        )
    return problems


def verify_registered(remote: RemoteRegistry, versions: Iterable[SchemaVersion], purpose: str) -> None:
    """Refuse (RegistryMismatchError) unless every version is registered with its id and schema.

    Producers call this before writing anything: a consumer must be able to resolve every
    id they write.
    """
    differences = [d for v in versions for d in _version_differences(remote, v)]
    if differences:
        raise RegistryMismatchError(
            f"{purpose}: the schema registry at {remote.url} does not match schemas/ "
            "(run `crm-ledger schemas push`)",
            [str(d) for d in differences],
        )


def compare(registry: SchemaRegistry, remote: RemoteRegistry) -> list[Difference]:
    """Every difference between the folder and the registry, for `schemas check --registry`."""
    differences: list[Difference] = []
    for event_type in registry.all_types:
        versions = registry.versions(event_type)
        subject = versions[0].subject
        per_version = [(v, _version_differences(remote, v)) for v in versions]
        for _, found in per_version:
            differences.extend(found)
        known = {v.version for v in versions}
        for extra in remote.versions(subject):
            if extra not in known:
                registered = remote.version(subject, extra)
                schema_id = "?" if registered is None else registered.schema_id
                differences.append(
                    Difference(subject, extra, f"registered (id {schema_id}) but not in schemas/", False)
                )
        missing = [v for v, found in per_version if any(d.pushable for d in found)]
        differences.extend(_incompatible(remote, missing))
        level = remote.compatibility(subject)
        if level != COMPATIBILITY_LEVEL:
            differences.append(
                Difference(
                    subject,
                    versions[-1].version,
                    f"compatibility {level or 'not set'}, expected {COMPATIBILITY_LEVEL}",
                    True,
                )
            )
    return differences


def _incompatible(remote: RemoteRegistry, missing: Sequence[SchemaVersion]) -> list[Difference]:
    """Missing versions the registry itself would refuse under the subject's current rule."""
    if not missing or not remote.versions(missing[0].subject):
        return []
    # The registry's rule compares with what it holds; newer missing versions are compared
    # with the older ones by `schemas check`, so testing the oldest missing one suffices here.
    first = missing[0]
    if remote.is_compatible(first.subject, schema_text(first)):
        return []
    return [
        Difference(
            first.subject,
            first.version,
            "the registry refuses it as incompatible with its registered versions",
            False,
        )
    ]


@dataclass(frozen=True)
class PushResult:
    """What `schemas push` changed."""

    registered: int
    already_present: int
    compatibility_set: int
    method: str


def push(registry: SchemaRegistry, remote: RemoteRegistry, *, use_import: bool | None = None) -> PushResult:
    """Register every missing (subject, version) under its locked id; set the compatibility level.

    Idempotent. Refuses (RegistryMismatchError) before changing anything when the registry
    holds a conflicting schema or id, or would refuse a new version as incompatible.
    On Apicurio the missing versions are imported with their ids in one admin import;
    elsewhere each is registered in the subject's IMPORT mode and refused when the registry
    assigns another id. `use_import` forces the choice (None: detect Apicurio).
    """
    differences = compare(registry, remote)
    blocking = [d for d in differences if not d.pushable]
    if blocking:
        raise RegistryMismatchError(
            f"schemas push: the schema registry at {remote.url} conflicts with schemas/; nothing was changed",
            [str(d) for d in blocking],
        )
    missing = {(d.subject, d.version) for d in differences if d.message == "not registered"}
    to_register = [v for v in registry.all_versions() if (v.subject, v.version) in missing]
    apicurio = remote.apicurio_root is not None if use_import is None else use_import
    if to_register:
        if apicurio:
            registered = {v.subject: remote.versions(v.subject) for v in to_register}
            remote.apicurio_import(apicurio_archive(to_register, registered))
        else:
            _register_in_import_mode(remote, to_register)
        verify_registered(remote, to_register, "schemas push")
    levels_set = 0
    for event_type in registry.all_types:
        subject = registry.latest(event_type).subject
        if remote.compatibility(subject) != COMPATIBILITY_LEVEL:
            remote.set_compatibility(subject, COMPATIBILITY_LEVEL)
            levels_set += 1
    total = len(registry.all_versions())
    return PushResult(
        len(to_register), total - len(to_register), levels_set, "apicurio import" if apicurio else "register"
    )


def _register_in_import_mode(remote: RemoteRegistry, versions: Sequence[SchemaVersion]) -> None:
    """Confluent's way: IMPORT mode honours requested ids; refuse when an id comes out different."""
    for version in versions:
        imported = remote.set_mode(version.subject, "IMPORT")
        try:
            assigned = remote.register(
                version.subject, schema_text(version), schema_id=version.schema_id, version=version.version
            )
        finally:
            if imported:
                remote.set_mode(version.subject, "READWRITE")
        if assigned != version.schema_id:
            raise RegistryMismatchError(
                f"schemas push: the registry at {remote.url} assigned id {assigned} to {version.subject} "
                f"v{version.version}, but messages carry id {version.schema_id} (schemas.lock.json); "
                "use an empty registry that honours IMPORT mode, or an Apicurio registry",
                [],
            )
