"""Apicurio's export format: the one way to give Apicurio Registry schemas chosen ids.

Apicurio accepts Confluent's IMPORT mode but ignores the requested id; its own admin import
(`POST /apis/registry/v3/admin/import`) of an export-format zip keeps the content and global
ids written in the archive, and later registrations get ids after them.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

from schemas.registry import SchemaVersion


def schema_text(version: SchemaVersion) -> str:
    """The text registered for a version: the .avsc file exactly as committed."""
    return version.path.read_text()


def apicurio_archive(versions: Sequence[SchemaVersion], registered: Mapping[str, Sequence[int]]) -> bytes:
    """An Apicurio 3 export-format zip holding `versions` with content and global id = locked id.

    `registered` holds the versions each subject already has. The canonical hash is left out:
    Apicurio computes it on import from the artifact type. The `latest` branch lists every
    version, so `versions/latest` (what compatibility tests and many clients ask for) works.
    """
    now = int(time.time() * 1000)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.Manifest.json", _dump({"exportVersion": "3.0", "systemVersion": "3.0.9"}))
        for subject in sorted({v.subject for v in versions if not registered.get(v.subject)}):
            archive.writestr(
                f"groups/default/artifacts/{subject}/MetaData.Artifact.json",
                _dump(
                    {
                        "groupId": None,
                        "artifactId": subject,
                        "artifactType": "AVRO",
                        "name": None,
                        "description": None,
                        "labels": None,
                        "owner": "",
                        "createdOn": now,
                        "modifiedBy": "",
                        "modifiedOn": now,
                    }
                ),
            )
        for version in versions:
            text = schema_text(version)
            content_hash = hashlib.sha256(text.encode()).hexdigest()
            archive.writestr(f"content/{content_hash}.Content.data", text)
            archive.writestr(
                f"content/{content_hash}.Content.json",
                _dump(
                    {
                        "contentId": version.schema_id,
                        "canonicalHash": None,
                        "contentHash": content_hash,
                        "artifactType": "AVRO",
                        "contentType": "application/json",
                        "serializedReferences": None,
                    }
                ),
            )
            archive.writestr(
                f"groups/default/artifacts/{version.subject}/versions/{version.version}.ArtifactVersion.json",
                _dump(
                    {
                        "globalId": version.schema_id,
                        "groupId": None,
                        "artifactId": version.subject,
                        "version": str(version.version),
                        "versionOrder": version.version,
                        "state": "ENABLED",
                        "name": None,
                        "description": None,
                        "owner": "",
                        "labels": None,
                        "createdOn": now,
                        "modifiedBy": "",
                        "modifiedOn": now,
                        "contentId": version.schema_id,
                    }
                ),
            )
        by_subject: dict[str, set[int]] = {}
        for version in versions:
            by_subject.setdefault(version.subject, set(registered.get(version.subject, ()))).add(
                version.version
            )
        for subject, numbers in sorted(by_subject.items()):
            archive.writestr(
                f"groups/default/artifacts/{subject}/branches/latest.Branch.json",
                _dump(
                    {
                        "groupId": None,
                        "artifactId": subject,
                        "branchId": "latest",
                        "description": None,
                        "systemDefined": True,
                        "owner": "",
                        "createdOn": now,
                        "modifiedBy": "",
                        "modifiedOn": now,
                        "versions": [str(n) for n in sorted(numbers)],
                    }
                ),
            )
    return buffer.getvalue()


def _dump(value: dict[str, Any]) -> str:
    return json.dumps(value)
