"""Raw records (a JSONL object, a CSV row, a Python dict) into checked ledger facts.

The Avro schemas define the fields; this module adds the rules a schema cannot say
(allowed channels, survey scales, UUID event ids, UTC timestamps) and coerces text
from CSV into the schema's types. Everything that fails is a `ValidationError` naming
the field.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.errors import ValidationError
from schemas.metadata import shipped
from schemas.registry import SchemaRegistry

CHANNELS = frozenset({"phone", "email", "chat", "web", "field", "social", "post", "referral", "fax", "other"})
DIRECTIONS = frozenset({"inbound", "outbound"})
CASE_KINDS = frozenset({"complaint", "incident", "request"})
RECIPIENT_KINDS = frozenset({"colleague", "customer", "partner"})
CONTRACT_END_REASONS = frozenset({"churned", "replaced", "merged"})
#: Severities a contract's SLA names; a case without a known one is held to `medium`.
SLA_SEVERITIES = ("critical", "high", "medium", "low")
DEFAULT_SLA_SEVERITY = "medium"
SYSTEM_FIELDS = frozenset({"recorded_at"})
#: Event types that only the ledger itself writes (reward periods), never an import.
INTERNAL_TYPES = shipped().internal  # declared `"crm.internal": true` in the schemas


@dataclass(frozen=True, slots=True)
class Fact:
    """One checked event, ready for the write model: type, id, time and its fields."""

    event_type: str
    event_id: str
    occurred_at: int
    data: Mapping[str, Any]

    def get(self, name: str) -> Any:
        return self.data.get(name)


#: Timestamps outside 1900-01-01 .. 2200-01-01 are typos, not history.
EARLIEST_MS = -2_208_988_800_000
LATEST_MS = 7_258_118_400_000


def parse_timestamp(value: Any, field: str = "occurred_at") -> int:
    """UTC epoch milliseconds from ISO-8601 text (naive means UTC) or epoch milliseconds."""
    millis = _timestamp(value, field)
    if not EARLIEST_MS <= millis < LATEST_MS:
        raise ValidationError(field, f"out of range (1900-01-01 to 2199-12-31): {value!r}")
    return millis


def _timestamp(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise ValidationError(field, f"expected a timestamp, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if text.isascii() and text.isdigit():
            if len(text) > 15:
                raise ValidationError(field, f"out of range: {_short(value)}")
            return int(text)
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValidationError(field, f"not an ISO-8601 timestamp: {value!r}") from None
    else:
        raise ValidationError(field, f"expected a timestamp, got {value!r}")
    return epoch_ms(moment)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, floored; a naive datetime is taken as UTC.

    In integers: float seconds times 1000 can land a millisecond off, truncates toward
    zero before 1970, and `timestamp()` takes a naive datetime as local time.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MILLISECOND


def format_timestamp(epoch_ms: int) -> str:
    """ISO-8601 UTC text with milliseconds, the form every output uses."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"
    if moment.year < 1000:
        # strftime's %Y writes year 999 as '999', which no parser takes as a timestamp.
        text = f"{moment.year:04d}{text[text.index('-'):]}"
    return text


def is_unicode_text(value: str) -> bool:
    """Whether a string can be stored and written as UTF-8: JSON's escapes can make unpaired
    surrogates ("\\ud800"), which are not text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: What a text field holding U+0000 is told. PostgreSQL's text cannot hold it, so one such
#: record failed a whole import into a PostgreSQL store while SQLite kept it: refused on every
#: store, as the record's own reject.
NUL_IN_TEXT = "contains a NUL character (U+0000), which no text field may hold"


def _text(value: Any, field: str) -> str:
    if isinstance(value, str):
        if not is_unicode_text(value):
            raise ValidationError(field, "is not valid Unicode text")
        if "\x00" in value:
            raise ValidationError(field, NUL_IN_TEXT)
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValidationError(field, f"expected text, got {type(value).__name__}")


#: An integer as text: ASCII digits, with a zero fraction as a spreadsheet or pandas writes an
#: integer column that has empty cells ("8.0", "8.00"), as JSON's 8.0 is taken. Python's int()
#: also takes "1_0" and other scripts' digits ("٨"), which no export means as a number; "1.000"
#: is a thousand where "." separates thousands, and is refused.
_INTEGER_TEXT = re.compile(r"([+-]?[0-9]+)(?:\.0{1,2})?", re.ASCII)


def _integer(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise ValidationError(field, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        match = _INTEGER_TEXT.fullmatch(value.strip())
        if match is not None:
            try:
                return int(match.group(1))
            except ValueError:  # more digits than int() converts
                pass
    raise ValidationError(field, f"expected an integer, got {_short(value)}")


def _double(value: Any, field: str) -> float:
    if isinstance(value, bool):
        raise ValidationError(field, f"expected a number, got {value!r}")
    if isinstance(value, str) and (not value.strip().isascii() or "_" in value):
        # float() takes "1_000" and other scripts' digits ("٣"), which no export means as a number.
        raise ValidationError(field, f"expected a number, got {_short(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValidationError(field, f"expected a number, got {_short(value)}") from None
    if not math.isfinite(number):
        raise ValidationError(field, f"must be a finite number, got {_short(value)}")
    return number


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f", ""})


def _boolean(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValidationError(field, f"expected true or false, got {value!r}")


def _string_list(value: Any, field: str) -> list[str]:
    if isinstance(value, list):
        return [_text(item, field) for item in value]
    if isinstance(value, str):
        # CSV cells carry lists as ';' or '|' separated text.
        parts = value.replace("|", ";").split(";")
        return [_text(part.strip(), field) for part in parts if part.strip()]
    raise ValidationError(field, f"expected a list of ids, got {type(value).__name__}")


def _timestamp_field(value: Any, field: str) -> int:
    return parse_timestamp(value, field)


def _bounded(bits: int) -> Callable[[Any, str], int]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def coerce(value: Any, field: str) -> int:
        number = _integer(value, field)
        if not low <= number <= high:
            raise ValidationError(field, f"out of range for a {bits}-bit integer: {number}")
        return number

    return coerce


def _strictly(
    kind: str, accepts: tuple[type, ...], coerce: Callable[[Any, str], Any]
) -> Callable[[Any, str], Any]:
    """For JSON input: a value of the wrong JSON type is refused, never converted."""

    def check(value: Any, field: str) -> Any:
        if isinstance(value, bool) and bool not in accepts:
            raise ValidationError(field, f"expected {kind}, got {value!r}")
        if not isinstance(value, accepts):
            raise ValidationError(field, f"expected {kind}, got JSON {_json_type(value)} {_short(value)}")
        return coerce(value, field)

    return check


def _json_type(value: Any) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "number"


_COERCE: dict[str, Callable[[Any, str], Any]] = {
    "string": _text,
    "int": _bounded(32),
    "long": _bounded(64),
    "double": _double,
    "boolean": _boolean,
}
_STRICT: dict[str, Callable[[Any, str], Any]] = {
    "string": _strictly("text", (str,), _text),
    "int": _strictly("an integer", (int, float), _COERCE["int"]),
    "long": _strictly("an integer", (int, float), _COERCE["long"]),
    "double": _strictly("a number", (int, float), _double),
    "boolean": _strictly("true or false", (bool,), _boolean),
}
_TEXT = _STRICT["string"]


@dataclass(frozen=True)
class _FieldRule:
    name: str
    coerce: Callable[[Any, str], Any]
    strict: Callable[[Any, str], Any]
    required: bool
    default: Any


def _rules_for(event_type: str, fields: list[dict[str, Any]]) -> list[_FieldRule]:
    rules = []
    for field in fields:
        name = field["name"]
        if name in {"event_id", "occurred_at", "recorded_at"}:
            continue
        avro_type = field["type"]
        nullable = isinstance(avro_type, list) and "null" in avro_type
        if isinstance(avro_type, list):
            avro_type = next(t for t in avro_type if t != "null")
        if isinstance(avro_type, dict) and avro_type.get("type") == "array":
            coerce: Callable[[Any, str], Any] = _string_list
            strict: Callable[[Any, str], Any] = _strictly("a list of ids", (list,), _string_list)
        elif isinstance(avro_type, dict) and avro_type.get("logicalType") == "timestamp-millis":
            # Like occurred_at: ISO-8601 text (naive means UTC) or epoch milliseconds.
            coerce = _timestamp_field
            strict = _strictly(
                "a timestamp (ISO-8601 text or epoch milliseconds)", (str, int), _timestamp_field
            )
        else:
            primitive = avro_type["type"] if isinstance(avro_type, dict) else avro_type
            coerce, strict = _COERCE[primitive], _STRICT[primitive]
        has_default = "default" in field
        optional = nullable or has_default or (event_type, name) in ENRICHED_FIELDS
        rules.append(_FieldRule(name, coerce, strict, not optional, field.get("default")))
    return rules


def _one_of(allowed: frozenset[str]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value not in allowed:
            return f"must be one of {', '.join(sorted(allowed))}, got {value!r}"
        return None

    return check


def _in_range(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not low <= value <= high:
            return f"must be between {low} and {high}, got {value}"
        return None

    return check


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must not be negative, got {value}"


#: The largest money amount a record may carry: the read models add amounts up as
#: DECIMAL(38, 6), which holds less than 10**32 (a quadrillion leaves room for any total).
MAX_AMOUNT = 10**15


def _amount(value: Any) -> str | None:
    if value < 0:
        return f"must not be negative, got {value}"
    return None if value <= MAX_AMOUNT else f"must be at most {MAX_AMOUNT:,}, got {value}"


def _non_blank(value: Any) -> str | None:
    return None if value.strip() else "must not be blank"


def _currency(value: Any) -> str | None:
    text = str(value)
    if len(text) == 3 and text.isascii() and text.isalpha() and text.isupper():
        return None
    return f"must be a three-letter ISO 4217 code such as EUR, got {value!r}"


#: Rules a schema cannot express, per (event type or "*", field).
_DOMAIN_RULES: dict[tuple[str, str], Callable[[Any], str | None]] = {
    ("*", "channel"): _one_of(CHANNELS),
    ("InteractionRecorded", "direction"): _one_of(DIRECTIONS),
    ("CaseOpened", "kind"): _one_of(CASE_KINDS),
    ("KnowledgeShared", "recipient_kind"): _one_of(RECIPIENT_KINDS),
    ("SurveyAnswered", "csat"): _in_range(1, 5),
    ("SurveyAnswered", "nps"): _in_range(0, 10),
    ("SurveyAnswered", "ces"): _in_range(1, 7),
    ("InteractionRecorded", "duration_s"): _non_negative,
    ("CaseEscalated", "level"): _in_range(1, 99),
    ("ContractEnded", "reason"): _one_of(CONTRACT_END_REASONS),
    ("ContractStarted", "annual_value"): _amount,
    ("ContractRenewed", "annual_value"): _amount,
    ("ContractStarted", "currency"): _currency,
    **{("ContractStarted", f"sla_hours_{s}"): _in_range(1, 8760) for s in SLA_SEVERITIES},
}
_ID_FIELDS = (
    "customer_id",
    "employee_id",
    "case_id",
    "article_id",
    "team_id",
    "contract_id",
    "site_id",
    "visit_id",
    "serial",
    "plan",
    "product",
    "goal_id",
)
#: Fields the ledger fills in from its own state, so a client may leave them out
#: (declared `"crm.filled": true` in the schemas).
ENRICHED_FIELDS = shipped().filled


#: How far in the future `occurred_at` may lie (clock skew between systems), by default.
DEFAULT_FUTURE_TOLERANCE_MS = 24 * 3600 * 1000


class RecordParser:
    """Turns raw mappings into `Fact`s, checked against the newest schema of their type.

    `occurred_at` may lie at most `future_tolerance_ms` after `now_ms` (default: the clock
    when the parser was made): a fact cannot have happened tomorrow.
    """

    def __init__(
        self,
        registry: SchemaRegistry,
        *,
        allow_internal: bool = False,
        now_ms: int | None = None,
        future_tolerance_ms: int = DEFAULT_FUTURE_TOLERANCE_MS,
    ) -> None:
        #: The schemas the facts are checked against (and can be encoded with).
        self.registry = registry
        now = int(time.time() * 1000) if now_ms is None else now_ms
        self._latest_ms = now + future_tolerance_ms
        self._rules = {
            t: _rules_for(t, list(registry.latest(t).raw["fields"]))
            for t in registry.event_types
            if allow_internal or t not in INTERNAL_TYPES
        }
        #: Per event type, each field's rule with its domain check and whether it is an id,
        #: looked up once here instead of twice per field of every record.
        self._checks = {
            t: [
                (
                    rule,
                    _DOMAIN_RULES.get((t, rule.name)) or _DOMAIN_RULES.get(("*", rule.name)),
                    rule.name in _ID_FIELDS,
                )
                for rule in rules
            ]
            for t, rules in self._rules.items()
        }
        #: The same for JSON input, flat, with whether the field is text: `_strict_fields`
        #: checks a text value in line, without the calls of the general rule (a record's
        #: fields are mostly text, and those calls were a third of parsing a JSON line).
        self._strict = {
            t: [
                (rule.name, rule.required, rule.default, rule.strict, check, is_id, rule.strict is _TEXT)
                for rule, check, is_id in checks
            ]
            for t, checks in self._checks.items()
        }

    @property
    def latest_ms(self) -> int:
        """The latest `occurred_at` accepted: now plus the future tolerance."""
        return self._latest_ms

    @property
    def event_types(self) -> list[str]:
        return sorted(self._rules)

    def parse(self, raw: Mapping[str, Any], *, strict: bool = False) -> Fact:
        """A checked `Fact`, or a `ValidationError` naming the first bad field.

        With `strict` (JSON input) every value must already have its field's JSON type; CSV
        cells are text and are converted.
        """
        event_type = raw.get("type") or raw.get("event_type")
        if not event_type:
            raise ValidationError("type", "is missing")
        alias = raw.get("event_type")
        if alias and alias != event_type:
            # Both spellings, naming two types: neither is known to be the one meant.
            raise ValidationError(
                "type", f"given twice, as {_short(event_type)} and event_type {_short(alias)}"
            )
        if not isinstance(event_type, str):
            raise ValidationError("type", f"expected text, got {_short(event_type)}")
        rules = self._checks.get(event_type)
        if rules is None:
            raise ValidationError("type", f"unknown event type {event_type!r}")
        event_id = self._event_id(raw.get("event_id"))
        if _blank(raw.get("occurred_at")):
            raise ValidationError("occurred_at", "is missing")
        occurred_at = parse_timestamp(raw["occurred_at"])
        if occurred_at > self._latest_ms:
            raise ValidationError(
                "occurred_at",
                f"is in the future: {format_timestamp(occurred_at)} (tolerance until "
                f"{format_timestamp(self._latest_ms)})",
            )
        if strict:
            return Fact(str(event_type), event_id, occurred_at, self._strict_fields(event_type, raw))
        data = self._converted_fields(event_type, raw, strict=False)
        return Fact(str(event_type), event_id, occurred_at, data)

    def _converted_fields(self, event_type: str, raw: Mapping[str, Any], *, strict: bool) -> dict[str, Any]:
        """The fields of a record, each through its field's general rule: CSV cells converted
        (`strict=False`), or JSON values refused unless of the field's JSON type (`strict=True`,
        the reference `_strict_fields` must equal: the tests compare the two)."""
        data: dict[str, Any] = {}
        for rule, check, is_id in self._checks[event_type]:
            value = raw.get(rule.name)
            if _blank(value):
                if rule.required:
                    raise ValidationError(rule.name, "is required")
                data[rule.name] = rule.default
                continue
            value = (rule.strict if strict else rule.coerce)(value, rule.name)
            if isinstance(value, str):
                value = value.strip()
            problem = check(value) if check else None
            if problem is None and is_id and isinstance(value, str):
                problem = _non_blank(value)
            if problem:
                raise ValidationError(rule.name, problem)
            data[rule.name] = value
        return data

    def _strict_fields(self, event_type: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The fields of a JSON record: the general loop of `parse`, text values checked in line.

        The same checks in the same order (blank, type, valid Unicode, stripped, domain rule),
        so the same values and the same first error.
        """
        data: dict[str, Any] = {}
        for name, required, default, strict, check, is_id, text in self._strict[event_type]:
            value = raw.get(name)
            if text and value.__class__ is str:
                stripped = value.strip()
                if not stripped:  # blank
                    if required:
                        raise ValidationError(name, "is required")
                    data[name] = default
                    continue
                if not value.isascii() or "\x00" in value:
                    _text(value, name)  # refuses text that is not valid Unicode, or holds NUL
                value = stripped
            else:
                if _blank(value):
                    if required:
                        raise ValidationError(name, "is required")
                    data[name] = default
                    continue
                value = strict(value, name)
                if isinstance(value, str):
                    value = value.strip()
            problem = check(value) if check else None
            if problem is None and is_id and isinstance(value, str):
                problem = _non_blank(value)
            if problem:
                raise ValidationError(name, problem)
            data[name] = value
        return data

    @staticmethod
    def _event_id(value: Any) -> str:
        # Already in the canonical form (lower-case, hyphenated) that `str(UUID(...))` gives,
        # as nearly every id is: kept as it is, without building a UUID object.
        if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
            return value
        if _blank(value):
            raise ValidationError("event_id", "is missing")
        try:
            return str(uuid.UUID(str(value).strip()))
        except ValueError:
            raise ValidationError("event_id", f"not a UUID: {value!r}") from None


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())
