"""How a version is named on the command line and the pages: id, unique id prefix, or name."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from projections.errors import AmbiguousVersionError, UnknownVersionError
from projections.store import VersionInfo, find_version


def _version(version: str, name: str) -> VersionInfo:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return VersionInfo(version, name, "h", "k", "", None, "ledger", "ready", now, now, 0, None, None)


VERSIONS = [_version("v_f26369b82f3a", "default"), _version("v_f25e8963c01a", "alt"), _version("v_0a1b2c3d4e5f", "alt")]


@pytest.mark.parametrize(
    ("reference", "found"),
    [("v_f26369b82f3a", "v_f26369b82f3a"), ("f26369b82f3a", "v_f26369b82f3a"), ("f26", "v_f26369b82f3a"),
     ("v_0a", "v_0a1b2c3d4e5f"), ("default", "v_f26369b82f3a")],
)
def test_a_version_is_found_by_id_unique_prefix_or_name(reference: str, found: str) -> None:
    assert find_version(VERSIONS, reference).version == found


@pytest.mark.parametrize(
    ("reference", "words"),
    [("alt", "version name 'alt' is ambiguous"), ("f2", "version id prefix 'f2' is ambiguous"),
     ("v_f2", "version id prefix 'v_f2' is ambiguous"), ("", "no version named"), ("v_", "no version named")],
)
def test_an_ambiguous_reference_says_so(reference: str, words: str) -> None:
    with pytest.raises(AmbiguousVersionError, match=words):
        find_version(VERSIONS, reference)


def test_an_unknown_reference_lists_the_known_versions() -> None:
    with pytest.raises(UnknownVersionError, match="unknown version 'nope'; known versions: v_f26369b82f3a"):
        find_version(VERSIONS, "nope")
