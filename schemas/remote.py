"""A small client for the Confluent Schema Registry REST API (and Apicurio's import).

Only the calls this project needs: schemas by id, subjects and versions, compatibility
level and test, registration, and Apicurio's admin import (the one way to register a
schema under a chosen id there). The URL is the Confluent-compatible API, the same one
consumers put in `schema.registry.url`; for Apicurio that is `<root>/apis/ccompat/v7`.
"""

from __future__ import annotations

import functools
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from schemas.errors import RegistryError, RegistryUnavailableError

APICURIO_CCOMPAT_PATH = "/apis/ccompat/v7"
_JSON = "application/vnd.schemaregistry.v1+json"


#: What an answer that is no JSON, or JSON of another shape, says about the URL.
_NOT_THE_API = (
    "is not what the Confluent-compatible API answers: is the URL that API "
    f"(Apicurio's is <root>{APICURIO_CCOMPAT_PATH})?"
)
_Method = TypeVar("_Method", bound=Callable[..., Any])


def _answered(method: _Method) -> _Method:
    """Turn an answer of another shape than the API's (a field missing, of another type) into
    RegistryError: it was a traceback (KeyError, TypeError, ValueError) wherever it was read."""

    @functools.wraps(method)
    def reading(self: RemoteRegistry, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            answer = f"its answer ({method.__name__})"
            raise RegistryError(f"schema registry at {self.url}: {answer} {_NOT_THE_API}") from None

    return cast(_Method, reading)


def _check_url(url: str) -> None:
    """Refuse a registry URL that is not http(s)://HOST[:PORT]/...: urllib's own refusals
    ("unknown url type", a port that is no number) were tracebacks at the first call."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - parsed on access: a port that is no number raises here
    except ValueError as error:
        raise RegistryError(f"schema registry URL {url!r} is not usable: {error}") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise RegistryError(
            f"schema registry URL {url!r} is not an http:// or https:// address with a host "
            f"(e.g. http://127.0.0.1:8081{APICURIO_CCOMPAT_PATH})"
        )


@dataclass(frozen=True)
class RegisteredVersion:
    """One subject version as the registry holds it."""

    subject: str
    version: int
    schema_id: int
    schema: str


class RemoteRegistry:
    """The schema registry at `url` (Confluent API); every call raises RegistryError on failure."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        _check_url(url)
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = _JSON,
        base: str | None = None,
    ) -> Any:
        """JSON answer of a call; None for 404 (not found); RegistryError for anything else."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(
            (base or self.url) + path,
            data=data,
            method=method,
            headers={"Content-Type": content_type, "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                text = reply.read()
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            detail = error.read().decode(errors="replace")[:500]
            raise RegistryError(f"schema registry {method} {path}: HTTP {error.code}: {detail}") from None
        except (OSError, urllib.error.URLError) as error:
            unreachable = f"schema registry at {self.url} is not reachable: {error}"
            # Refused, reset or timed out: worth running again once it is up. A certificate
            # it refused or a name that does not resolve is not (exit 1).
            cause = error.reason if isinstance(error, urllib.error.URLError) else error
            if isinstance(cause, (ConnectionError, TimeoutError)):
                raise RegistryUnavailableError(unreachable) from None
            raise RegistryError(unreachable) from None
        except ValueError as error:  # http.client.InvalidURL: a URL the check let through
            raise RegistryError(f"schema registry URL {self.url!r} is not usable: {error}") from None
        try:
            return json.loads(text) if text else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            answer = f"the answer to {method} {path}"
            raise RegistryError(f"schema registry at {self.url}: {answer} {_NOT_THE_API}") from None

    @staticmethod
    def _quote(subject: str) -> str:
        return urllib.parse.quote(subject, safe="")

    # -- reading --------------------------------------------------------------------------
    @_answered
    def schema_by_id(self, schema_id: int) -> str | None:
        """The schema text registered under an id, or None."""
        found = self._request("GET", f"/schemas/ids/{schema_id}")
        return None if found is None else str(found["schema"])

    @_answered
    def subjects(self) -> list[str]:
        return [str(s) for s in self._request("GET", "/subjects") or []]

    @_answered
    def versions(self, subject: str) -> list[int]:
        """Version numbers of a subject (empty when the subject does not exist)."""
        return [int(v) for v in self._request("GET", f"/subjects/{self._quote(subject)}/versions") or []]

    @_answered
    def version(self, subject: str, version: int) -> RegisteredVersion | None:
        found = self._request("GET", f"/subjects/{self._quote(subject)}/versions/{version}")
        if found is None:
            return None
        return RegisteredVersion(subject, int(found["version"]), int(found["id"]), str(found["schema"]))

    @_answered
    def compatibility(self, subject: str) -> str | None:
        """The subject's own compatibility level (None when it has none of its own)."""
        found = self._request("GET", f"/config/{self._quote(subject)}")
        return None if found is None else str(found.get("compatibilityLevel") or found.get("compatibility"))

    @_answered
    def is_compatible(self, subject: str, schema: str) -> bool:
        """Whether the registry would accept `schema` as the subject's next version."""
        found = self._request(
            "POST",
            f"/compatibility/subjects/{self._quote(subject)}/versions/latest",
            {"schema": schema, "schemaType": "AVRO"},
        )
        if found is None:
            # A subject that does not exist yet accepts anything.
            if not self.versions(subject):
                return True
            raise RegistryError(f"schema registry: {subject} has versions but no latest version")
        return bool(found["is_compatible"])

    # -- writing --------------------------------------------------------------------------
    def set_compatibility(self, subject: str, level: str) -> None:
        self._request("PUT", f"/config/{self._quote(subject)}", {"compatibility": level})

    @_answered
    def register(
        self, subject: str, schema: str, *, schema_id: int | None = None, version: int | None = None
    ) -> int:
        """Register a schema; returns the id assigned (a requested id counts only in IMPORT mode)."""
        body: dict[str, Any] = {"schema": schema, "schemaType": "AVRO"}
        if schema_id is not None:
            body["id"] = schema_id
        if version is not None:
            body["version"] = version
        found = self._request("POST", f"/subjects/{self._quote(subject)}/versions", body)
        if found is None:
            raise RegistryError(f"schema registry: registering {subject} answered 404")
        return int(found["id"])

    def set_mode(self, subject: str, mode: str) -> bool:
        """Set a subject's mode (IMPORT, READWRITE); False when the registry refuses."""
        try:
            self._request("PUT", f"/mode/{self._quote(subject)}?force=true", {"mode": mode})
        except RegistryError:
            return False
        return True

    # -- Apicurio -------------------------------------------------------------------------
    @property
    def apicurio_root(self) -> str | None:
        """The server root when the URL is Apicurio's Confluent-compatible API."""
        if not self.url.endswith(APICURIO_CCOMPAT_PATH):
            return None
        root = self.url.removesuffix(APICURIO_CCOMPAT_PATH)
        try:
            info = self._request("GET", "/apis/registry/v3/system/info", base=root)
        except RegistryError:
            return None
        return root if isinstance(info, dict) and str(info.get("name", "")).startswith("Apicurio") else None

    def apicurio_import(self, archive: bytes) -> None:
        """Apicurio's admin import of an export-format zip into a possibly non-empty registry."""
        root = self.apicurio_root
        if root is None:
            raise RegistryError(f"{self.url} is not an Apicurio registry")
        self._request(
            "POST",
            "/apis/registry/v3/admin/import?requireEmptyRegistry=false",
            raw=archive,
            content_type="application/zip",
            base=root,
        )
