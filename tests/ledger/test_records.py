"""Raw records into facts: coercion from CSV text, domain rules, named fields."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.errors import ValidationError
from ledger.records import RecordParser, epoch_ms, format_timestamp, parse_timestamp
from tests.factory import rec


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"type": None}, "type"),
        ({"type": "Nope"}, "type"),
        ({"event_id": "x"}, "event_id"),
        ({"event_id": ""}, "event_id"),
        ({"occurred_at": "soon"}, "occurred_at"),
        ({"occurred_at": None}, "occurred_at"),
        ({"csat": 6}, "csat"),
        ({"csat": "abc"}, "csat"),
        ({"nps": 11}, "nps"),
        ({"ces": 0}, "ces"),
        ({"customer_id": ""}, "customer_id"),
        ({"customer_id": "  "}, "customer_id"),
    ],
)
def test_bad_fields_are_named(parser: RecordParser, changes: dict[str, object], field: str) -> None:
    raw = rec("SurveyAnswered", customer_id="c1", case_id="k1", csat=4)
    raw.update(changes)
    with pytest.raises(ValidationError) as caught:
        parser.parse(raw)
    assert caught.value.field == field


def test_csv_text_is_coerced(parser: RecordParser) -> None:
    fact = parser.parse(
        rec(
            "CaseResolved",
            case_id="k",
            employee_id="e",
            resolution_code="fixed",
            first_contact="yes",
            article_ids="a1; a2|a3",
        )
        | {"customer_id": ""}
    )
    assert fact.data["first_contact"] is True
    assert fact.data["article_ids"] == ["a1", "a2", "a3"]
    assert fact.data["customer_id"] is None


@pytest.mark.parametrize(
    ("cell", "number"),
    [("4", 4), (" 4 ", 4), ("+4", 4), ("4.0", 4), ("4.00", 4), ("4.", None), ("1.000", None), ("4\u00a0", 4),
     ("4.5", None), ("4e0", None), ("1_0", None), ("\u0664", None), ("\uff14", None), ("0x4", None),
     ("9" * 5000, None)],
)
def test_csv_integer_cells(parser: RecordParser, cell: str, number: int | None) -> None:
    """A spreadsheet's "4.0" is the integer 4, as JSON's 4.0 is; Python's own spellings
    ("1_0", other scripts' digits), which int() takes, are no export's integers, nor is "1.000"
    (a thousand where "." separates thousands)."""
    raw = rec("SurveyAnswered", customer_id="c1", case_id="k1", csat=cell)
    if number is None:
        with pytest.raises(ValidationError) as caught:
            parser.parse(raw)
        assert (caught.value.field, caught.value.reason[:20]) == ("csat", "expected an integer,")
    else:
        assert parser.parse(raw).data["csat"] == number


@pytest.mark.parametrize("cell", ["1_000", "\u0663", "\uff13.5"])
def test_csv_number_cells_in_python_s_own_spellings_are_refused(parser: RecordParser, cell: str) -> None:
    raw = rec(
        "ContractStarted", contract_id="SC-1", customer_id="c1", plan="basic", annual_value=cell, currency="EUR",
        starts_on="2026-01-01", ends_on="2027-01-01",
    )
    with pytest.raises(ValidationError) as caught:
        parser.parse(raw)
    assert caught.value.field == "annual_value" and caught.value.reason == f"expected a number, got {cell!r}"
    assert parser.parse({**raw, "annual_value": " 1000.50\u00a0"}).data["annual_value"] == 1000.5


def test_channel_and_kind_rules(parser: RecordParser) -> None:
    with pytest.raises(ValidationError, match="channel"):
        parser.parse(rec("CaseOpened", case_id="k", customer_id="c", kind="complaint", channel="pigeon"))
    with pytest.raises(ValidationError, match="kind"):
        parser.parse(rec("CaseOpened", case_id="k", customer_id="c", kind="rant", channel="web"))


def test_internal_event_types_are_not_importable(parser: RecordParser) -> None:
    with pytest.raises(ValidationError, match="unknown event type"):
        parser.parse(
            rec(
                "RewardStatementIssued",
                period="2026-01",
                employee_id="e",
                score=1.0,
                components="{}",
                version="v",
                spec_name="s",
            )
        )


def test_timestamps() -> None:
    assert parse_timestamp("2026-01-02T03:04:05Z") == parse_timestamp("2026-01-02T03:04:05+00:00")
    assert parse_timestamp("2026-01-02T03:04:05") == parse_timestamp("2026-01-02T03:04:05Z")
    assert parse_timestamp("2026-01-02T04:04:05+01:00") == parse_timestamp("2026-01-02T03:04:05Z")
    assert format_timestamp(parse_timestamp("2026-01-02T03:04:05.123Z")) == "2026-01-02T03:04:05.123Z"
    assert parse_timestamp("1700000000000") == 1_700_000_000_000


def _outcome(call: Callable[[], dict[str, Any]]) -> object:
    try:
        return ("ok", call())
    except ValidationError as error:
        return ("refused", error.field, error.reason)


_JSON_VALUES = st.one_of(
    st.none(),
    st.text(),
    st.text(alphabet=" \t\n\u00a0\u2003\ud800é-_.;|0123456789abcdef", max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_json_fields_checked_in_line_match_the_general_rules(parser: RecordParser, data: st.DataObject) -> None:
    """Any JSON value in any field of any type: the in-line checks give the same fields, or the
    same first refusal, as each field's general JSON rule."""
    event_type = data.draw(st.sampled_from(parser.event_types))
    names = [rule.name for rule, _, _ in parser._checks[event_type]]
    raw = {name: data.draw(_JSON_VALUES, label=name) for name in names if data.draw(st.booleans())}
    assert _outcome(lambda: parser._strict_fields(event_type, raw)) == _outcome(
        lambda: parser._converted_fields(event_type, raw, strict=True)
    )


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2199, 12, 31), timezones=st.just(UTC)))
def test_epoch_ms_is_the_floored_millisecond(moment: datetime) -> None:
    micros = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert epoch_ms(moment) == micros // 1000  # floored, also before 1970
    assert epoch_ms(moment.replace(tzinfo=None)) == epoch_ms(moment)  # naive is UTC


def test_a_timestamp_before_1970_with_microseconds_is_floored() -> None:
    assert parse_timestamp("1969-12-31T23:59:59.9995Z") == -1
    assert parse_timestamp("1955-06-01T12:00:00.123456Z") == -460_295_999_877
    assert parse_timestamp("2024-01-01T00:00:00.123999Z") == 1_704_067_200_123
