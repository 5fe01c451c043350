"""Metric specs: versioned TOML files that define KPIs and how they become a reward score.

A spec is validated completely before any work starts; each error names the file, the
line and the key. Its content hash (over the parsed content, so comments and spacing do
not matter) identifies the projection version built from it; the hash of the `[kpis]`
section alone tells whether a new spec can reuse the KPI tables of an older version.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeGuard

from crm_ledger.kpis import BAYESIAN_KPIS, COUNT_KPIS, RATE_KPIS
from projections.errors import SpecError

DEFAULT_SPEC = Path(__file__).resolve().parent / "metrics" / "default.toml"

KPI_PARAMETERS: dict[str, tuple[int, int]] = {
    "csat_satisfied_min": (1, 5),
    "nps_promoter_min": (0, 10),
    "nps_detractor_max": (0, 10),
}
KPI_DEFAULTS = MappingProxyType({"csat_satisfied_min": 4, "nps_promoter_min": 9, "nps_detractor_max": 6})
COMPONENT_KINDS = frozenset({"count", "rate", "bayesian"})


@dataclass(frozen=True)
class Component:
    """One weighted part of the reward score."""

    name: str
    kind: str
    kpi: str
    weight: float
    cap: float | None = None
    min_sample: int = 0
    prior_strength: float = 20.0
    invert: bool = False


@dataclass(frozen=True)
class MetricSpec:
    """A validated metric spec."""

    name: str
    description: str
    kpis: MappingProxyType[str, int]
    components: tuple[Component, ...]
    source: str

    def canonical(self) -> dict[str, Any]:
        return {
            "kpis": dict(sorted(self.kpis.items())),
            "components": [c.__dict__ for c in sorted(self.components, key=lambda c: c.name)],
        }

    @property
    def content_hash(self) -> str:
        """Identifies the spec's meaning (KPI definitions and scoring)."""
        payload = json.dumps(self.canonical(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()

    @property
    def kpi_hash(self) -> str:
        """Identifies only the KPI definitions: equal hashes share KPI tables."""
        payload = json.dumps(self.canonical()["kpis"], sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()

    def to_toml_json(self) -> str:
        return json.dumps({"name": self.name, **self.canonical()}, sort_keys=True)


def _line_of(text: str, section: str | None, key: str) -> int | None:
    """Line number of `key` inside `[section]` (best effort, for error messages)."""
    current: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped.strip("[]").strip()
            if section is not None and current == section and key == "":
                return number
            continue
        if current == section and stripped.split("=", 1)[0].strip() == key:
            return number
    return _section_line(text, section) if section is not None else None


#: More components than anyone weighs by hand; the score's SQL nests one level per component.
MAX_COMPONENTS = 50
#: The largest `min_sample` (a count of answers or cases in one period).
MAX_SAMPLE = 1_000_000_000


def _section_line(text: str, section: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() == f"[{section}]":
            return number
    return None


def load_spec(path: Path) -> MetricSpec:
    """Read and validate a spec file; raises SpecError naming file, line and key."""
    name = str(path)
    try:
        # A byte-order mark (editors on some systems write one) is not part of the TOML.
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise SpecError(name, "(file)", f"cannot be read: {error.strerror}") from error
    except UnicodeDecodeError as error:
        reason = f"not UTF-8 text (byte {error.start + 1}); save it as UTF-8"
        raise SpecError(name, "(file)", reason) from None
    return parse_spec(text, name, given=True)


#: Control characters (C0 and C1): a name holding one could drive the terminal it is shown on.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def has_controls(text: str) -> bool:
    """Whether a version's name holds a control character (other letters and signs are fine)."""
    return _CONTROLS.search(text) is not None


def parse_spec(text: str, name: str = "<spec>", *, given: bool = False) -> MetricSpec:
    """Validate spec text (see `load_spec`).

    A `given` spec (a file a user names) is held to the rules for new versions too: its name
    holds no control characters and its description is text. A spec stored with a version
    is read as it was accepted then (an older version's description may be a number).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        found = re.search(r"line (\d+)", str(error))
        line = int(found.group(1)) if found else None
        raise SpecError(name, "(syntax)", f"invalid TOML: {error}", line) from error

    def fail(section: str | None, key: str, reason: str) -> SpecError:
        full = f"{section}.{key}" if section else key
        return SpecError(name, full, reason, _line_of(text, section, key))

    known_top = {"name", "description", "kpis", "components"}
    for key in data:
        if key not in known_top:
            raise fail(None, key, f"unknown key (expected one of {', '.join(sorted(known_top))})")
    spec_name = data.get("name", "unnamed")
    if not isinstance(spec_name, str) or not spec_name.strip():
        raise fail(None, "name", "must be non-empty text")
    description = data.get("description", "")
    if given and has_controls(spec_name):
        raise fail(None, "name", f"{spec_name!r} holds control characters: give a printable name")
    if given and not isinstance(description, str):
        raise fail(None, "description", f"must be text, got {description!r}")

    raw_kpis = data.get("kpis", {})
    if not isinstance(raw_kpis, dict):
        raise fail(None, "kpis", f"must be a table ([kpis]), got {raw_kpis!r}")
    kpis = dict(KPI_DEFAULTS)
    for key, value in raw_kpis.items():
        if key not in KPI_PARAMETERS:
            raise fail("kpis", key, f"unknown KPI parameter (known: {', '.join(sorted(KPI_PARAMETERS))})")
        low, high = KPI_PARAMETERS[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise fail("kpis", key, f"must be a whole number from {low} to {high}, got {value!r}")
        kpis[key] = value
    if kpis["nps_detractor_max"] >= kpis["nps_promoter_min"]:
        raise fail("kpis", "nps_detractor_max", "must be below nps_promoter_min")

    raw_components = data.get("components")
    if not isinstance(raw_components, dict) or not raw_components:
        raise fail(None, "components", "at least one [components.NAME] table is required")
    if len(raw_components) > MAX_COMPONENTS:
        raise fail(None, "components", f"at most {MAX_COMPONENTS} components, got {len(raw_components)}")
    components = []
    for component_name, body in raw_components.items():
        section = f"components.{component_name}"
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", component_name):
            raise fail(None, section, "component names must be lower-case identifiers (a-z, 0-9, _)")
        if not isinstance(body, dict):
            raise fail(None, section, "must be a table")
        components.append(_component(component_name, body, section, fail))
    total = sum(c.weight for c in components)
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        raise fail(
            f"components.{components[-1].name}",
            "weight",
            f"weights must sum to 1, they sum to {total:.6g}",
        )
    return MetricSpec(
        name=spec_name.strip(),
        description=str(description),
        kpis=MappingProxyType(kpis),
        components=tuple(components),
        source=name,
    )


def _is_number(value: object) -> TypeGuard[float]:
    """A finite number (TOML reads `nan` and `inf` as floats; in the scores' SQL they are no number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _component(component_name: str, body: dict[str, Any], section: str, fail: Any) -> Component:
    allowed = {"kind", "kpi", "weight", "cap", "min_sample", "prior_strength", "invert"}
    for key in body:
        if key not in allowed:
            raise fail(section, key, f"unknown key (expected one of {', '.join(sorted(allowed))})")
    kind = body.get("kind", "count")
    if not isinstance(kind, str) or kind not in COMPONENT_KINDS:
        raise fail(section, "kind", f"must be one of {', '.join(sorted(COMPONENT_KINDS))}, got {kind!r}")
    kpi = body.get("kpi", component_name)
    valid = {"count": COUNT_KPIS, "rate": RATE_KPIS, "bayesian": BAYESIAN_KPIS}[kind]
    if not isinstance(kpi, str) or kpi not in valid:
        raise fail(
            section,
            "kpi",
            f"unknown KPI {kpi!r} for kind {kind!r} (known: {', '.join(sorted(valid))})",
        )
    weight = body.get("weight")
    if not _is_number(weight):
        raise fail(section, "weight", f"must be a number, got {weight!r}")
    if weight < 0:
        raise fail(section, "weight", f"must not be negative, got {weight}")
    cap = body.get("cap")
    if kind == "count":
        if not _is_number(cap) or cap <= 0:
            raise fail(section, "cap", f"a count component needs a positive cap, got {cap!r}")
    elif cap is not None:
        raise fail(section, "cap", f"only count components take a cap (this one is {kind!r})")
    min_sample = body.get("min_sample", 0)
    if not isinstance(min_sample, int) or isinstance(min_sample, bool) or not 0 <= min_sample <= MAX_SAMPLE:
        reason = f"must be a whole number from 0 to {MAX_SAMPLE:,}, got {min_sample!r}"
        raise fail(section, "min_sample", reason)
    prior = body.get("prior_strength", 20)
    if not _is_number(prior) or prior < 0:
        raise fail(section, "prior_strength", f"must be a number >= 0, got {prior!r}")
    invert = body.get("invert", kpi == "reopen_rate")
    if not isinstance(invert, bool):
        raise fail(section, "invert", f"must be true or false, got {invert!r}")
    return Component(
        name=component_name,
        kind=kind,
        kpi=kpi,
        weight=float(weight),
        cap=float(cap) if cap is not None else None,
        min_sample=min_sample,
        prior_strength=float(prior),
        invert=invert,
    )
